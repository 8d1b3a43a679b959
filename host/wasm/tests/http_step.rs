//! The bundled http step against loopback servers: the request it sends
//! (method, headers, body from a workspace file, bearer token), its answer
//! as the output, a 500 tried again, an unexpected status, and a redirect
//! to another port of the same host neither followed nor reachable.

mod common;

use common::http::server;
use common::{Spec, assert_ok, component, run, text};
use sentinel_engine::exec::Outcome;

fn settings(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| {
            (
                format!("SENTINEL_HTTP_{}", k.to_ascii_uppercase()),
                v.to_string(),
            )
        })
        .chain([(
            "SENTINEL_OUTPUT".to_string(),
            "/sentinel/output".to_string(),
        )])
        .collect()
}

fn reply(status: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn sends_the_request_and_outputs_the_answer() {
    let step = component("http");
    let (addr, seen) = server(
        "127.0.0.1",
        vec![reply("201 Created", "{\"deployed\": true}")],
    )
    .await;
    let r = run(
        &step,
        Spec {
            env: settings(&[
                ("url", &format!("http://{addr}/deploy?app=web")),
                ("method", "post"),
                (
                    "headers",
                    "Content-Type: application/json\nX-Deploy-Env: production",
                ),
                ("body_file", "meta.json"),
                ("token", "tok-0123456789abcdef"),
                ("expect", "200,201"),
            ]),
            http: vec![addr.clone()],
            setup: Box::new(|ws| {
                std::fs::write(ws.join("meta.json"), "{\"version\": \"1.0.1-22\"}").unwrap()
            }),
            ..Default::default()
        },
    )
    .await;
    assert_ok(&r);
    assert_eq!(text(&r.stdout), "{\"deployed\": true}");
    assert!(
        r.outputs.as_deref().unwrap_or("").contains("status=201"),
        "{:?}",
        r.outputs
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert!(
        seen[0]
            .head
            .starts_with("POST /deploy?app=web HTTP/1.1\r\n"),
        "{}",
        seen[0].head
    );
    let head = seen[0].head.to_ascii_lowercase();
    for h in [
        "content-type: application/json",
        "x-deploy-env: production",
        "authorization: bearer tok-0123456789abcdef",
        "user-agent: sentinel-http/1.0",
    ] {
        assert!(head.contains(h), "{h} in {head}");
    }
    assert_eq!(seen[0].body, "{\"version\": \"1.0.1-22\"}");
}

#[tokio::test]
async fn a_server_error_is_tried_again_and_an_unexpected_status_fails() {
    let step = component("http");
    let (addr, seen) = server(
        "127.0.0.1",
        vec![
            reply("500 Internal Server Error", "busy"),
            reply("200 OK", "fine"),
        ],
    )
    .await;
    let r = run(
        &step,
        Spec {
            env: settings(&[("url", &format!("http://{addr}/")), ("retries", "2")]),
            http: vec![addr.clone()],
            ..Default::default()
        },
    )
    .await;
    assert_ok(&r);
    assert_eq!(text(&r.stdout), "fine");
    assert_eq!(seen.lock().unwrap().len(), 2, "one retry");
    assert!(text(&r.stderr).contains("500"), "{}", text(&r.stderr));

    let (addr, _) = server("127.0.0.1", vec![reply("404 Not Found", "no such app")]).await;
    let r = run(
        &step,
        Spec {
            env: settings(&[("url", &format!("http://{addr}/")), ("retries", "3")]),
            http: vec![addr.clone()],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(r.outcome, Outcome::Exited { code: 1 });
    let err = text(&r.stderr);
    assert!(err.contains("404") && err.contains("no such app"), "{err}");
}

#[tokio::test]
async fn a_redirect_to_another_port_is_neither_followed_nor_reachable() {
    let step = component("http");
    let (other, other_seen) = server("127.0.0.1", vec![reply("200 OK", "stolen")]).await;
    let (addr, _) = server(
        "127.0.0.1",
        vec![format!(
            "HTTP/1.1 302 Found\r\nLocation: http://{other}/steal\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )],
    )
    .await;
    let r = run(
        &step,
        Spec {
            env: settings(&[("url", &format!("http://{addr}/"))]),
            http: vec![addr.clone()],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(r.outcome, Outcome::Exited { code: 1 });
    assert!(
        text(&r.stderr).contains("redirects are not followed"),
        "{}",
        text(&r.stderr)
    );
    assert!(
        other_seen.lock().unwrap().is_empty(),
        "the other port was contacted"
    );

    // Asked directly, the other port of the same host is refused by the sandbox.
    let r = run(
        &step,
        Spec {
            env: settings(&[("url", &format!("http://{other}/steal"))]),
            http: vec![addr],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(r.outcome, Outcome::Exited { code: 1 });
    assert!(text(&r.stderr).contains("refused"), "{}", text(&r.stderr));
    assert!(
        other_seen.lock().unwrap().is_empty(),
        "the other port was contacted"
    );
}
