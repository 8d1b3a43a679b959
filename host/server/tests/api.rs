//! The API through its router (no socket): every endpoint outside the
//! public list refuses a caller without a valid token (401) and a token
//! whose scope is too small (403); bodies past the limit get 413, bad JSON
//! a 400 with the parser's message; a trigger names only a configured
//! repository and is acknowledged once queued durably.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use sentinel_engine::ports::RunQueue;
use sentinel_server::{ApiConfig, AppState, RepoConfig, router};
use sentinel_store::SledStore;
use sentinel_store::tokens::Scope;
use tower::ServiceExt;

struct Api {
    _tmp: tempfile::TempDir,
    store: SledStore,
    app: axum::Router,
    read: String,
    trigger: String,
    queued: Arc<AtomicUsize>,
}

async fn api(public_read: bool) -> Api {
    let tmp = tempfile::tempdir().unwrap();
    let store = SledStore::try_open(tmp.path()).unwrap();
    let (read, _) = store.create_token("reader", Scope::Read).await.unwrap();
    let (trigger, _) = store.create_token("ci", Scope::Trigger).await.unwrap();
    let queued = Arc::new(AtomicUsize::new(0));
    let q = queued.clone();
    let config = ApiConfig {
        public_read,
        repos: BTreeMap::from([(
            "app".to_string(),
            RepoConfig {
                url: "file:///srv/git/app.git".into(),
            },
        )]),
        body_limit: 1024,
    };
    let app = router(AppState {
        store: store.clone(),
        config,
        on_queued: Arc::new(move || {
            q.fetch_add(1, Ordering::SeqCst);
        }),
    });
    Api {
        _tmp: tmp,
        store,
        app,
        read,
        trigger,
        queued,
    }
}

async fn call(
    app: &axum::Router,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (StatusCode, serde_json::Value) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = match body {
        Some(b) => req
            .header("content-type", "application/json")
            .body(Body::from(b.to_string())),
        None => req.body(Body::empty()),
    }
    .unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, json)
}

const RUN: &str = "/api/v1/runs/01JDX3K6Q2T8W9V5M4N3P2R1S0";
const TRIGGER: &str = r#"{"repo": "app", "ref": "main"}"#;

/// Every endpoint but the public ones.
fn protected() -> Vec<(Method, &'static str, Option<&'static str>)> {
    vec![
        (Method::GET, "/info", None),
        (Method::GET, "/api/v1/runs", None),
        (Method::GET, RUN, None),
        (Method::POST, "/api/v1/runs", Some(TRIGGER)),
    ]
}

#[tokio::test]
async fn no_valid_token_no_entry() {
    let a = api(false).await;
    let (status, body) = call(&a.app, Method::GET, "/health", None, None).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
    for (method, path, body) in protected() {
        for token in [None, Some("sentinel_000000000000_nope"), Some("garbage")] {
            let (status, json) = call(&a.app, method.clone(), path, token, body).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {token:?}"
            );
            assert!(json["error"].as_str().is_some_and(|m| !m.is_empty()));
        }
    }
    // A read token reads, and may not trigger.
    let (status, _) = call(&a.app, Method::GET, "/api/v1/runs", Some(&a.read), None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, json) = call(
        &a.app,
        Method::POST,
        "/api/v1/runs",
        Some(&a.read),
        Some(TRIGGER),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{json}");
    assert_eq!(RunQueue::waiting(&a.store).await.unwrap(), 0);
}

#[tokio::test]
async fn public_read_opens_reads_only() {
    let a = api(true).await;
    let (status, _) = call(&a.app, Method::GET, "/api/v1/runs", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call(&a.app, Method::GET, "/info", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call(&a.app, Method::POST, "/api/v1/runs", None, Some(TRIGGER)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn bad_bodies_are_refused_with_a_reason() {
    let a = api(false).await;
    let t = Some(a.trigger.as_str());
    let big = format!(r#"{{"repo": "app", "ref": "{}"}}"#, "x".repeat(4096));
    let (status, _) = call(&a.app, Method::POST, "/api/v1/runs", t, Some(&big)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    for (body, says) in [
        (r#"{"repo": "app""#, "EOF"),
        (r#"{"repo": 7}"#, "repo"),
        (r#"{"repo": "app", "branch": "x"}"#, "unknown field"),
        (r#"{"repo": "/etc"}"#, "unknown repository `/etc`"),
    ] {
        let (status, json) = call(&a.app, Method::POST, "/api/v1/runs", t, Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {json}");
        let msg = json["error"].as_str().unwrap_or_default();
        assert!(msg.contains(says), "{body}: {msg}");
    }
    assert_eq!(
        RunQueue::waiting(&a.store).await.unwrap(),
        0,
        "nothing was queued"
    );
}

#[tokio::test]
async fn a_trigger_is_queued_durably_and_visible() {
    let a = api(false).await;
    let (status, json) = call(
        &a.app,
        Method::POST,
        "/api/v1/runs",
        Some(&a.trigger),
        Some(TRIGGER),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{json}");
    let id: sentinel_api::RunId = json["id"].as_str().unwrap().parse().unwrap();
    let entry = RunQueue::get(&a.store, &id).await.unwrap().expect("queued");
    assert_eq!(entry.request["ref"], "main");
    assert_eq!(a.queued.load(Ordering::SeqCst), 1, "the worker was woken");
    let (status, json) = call(
        &a.app,
        Method::GET,
        &format!("/api/v1/runs/{id}"),
        Some(&a.read),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json["run"]["status"], "queued");
    let (status, _) = call(&a.app, Method::GET, RUN, Some(&a.read), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
