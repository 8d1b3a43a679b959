//! The bundled notify step against loopback HTTP servers: the request it
//! sends (body and headers), a redirect to another host that is not
//! followed, and a host outside the allowlist refused by the sandbox.

mod common;

use common::http::server;
use common::{Spec, assert_ok, component, run, text};
use sentinel_engine::exec::Outcome;

fn settings(url: &str, format: &str) -> Vec<(String, String)> {
    vec![
        ("SENTINEL_NOTIFY_URL".into(), url.into()),
        ("SENTINEL_NOTIFY_FORMAT".into(), format.into()),
        ("SENTINEL_NOTIFY_MESSAGE".into(), "nightly".into()),
        (
            "SENTINEL_NOTIFY_LINK".into(),
            "http://results.example/run/01J".into(),
        ),
        ("SENTINEL_PIPELINE".into(), "site".into()),
        (
            "SENTINEL_RUN_ID".into(),
            "01JDX3K6Q2T8W9V5M4N3P2R1S0".into(),
        ),
        ("SENTINEL_RUN_STATUS".into(), "failed".into()),
        ("SENTINEL_FAILED_STAGES".into(), "test,lint".into()),
    ]
}

const OK: &str = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";

#[tokio::test]
async fn posts_the_run_to_the_webhook() {
    let step = component("notify");
    let (addr, seen) = server("127.0.0.1", vec![OK.into()]).await;
    let url = format!("http://{addr}/hooks/ci");
    let r = run(
        &step,
        Spec {
            env: settings(&url, "generic"),
            http: vec![addr.clone()],
            ..Default::default()
        },
    )
    .await;
    assert_ok(&r);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert!(
        seen[0].head.starts_with("POST /hooks/ci HTTP/1.1\r\n"),
        "{}",
        seen[0].head
    );
    let head = seen[0].head.to_ascii_lowercase();
    assert!(head.contains("content-type: application/json"), "{head}");
    assert!(head.contains("user-agent: sentinel-notify/1.0"), "{head}");
    let body: serde_json::Value = serde_json::from_str(&seen[0].body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"pipeline": "site", "run_id": "01JDX3K6Q2T8W9V5M4N3P2R1S0", "status": "failed",
            "failed_stages": ["test", "lint"], "message": "nightly", "link": "http://results.example/run/01J"})
    );

    let (addr, seen) = server("127.0.0.1", vec![OK.into()]).await;
    let r = run(
        &step,
        Spec {
            env: settings(&format!("http://{addr}/"), "slack"),
            http: vec![addr],
            ..Default::default()
        },
    )
    .await;
    assert_ok(&r);
    let body: serde_json::Value = serde_json::from_str(&seen.lock().unwrap()[0].body).unwrap();
    let t = body["text"].as_str().unwrap();
    assert!(
        t.starts_with("*site* run `01JDX3K6Q2T8W9V5M4N3P2R1S0`: failed (failed: test, lint)"),
        "{t}"
    );
}

#[tokio::test]
async fn a_redirect_to_another_host_is_not_followed() {
    let step = component("notify");
    let (other, other_seen) = server("127.0.0.2", vec![OK.into()]).await;
    let redirect = format!(
        "HTTP/1.1 302 Found\r\nLocation: http://{other}/steal\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let (addr, _) = server("127.0.0.1", vec![redirect]).await;
    let r = run(
        &step,
        Spec {
            env: settings(&format!("http://{addr}/"), "generic"),
            http: vec![addr],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(r.outcome, Outcome::Exited { code: 1 });
    assert!(text(&r.stderr).contains("302"), "{}", text(&r.stderr));
    assert!(
        other_seen.lock().unwrap().is_empty(),
        "the other host was contacted"
    );
}

#[tokio::test]
async fn a_host_outside_the_allowlist_is_refused() {
    let step = component("notify");
    let (addr, seen) = server("127.0.0.1", vec![OK.into()]).await;
    let r = run(
        &step,
        Spec {
            env: settings(&format!("http://{addr}/"), "generic"),
            http: vec!["hooks.example.com".into()],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(r.outcome, Outcome::Exited { code: 1 });
    assert!(
        text(&r.stderr).contains(&format!("HTTP request to {addr} refused")),
        "{}",
        text(&r.stderr)
    );
    assert!(
        seen.lock().unwrap().is_empty(),
        "the request must not leave the sandbox"
    );
}
