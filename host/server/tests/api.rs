//! The API through its router (no socket): every endpoint outside the
//! public list refuses a caller without a valid token (401) and a token
//! whose scope is too small (403); bodies past the limit get 413, bad JSON
//! a 400 with the parser's message; a trigger names only a configured
//! repository and is acknowledged once queued durably.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use sentinel_api::RunId;
use sentinel_engine::ports::{RunQueue, StorageError};
use sentinel_engine::queue::Cancelled;
use sentinel_server::{ApiConfig, AppState, ROUTES, RateLimit, RepoConfig, RunControl, router};
use sentinel_store::SledStore;
use sentinel_store::tokens::Scope;
use tower::ServiceExt;

/// Counts wake-ups; cancels nothing.
#[derive(Default)]
struct Counting(AtomicUsize);

#[async_trait]
impl RunControl for Counting {
    fn queued(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
    async fn cancel(&self, _: &RunId) -> Result<Cancelled, StorageError> {
        Ok(Cancelled::NotHere)
    }
}

struct Api {
    _tmp: tempfile::TempDir,
    store: SledStore,
    app: axum::Router,
    read: String,
    trigger: String,
    admin: String,
    queued: Arc<Counting>,
}

fn config(public_read: bool) -> ApiConfig {
    ApiConfig {
        public_read,
        repos: BTreeMap::from([(
            "app".to_string(),
            RepoConfig {
                url: "file:///srv/git/app.git".into(),
                pipeline: Some("sentinel.yml".into()),
                ..Default::default()
            },
        )]),
        body_limit: 1024,
        ..ApiConfig::default()
    }
}

async fn api_with(config: ApiConfig) -> Api {
    api_with_hook_secret(config, None).await
}

async fn api_with_hook_secret(config: ApiConfig, hook_secret: Option<&[u8]>) -> Api {
    let tmp = tempfile::tempdir().unwrap();
    let store = SledStore::try_open(tmp.path()).unwrap();
    let (read, _) = store.create_token("reader", Scope::Read).await.unwrap();
    let (trigger, _) = store.create_token("ci", Scope::Trigger).await.unwrap();
    let (admin, _) = store.create_token("root", Scope::Admin).await.unwrap();
    let queued = Arc::new(Counting::default());
    let mut state = AppState::new(store.clone(), config, queued.clone());
    state.results_dir = Some(tmp.path().join("results"));
    state.github_secret = hook_secret.map(Arc::from);
    let app = router(state);
    Api {
        _tmp: tmp,
        store,
        app,
        read,
        trigger,
        admin,
        queued,
    }
}

async fn api(public_read: bool) -> Api {
    api_with(config(public_read)).await
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

/// A concrete request for each route of the table.
fn concrete(path: &str) -> String {
    path.replace("{id}", &RUN["/api/v1/runs/".len()..])
        .replace("{stage}", "build")
        .replace("{pipeline}", "demo.svg")
        .replace("{name}", "DEPLOY_KEY")
        .replace("{path}", "runs/index.json")
}

fn body_for(method: &str, path: &str) -> Option<&'static str> {
    match (method, path) {
        ("POST", "/api/v1/runs") => Some(TRIGGER),
        ("POST", "/api/v1/tokens") => Some(r#"{"name": "x", "scope": "read"}"#),
        ("PUT", _) => Some(r#"{"value": "v"}"#),
        _ => None,
    }
}

/// Every endpoint outside the public list, with the scope it needs.
fn protected() -> Vec<(Method, String, Option<&'static str>, Scope)> {
    ROUTES
        .iter()
        .filter_map(|r| match r.access {
            sentinel_server::Access::Public => None,
            sentinel_server::Access::Token(scope) => Some((
                r.method.parse().unwrap(),
                concrete(r.path),
                body_for(r.method, r.path),
                scope,
            )),
        })
        .collect()
}

#[tokio::test]
async fn no_valid_token_no_entry() {
    let a = api(false).await;
    let (status, body) = call(&a.app, Method::GET, "/health", None, None).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
    let routes = protected();
    assert!(routes.len() >= 18, "the table lists every endpoint");
    for (method, path, body, _) in &routes {
        for token in [None, Some("sentinel_000000000000_nope"), Some("garbage")] {
            let (status, json) = call(&a.app, method.clone(), path, token, *body).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {token:?}"
            );
            assert!(json["error"].as_str().is_some_and(|m| !m.is_empty()));
        }
    }
    // A token below the endpoint's scope: 403, and nothing happens.
    for (method, path, body, scope) in &routes {
        let below = match scope {
            Scope::Read => continue,
            Scope::Trigger => &a.read,
            Scope::Deploy | Scope::Admin => &a.trigger,
        };
        let (status, json) = call(&a.app, method.clone(), path, Some(below), *body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {json}");
    }
    assert_eq!(RunQueue::waiting(&a.store).await.unwrap(), 0);
    assert_eq!(a.store.tokens().unwrap().len(), 3, "no token was created");
    // A read token reads.
    let (status, _) = call(&a.app, Method::GET, "/api/v1/runs", Some(&a.read), None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn public_endpoints_need_no_token() {
    let a = api(false).await;
    let res = a
        .app
        .clone()
        .oneshot(Request::get("/badge/demo.svg").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "image/svg+xml");
    let svg = res.into_body().collect().await.unwrap().to_bytes();
    let svg = String::from_utf8_lossy(&svg);
    assert!(svg.starts_with("<svg") && svg.contains("unknown"), "{svg}");
    // A webhook without a signature is refused by its own check.
    let (status, _) = call(&a.app, Method::POST, "/hooks/github", None, Some("{}")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn each_token_has_its_own_rate_limit() {
    let mut c = config(false);
    c.rate_limit = RateLimit {
        per_second: 1,
        burst: 3,
    };
    let a = api_with(c).await;
    for _ in 0..3 {
        let (status, _) = call(&a.app, Method::GET, "/api/v1/runs", Some(&a.read), None).await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, json) = call(&a.app, Method::GET, "/api/v1/runs", Some(&a.read), None).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{json}");
    assert!(json["error"].as_str().unwrap().contains("rate limit"));
    // Another token is not held back by the first one's use.
    let (status, _) = call(&a.app, Method::GET, "/api/v1/runs", Some(&a.admin), None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn the_session_cookie_reads_but_never_writes() {
    let a = api(false).await;
    let req = Request::post("/api/v1/session")
        .header("authorization", format!("Bearer {}", a.admin))
        .body(Body::empty())
        .unwrap();
    let res = a.app.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let cookie = res.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
    // Behind a TLS proxy the cookie is Secure.
    let req = Request::post("/api/v1/session")
        .header("authorization", format!("Bearer {}", a.admin))
        .header("x-forwarded-proto", "https")
        .body(Body::empty())
        .unwrap();
    let res = a.app.clone().oneshot(req).await.unwrap();
    let proxied = res.headers()["set-cookie"].to_str().unwrap();
    assert!(proxied.ends_with("; Secure"), "{proxied}");
    let pair = cookie.split(';').next().unwrap().to_string();
    let with_cookie = |method: Method, path: &str, body: Option<&str>| {
        let mut r = Request::builder()
            .method(method)
            .uri(path)
            .header("cookie", pair.clone());
        if body.is_some() {
            r = r.header("content-type", "application/json");
        }
        r.body(Body::from(body.unwrap_or_default().to_string()))
            .unwrap()
    };
    let res = a
        .app
        .clone()
        .oneshot(with_cookie(Method::GET, "/api/v1/runs", None))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK, "reads with the cookie");
    // Even an admin's cookie cannot trigger (no cross-site writes).
    let res = a
        .app
        .clone()
        .oneshot(with_cookie(Method::POST, "/api/v1/runs", Some(TRIGGER)))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(RunQueue::waiting(&a.store).await.unwrap(), 0);
}

#[tokio::test]
async fn the_committed_openapi_document_is_current() {
    let doc = sentinel_server::openapi::document();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
    let text = serde_json::to_string_pretty(&doc).unwrap() + "\n";
    if std::env::var_os("SENTINEL_WRITE_OPENAPI").is_some() {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "SENTINEL_WRITE_OPENAPI rewrites the committed document; it is refused under CI=true"
        );
        std::fs::write(&path, &text).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == text,
        "docs/openapi.json is not the server's document: run `SENTINEL_WRITE_OPENAPI=1 cargo test -p sentinel-server --test api` and commit it"
    );
    for r in ROUTES {
        assert!(
            doc["paths"][r.path][r.method.to_lowercase()].is_object(),
            "{} {}",
            r.method,
            r.path
        );
    }
    // The router is the table: an unlisted path is no endpoint, a listed
    // public one answers (the web app's settings among them).
    let a = api(false).await;
    let (status, body) = call(&a.app, Method::GET, "/config.json", None, None).await;
    assert_eq!(
        (status, body["mode"].as_str()),
        (StatusCode::OK, Some("live"))
    );
    assert!(ROUTES.iter().any(|r| r.path == "/config.json"));
    let (status, _) = call(&a.app, Method::GET, "/api/v1/not-an-endpoint", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Served too.
    let (status, served) = call(
        &a.app,
        Method::GET,
        "/api/v1/openapi.json",
        Some(&a.read),
        None,
    )
    .await;
    assert_eq!((status, served), (StatusCode::OK, doc));
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
    assert_eq!(a.queued.0.load(Ordering::SeqCst), 1, "the worker was woken");
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

#[tokio::test]
async fn the_first_page_lists_runs_accepted_but_not_started() {
    let a = api(false).await;
    let t = Some(a.trigger.as_str());
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (status, v) = call(&a.app, Method::POST, "/api/v1/runs", t, Some(TRIGGER)).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{v}");
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    let r = Some(a.read.as_str());
    let (status, v) = call(&a.app, Method::GET, "/api/v1/runs", r, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["runs"], serde_json::json!([]), "none has started");
    let queued: Vec<&str> = v["queued"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["id"].as_str().unwrap())
        .collect();
    assert_eq!(queued, ids, "in queue order");
    assert_eq!(v["queued"][0]["status"], "queued");
    // A later page is about stored runs only.
    let (_, v) = call(
        &a.app,
        Method::GET,
        &format!("/api/v1/runs?before={}", ids[0]),
        r,
        None,
    )
    .await;
    assert_eq!(v["queued"], serde_json::json!([]));
}

#[test]
fn rewriting_the_openapi_document_is_refused_under_ci() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "the_committed_openapi_document_is_current"])
        .env("CI", "true")
        .env("SENTINEL_WRITE_OPENAPI", "1")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the rewrite passed under CI: {text}");
    assert!(text.contains("refused under CI=true"), "{text}");
}

#[tokio::test]
async fn every_response_carries_a_request_id() {
    let a = api(false).await;
    let get = |id: Option<&str>, path: &str| {
        let mut req = Request::get(path);
        if let Some(id) = id {
            req = req.header("x-request-id", id);
        }
        a.app.clone().oneshot(req.body(Body::empty()).unwrap())
    };
    // Generated when the request has none: a ULID, a new one each time.
    let one = get(None, "/health").await.unwrap();
    let two = get(None, "/api/v1/runs").await.unwrap();
    let id =
        |r: &axum::response::Response| r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(
        two.status(),
        StatusCode::UNAUTHORIZED,
        "errors carry one too"
    );
    assert_eq!(id(&one).len(), 26, "{}", id(&one));
    assert_ne!(id(&one), id(&two));
    // Kept when the request sends a usable one; replaced when not.
    let kept = get(Some("trace-4711"), "/health").await.unwrap();
    assert_eq!(id(&kept), "trace-4711");
    let long = "x".repeat(200);
    let replaced = get(Some(&long), "/no/such/path").await.unwrap();
    assert_eq!(replaced.status(), StatusCode::NOT_FOUND);
    assert_eq!(id(&replaced).len(), 26);
}

/// A deploy held for approval since `hours_ago`.
fn held(
    hours_ago: i64,
) -> (
    sentinel_api::DeploymentDoc,
    sentinel_engine::ports::QueueEntry,
) {
    let requested = chrono::Utc::now() - chrono::Duration::hours(hours_ago);
    let mut doc = sentinel_api::DeploymentDoc::requested(
        ulid::Ulid::new().to_string(),
        "shop",
        "production",
        &format!("v{hours_ago}"),
        sentinel_api::DeploySource::Promotion {
            from_run: sentinel_engine::docs::new_run_id(),
            rollback: false,
        },
    );
    doc.requested = requested;
    let entry = sentinel_engine::ports::QueueEntry {
        run_id: sentinel_engine::docs::new_run_id(),
        pipeline: "deployer".into(),
        trigger: sentinel_api::Trigger {
            kind: sentinel_api::TriggerKind::Deploy,
            by: None,
        },
        request: serde_json::json!({"repo": "deployer", "ref": "main"}),
        attempt: 1,
        enqueued: requested,
        claim: None,
    };
    (doc, entry)
}

/// A wait longer than its environment allows is rejected, saying so; one
/// still within its time waits on.
#[tokio::test]
async fn a_wait_past_its_time_is_rejected_and_one_within_it_waits_on() {
    let tmp = tempfile::tempdir().unwrap();
    let store = SledStore::try_open(tmp.path()).unwrap();
    let queued = Arc::new(Counting::default());
    let mut state = AppState::new(store.clone(), ApiConfig::default(), queued.clone());
    state.deploys = Arc::new(sentinel_server::Deploys::new(
        std::collections::BTreeMap::from([(
            "production".to_string(),
            sentinel_server::EnvironmentConfig {
                repo: "deployer".into(),
                pipeline: None,
                git_ref: "main".into(),
                domain: String::new(),
                approval: true,
                approval_timeout_hours: 2,
            },
        )]),
        Default::default(),
        tmp.path().join("payloads"),
        Default::default(),
    ));
    let (late, e1) = held(3);
    let (recent, e2) = held(1);
    store.request_deployment(&late, &e1, true).await.unwrap();
    store.request_deployment(&recent, &e2, true).await.unwrap();

    assert_eq!(
        sentinel_server::deploys::expire_due(&state, chrono::Utc::now()).await,
        1
    );
    let d = store.deployment(&late.id).unwrap().unwrap();
    assert_eq!(d.status, sentinel_api::DeploymentStatus::Rejected);
    assert_eq!(d.reason.as_deref(), Some("no approval within 2 h"));
    let a = d.approval.unwrap();
    assert!(!a.approved);
    assert_eq!(a.by, "sentinel");
    let d = store.deployment(&recent.id).unwrap().unwrap();
    assert_eq!(d.status, sentinel_api::DeploymentStatus::WaitingApproval);
    assert_eq!(RunQueue::waiting(&store).await.unwrap(), 0, "nothing ran");
    assert_eq!(queued.0.load(Ordering::SeqCst), 0);
    // An hour and a half later, the other one's time is up too.
    let later = chrono::Utc::now() + chrono::Duration::minutes(90);
    assert_eq!(sentinel_server::deploys::expire_due(&state, later).await, 1);
    assert!(store.waiting_approval().unwrap().is_empty());
}

#[tokio::test]
async fn a_run_is_marked_to_be_kept_and_unmarked() {
    use sentinel_engine::Store as _;
    let a = api(false).await;
    let id: sentinel_api::RunId = RUN["/api/v1/runs/".len()..].parse().unwrap();
    let keep = format!("{RUN}/keep");
    let (status, _) = call(&a.app, Method::POST, &keep, Some(&a.trigger), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "an unknown run");
    let doc = sentinel_engine::fake::run_doc(&id, sentinel_api::RunStatus::Succeeded);
    a.store.put_run(&doc, true).await.unwrap();
    let (status, json) = call(&a.app, Method::POST, &keep, Some(&a.trigger), None).await;
    assert_eq!(
        (status, json["keep"].as_bool()),
        (StatusCode::OK, Some(true)),
        "{json}"
    );
    assert!(a.store.kept_runs().unwrap().contains(&id));
    assert!(a.store.protected_runs().await.unwrap().contains(&id));
    let (status, _) = call(&a.app, Method::POST, &keep, Some(&a.read), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a read token cannot");
    let (status, json) = call(
        &a.app,
        Method::POST,
        &keep,
        Some(&a.trigger),
        Some(r#"{"keep": false}"#),
    )
    .await;
    assert_eq!(
        (status, json["keep"].as_bool()),
        (StatusCode::OK, Some(false))
    );
    assert!(!a.store.kept_runs().unwrap().contains(&id));
}

/// The status of a request whose body may never end (a stream): only the
/// head is awaited.
async fn status_of(app: &axum::Router, req: Request<Body>) -> StatusCode {
    tokio::time::timeout(std::time::Duration::from_secs(10), app.clone().oneshot(req))
        .await
        .expect("an answer within 10 s")
        .unwrap()
        .status()
}

/// Bodies no client should send: truncated, mistyped, huge, deep, not
/// UTF-8, not JSON.
fn bad_bodies() -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = [
        "",
        "{",
        "}",
        "[]",
        "null",
        "0",
        "-1",
        "1e309",
        "true",
        "\"x\"",
        "{\"repo\":",
        "{\"repo\": 1}",
        "{\"repo\": \"app\", \"ref\": 5}",
        "{\"repo\": \"app\", \"ref\": \"main\", \"env\": {\"A\": [1]}}",
        "{\"from\": {}}",
        "{\"from\": \"../../x\"}",
        "{\"keep\": \"yes\"}",
        "{\"name\": \"x\", \"scope\": \"root\"}",
        "{\"value\": null}",
        "{\"to\": [\"production\"]}",
        "\"\\ud800\"",
        "{\"a\":1,\"a\":2}",
        "repo=app&ref=main",
    ]
    .iter()
    .map(|b| b.as_bytes().to_vec())
    .collect();
    v.push(b"\xff\xfe{\"repo\": \"\xc3\x28\"}".to_vec());
    v.push(format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes());
    v.push(vec![b'a'; 3 << 20]);
    v.push(format!("{{\"repo\": \"{}\"}}", "x".repeat(900)).into_bytes());
    v
}

/// A route's path with `seg` for every parameter.
fn with_segment(path: &str, seg: &str) -> String {
    ["{id}", "{stage}", "{name}", "{pipeline}", "{path}"]
        .iter()
        .fold(path.to_string(), |p, param| p.replace(param, seg))
}

/// Path values no route expects.
const BAD_SEGMENTS: &[&str] = &[
    "x",
    "%00",
    "..%2F..%2Fetc",
    "01JDX3K6Q2T8W9V5M4N3P2R1S0",
    "ZZZZZZZZZZZZZZZZZZZZZZZZZZ",
    "%F0%28%8C%BC",
    "-",
];

/// Every route, with every bad body (signed, for the webhook, so the
/// parser is reached), then random JSON of every shape: never a 5xx or a
/// panic, and the server still answers its health check after.
#[test]
fn malformed_requests_to_every_route_get_4xx_never_5xx() {
    use hmac::Mac as _;
    use proptest::prelude::*;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let secret = b"hook-secret".to_vec();
    let a = rt.block_on(api_with_hook_secret(config(false), Some(&secret)));
    let sign = |body: &[u8]| {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&secret).unwrap();
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    };
    let request = |method: &str, path: &str, body: Vec<u8>, ctype: Option<&str>, event: &str| {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {}", a.admin))
            .header("x-github-event", event)
            .header("x-github-delivery", ulid::Ulid::new().to_string())
            .header("x-hub-signature-256", sign(&body));
        if let Some(c) = ctype {
            req = req.header("content-type", c);
        }
        req.body(Body::from(body)).unwrap()
    };
    let mut asked = 0;
    for route in ROUTES {
        for seg in BAD_SEGMENTS {
            let path = with_segment(route.path, seg);
            for body in bad_bodies() {
                for ctype in [
                    Some("application/json"),
                    Some("text/plain; charset=latin1"),
                    None,
                ] {
                    for event in ["push", "pull_request"] {
                        let req = request(route.method, &path, body.clone(), ctype, event);
                        let status = rt.block_on(status_of(&a.app, req));
                        asked += 1;
                        assert!(
                            !status.is_server_error(),
                            "{} {path} with a {}-byte body ({ctype:?}, {event}): {status}",
                            route.method,
                            body.len()
                        );
                    }
                }
            }
        }
    }
    // Random JSON of every shape at every route.
    let json = proptest::arbitrary::any::<Option<bool>>()
        .prop_map(|b| serde_json::json!(b))
        .boxed()
        .prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
                proptest::collection::btree_map(
                    prop_oneof![
                        Just("repo".to_string()),
                        Just("ref".to_string()),
                        Just("from".to_string()),
                        Just("env".to_string()),
                        Just("keep".to_string()),
                        Just("to".to_string()),
                        ".{0,6}"
                    ],
                    prop_oneof![
                        inner,
                        ".{0,12}".prop_map(serde_json::Value::from),
                        any::<i64>().prop_map(serde_json::Value::from)
                    ],
                    0..5
                )
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        });
    let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
        cases: 2000,
        failure_persistence: None,
        ..Default::default()
    });
    runner
        .run(
            &(
                0..ROUTES.len(),
                json,
                proptest::sample::select(BAD_SEGMENTS),
            ),
            |(i, body, seg)| {
                let route = &ROUTES[i];
                let path = with_segment(route.path, seg);
                let req = request(
                    route.method,
                    &path,
                    serde_json::to_vec(&body).unwrap(),
                    Some("application/json"),
                    "push",
                );
                let status = rt.block_on(status_of(&a.app, req));
                prop_assert!(
                    !status.is_server_error(),
                    "{} {path} {body}: {status}",
                    route.method
                );
                Ok(())
            },
        )
        .unwrap();
    let health = Request::builder()
        .uri("/health")
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        rt.block_on(status_of(&a.app, health)),
        StatusCode::OK,
        "still healthy after {asked} bad requests"
    );
}
