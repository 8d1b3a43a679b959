//! GitHub push webhooks through the router: a valid signature queues one
//! run of the pushed commit; any flipped byte of body or signature, a
//! missing signature, a `sha1=` one → 401 and nothing queued; the same
//! delivery ten times at once → one run, ten 2xx answers with its id; a
//! repository with two named pipelines gets a run of each, once (a third,
//! which runs after another pipeline, none); pushes that a pipeline's
//! filters do not take — an excluded branch, no path that matters, a tag
//! not listed — queue nothing and are recorded as ignored with the reason,
//! and a matching push queues its run.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use sentinel_api::RunId;
use sentinel_engine::ports::{RunQueue, StorageError};
use sentinel_engine::queue::Cancelled;
use sentinel_server::{
    ApiConfig, AppState, PipelineConfig, RepoConfig, RunControl, github_signature, router,
};
use sentinel_store::SledStore;
use tower::ServiceExt;

struct Idle;

#[async_trait]
impl RunControl for Idle {
    fn queued(&self) {}
    async fn cancel(&self, _: &RunId) -> Result<Cancelled, StorageError> {
        Ok(Cancelled::NotHere)
    }
}

const SECRET: &[u8] = b"It's a Secret to Everybody";
const COMMIT: &str = "6113728f27ae82c7b1a177c8d03f9e96e0adf246";

fn push_body() -> String {
    push_to("octo/app")
}

fn push_to(repo: &str) -> String {
    serde_json::json!({
        "ref": "refs/heads/main",
        "before": "0000000000000000000000000000000000000000",
        "after": COMMIT,
        "deleted": false,
        "repository": {
            "full_name": repo,
            "clone_url": format!("https://github.com/{repo}.git")
        },
        "pusher": { "name": "octo" }
    })
    .to_string()
}

fn setup() -> (tempfile::TempDir, SledStore, axum::Router) {
    let tmp = tempfile::tempdir().unwrap();
    let store = SledStore::try_open(tmp.path()).unwrap();
    let config = ApiConfig {
        repos: BTreeMap::from([
            (
                "app".to_string(),
                RepoConfig {
                    url: "file:///srv/git/app.git".into(),
                    github: Some("octo/app".into()),
                    pipeline: Some("sentinel.yml".into()),
                    ..Default::default()
                },
            ),
            (
                "shop".to_string(),
                RepoConfig {
                    url: "file:///srv/git/shop.git".into(),
                    github: Some("octo/shop".into()),
                    pipelines: BTreeMap::from([
                        (
                            "shop-build".to_string(),
                            PipelineConfig {
                                file: "ci/build.yml".into(),
                                ..Default::default()
                            },
                        ),
                        (
                            "shop-docs".to_string(),
                            PipelineConfig {
                                file: "ci/docs.yml".into(),
                                ..Default::default()
                            },
                        ),
                        (
                            "shop-deploy".to_string(),
                            PipelineConfig {
                                file: "ci/deploy.yml".into(),
                                after: Some(sentinel_server::upstream::After {
                                    pipeline: "shop-build".into(),
                                    status: vec![sentinel_api::RunStatus::Succeeded],
                                    branch: None,
                                    git_ref: None,
                                }),
                                ..Default::default()
                            },
                        ),
                    ]),
                    ..Default::default()
                },
            ),
        ]),
        ..ApiConfig::default()
    };
    let mut state = AppState::new(store.clone(), config, Arc::new(Idle));
    state.github_secret = Some(SECRET.into());
    (tmp, store, router(state))
}

async fn deliver(
    app: &axum::Router,
    delivery: &str,
    body: &[u8],
    signature: Option<(&str, String)>,
) -> (StatusCode, serde_json::Value) {
    deliver_event(app, "push", delivery, body, signature).await
}

async fn deliver_event(
    app: &axum::Router,
    event: &str,
    delivery: &str,
    body: &[u8],
    signature: Option<(&str, String)>,
) -> (StatusCode, serde_json::Value) {
    let mut req = Request::post("/hooks/github")
        .header("content-type", "application/json")
        .header("x-github-event", event)
        .header("x-github-delivery", delivery);
    if let Some((name, value)) = signature {
        req = req.header(name, value);
    }
    let res = app
        .clone()
        .oneshot(req.body(Body::from(body.to_vec())).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test]
async fn a_signed_push_queues_one_run_of_the_commit() {
    let (_tmp, store, app) = setup();
    let body = push_body();
    let sig = github_signature(SECRET, body.as_bytes());
    let (status, json) = deliver(
        &app,
        "d-1",
        body.as_bytes(),
        Some(("x-hub-signature-256", sig)),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{json}");
    let id: RunId = json["id"].as_str().unwrap().parse().unwrap();
    let entry = RunQueue::get(&store, &id).await.unwrap().expect("queued");
    assert_eq!(entry.request["ref"], COMMIT);
    assert_eq!(entry.request["branch"], "main");
    assert_eq!(entry.request["repo"], "app");
    assert_eq!(RunQueue::waiting(&store).await.unwrap(), 1);
}

#[tokio::test]
async fn anything_tampered_or_unsigned_is_refused() {
    let (_tmp, store, app) = setup();
    let body = push_body();
    let good = github_signature(SECRET, body.as_bytes());
    let mut n = 0;
    // Every byte of the body flipped in turn (a sample across all of it).
    for i in (0..body.len()).step_by(7) {
        let mut b = body.clone().into_bytes();
        b[i] ^= 0x01;
        let (status, _) = deliver(
            &app,
            &format!("b-{i}"),
            &b,
            Some(("x-hub-signature-256", good.clone())),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "body byte {i} flipped");
        n += 1;
    }
    // Every hex digit of the signature changed in turn.
    let prefix = "sha256=".len();
    for i in prefix..good.len() {
        let mut s = good.clone().into_bytes();
        s[i] = if s[i] == b'0' { b'1' } else { b'0' };
        let sig = String::from_utf8(s).unwrap();
        let (status, _) = deliver(
            &app,
            &format!("s-{i}"),
            body.as_bytes(),
            Some(("x-hub-signature-256", sig)),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "signature digit {i}");
        n += 1;
    }
    let sha1 = format!("sha1={}", "ab".repeat(20));
    for (what, sig) in [
        ("missing", None),
        ("sha1 header", Some(("x-hub-signature", sha1.clone()))),
        (
            "sha1 in the sha256 header",
            Some(("x-hub-signature-256", sha1)),
        ),
        (
            "another secret",
            Some((
                "x-hub-signature-256",
                github_signature(b"guess", body.as_bytes()),
            )),
        ),
    ] {
        let (status, json) = deliver(&app, what, body.as_bytes(), sig).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {json}");
        n += 1;
    }
    assert!(n > 100);
    assert_eq!(
        RunQueue::waiting(&store).await.unwrap(),
        0,
        "nothing queued"
    );
}

#[tokio::test]
async fn ten_concurrent_redeliveries_make_one_run() {
    let (_tmp, store, app) = setup();
    let body = push_body();
    let sig = github_signature(SECRET, body.as_bytes());
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let (app, body, sig) = (app.clone(), body.clone(), sig.clone());
        calls.spawn(async move {
            deliver(
                &app,
                "72d3162e-cc78-11e3-81ab-4c9367dc0958",
                body.as_bytes(),
                Some(("x-hub-signature-256", sig)),
            )
            .await
        });
    }
    let mut ids = std::collections::BTreeSet::new();
    while let Some(r) = calls.join_next().await {
        let (status, json) = r.unwrap();
        assert!(status.is_success(), "{status}: {json}");
        ids.insert(json["id"].as_str().unwrap().to_string());
    }
    assert_eq!(ids.len(), 1, "ten answers, one run id");
    assert_eq!(RunQueue::waiting(&store).await.unwrap(), 1, "one run");
    // Later, too.
    let (_, json) = deliver(
        &app,
        "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        body.as_bytes(),
        Some(("x-hub-signature-256", sig)),
    )
    .await;
    assert_eq!(json["id"].as_str(), ids.first().map(String::as_str));
    assert_eq!(json["redelivery"], true);
}

#[tokio::test]
async fn a_push_of_many_commits_is_not_refused_for_its_size() {
    let (_tmp, store, app) = setup();
    // A 3 MiB push: past the API's 1 MiB body limit, within the webhook's.
    let mut body: serde_json::Value = serde_json::from_str(&push_body()).unwrap();
    let commit = serde_json::json!({ "id": COMMIT, "message": "x".repeat(1000) });
    body["commits"] = serde_json::Value::Array(vec![commit; 3 * 1024]);
    let body = body.to_string();
    assert!(body.len() > 3 << 20);
    let sig = github_signature(SECRET, body.as_bytes());
    let (status, json) = deliver(
        &app,
        "d-big",
        body.as_bytes(),
        Some(("x-hub-signature-256", sig)),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{json}");
    assert_eq!(RunQueue::waiting(&store).await.unwrap(), 1);

    // Past the webhook's own limit (25 MiB): 413, nothing queued.
    let huge = vec![b' '; (25 << 20) + 1];
    let sig = github_signature(SECRET, &huge);
    let (status, _) = deliver(&app, "d-huge", &huge, Some(("x-hub-signature-256", sig))).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(RunQueue::waiting(&store).await.unwrap(), 1);
}

#[tokio::test]
async fn a_push_runs_each_named_pipeline_once() {
    let (_tmp, store, app) = setup();
    let body = push_to("octo/shop");
    let sig = github_signature(SECRET, body.as_bytes());
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..3 {
        let (status, json) = deliver(
            &app,
            "d-shop",
            body.as_bytes(),
            Some(("x-hub-signature-256", sig.clone())),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{json}");
        let runs = json["runs"].as_array().unwrap();
        let names: Vec<&str> = runs
            .iter()
            .map(|r| r["pipeline"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["shop-build", "shop-docs"], "{json}");
        for r in runs {
            let id: RunId = r["id"].as_str().unwrap().parse().unwrap();
            let entry = RunQueue::get(&store, &id).await.unwrap().expect("queued");
            assert_eq!(entry.pipeline, r["pipeline"].as_str().unwrap());
            assert_eq!(entry.request["pipeline"], r["pipeline"]);
            assert_eq!(entry.request["repo"], "shop");
            seen.insert(id);
        }
    }
    assert_eq!(seen.len(), 2, "a redelivery queues nothing more");
    assert_eq!(RunQueue::waiting(&store).await.unwrap(), 2);
}

/// A push of `git_ref` from `before` whose one commit changed `files`.
fn push_of(git_ref: &str, before: &str, files: &[&str]) -> String {
    serde_json::json!({
        "ref": git_ref,
        "before": before,
        "after": COMMIT,
        "commits": [{ "id": COMMIT, "added": [], "removed": [], "modified": files }],
        "repository": {
            "full_name": "octo/lib",
            "clone_url": "https://github.com/octo/lib.git"
        }
    })
    .to_string()
}

#[tokio::test]
async fn pushes_the_filters_do_not_take_are_ignored_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let store = SledStore::try_open(tmp.path()).unwrap();
    let on = sentinel_server::filters::On {
        branches: vec!["main".into(), "release/*".into()],
        tags: vec!["v*".into()],
        paths: vec!["src/**".into(), "Cargo.toml".into()],
        ..Default::default()
    };
    let config = ApiConfig {
        public_read: true,
        repos: BTreeMap::from([(
            "lib".to_string(),
            RepoConfig {
                url: "file:///srv/git/lib.git".into(),
                github: Some("octo/lib".into()),
                on: Some(on),
                ..Default::default()
            },
        )]),
        ..ApiConfig::default()
    };
    let mut state = AppState::new(store.clone(), config, Arc::new(Idle));
    state.github_secret = Some(SECRET.into());
    let app = router(state);
    let old = "1111111111111111111111111111111111111111";
    let cases = [
        (
            "wip",
            push_of("refs/heads/wip", old, &["src/lib.rs"]),
            "branch `wip` matches none of branches (main, release/*)",
        ),
        (
            "docs",
            push_of("refs/heads/main", old, &["docs/guide.md"]),
            "no changed path matters: docs/guide.md",
        ),
        (
            "tag",
            push_of("refs/tags/nightly", old, &["src/lib.rs"]),
            "tag `nightly` matches none of tags (v*)",
        ),
    ];
    for (delivery, body, why) in &cases {
        let sig = github_signature(SECRET, body.as_bytes());
        let (status, json) = deliver(
            &app,
            delivery,
            body.as_bytes(),
            Some(("x-hub-signature-256", sig)),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{json}");
        assert_eq!(json["status"], "ignored", "{json}");
        let reason = json["ignored"][0]["reason"].as_str().unwrap();
        assert!(reason.contains(why), "{delivery}: {reason}");
    }
    assert_eq!(
        RunQueue::waiting(&store).await.unwrap(),
        0,
        "nothing queued"
    );
    // A push that matters queues its run.
    let body = push_of("refs/heads/release/2.0", old, &["docs/x.md", "src/lib.rs"]);
    let sig = github_signature(SECRET, body.as_bytes());
    let (_, json) = deliver(
        &app,
        "good",
        body.as_bytes(),
        Some(("x-hub-signature-256", sig)),
    )
    .await;
    assert_eq!(json["status"], "queued", "{json}");
    assert_eq!(RunQueue::waiting(&store).await.unwrap(), 1);
    // The API names each ignored push, newest first, with its reason.
    let res = app
        .clone()
        .oneshot(Request::get("/api/v1/ignored").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let v: serde_json::Value =
        serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    let list = v["ignored"].as_array().unwrap();
    assert_eq!(list.len(), 3, "{v}");
    assert_eq!(list[0]["delivery"], "tag", "{v}");
    assert_eq!(list[2]["ref"], "refs/heads/wip", "{v}");
    assert_eq!(list[1]["repo"], "lib", "{v}");

    // A pull request into a branch the filters leave out: ignored and
    // recorded the same way.
    let body = serde_json::json!({
        "action": "opened",
        "number": 5,
        "pull_request": {
            "head": { "ref": "topic", "sha": COMMIT, "repo": { "full_name": "octo/lib" } },
            "base": { "ref": "wip", "sha": COMMIT, "repo": { "full_name": "octo/lib" } }
        },
        "repository": { "full_name": "octo/lib", "clone_url": "https://github.com/octo/lib.git" }
    })
    .to_string();
    let sig = github_signature(SECRET, body.as_bytes());
    let (status, json) = deliver_event(
        &app,
        "pull_request",
        "pr",
        body.as_bytes(),
        Some(("x-hub-signature-256", sig)),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{json}");
    assert_eq!(json["status"], "ignored", "{json}");
    let why = json["ignored"][0]["reason"].as_str().unwrap();
    assert!(
        why.contains("base branch `wip` matches none of branches"),
        "{why}"
    );
    assert_eq!(
        RunQueue::waiting(&store).await.unwrap(),
        1,
        "nothing more queued"
    );
    let newest = &store.ignored(1).unwrap()[0];
    assert_eq!(newest.event, "pull_request");
    assert_eq!(newest.git_ref, "refs/pull/5/head");
}
