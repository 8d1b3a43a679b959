//! Benchmark (not a test) of the deployments record on a real server
//! process: `wrk` on `GET /api/v1/deployments` (what is deployed where now,
//! and the 100 newest) with 1,000 recorded deployments — 20 apps
//! and environments — against `GET /health` on the same server as the
//! baseline; the goal is p99 < 10 ms. (Answers are made once per change
//! of the deployments and query; this measures the steady state, where
//! reads outnumber deploys.)
//! Run with `cargo bench -p sentinel --bench deployments` (needs `wrk`:
//! `scripts/setup.sh` installs it).

use chrono::Utc;
use sentinel_api::{DeploySource, DeploymentDoc, DeploymentStatus};
use sentinel_store::SledStore;
use sentinel_store::tokens::Scope;

#[path = "../tests/common/server.rs"]
mod server;
#[path = "common/wrk.rs"]
mod wrk;

use wrk::wrk;

const RECORDED: usize = 1_000;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let token = {
        let db = SledStore::try_open(&state).unwrap();
        for i in 0..RECORDED {
            let (app, env) = (
                format!("app-{}", i % 10),
                ["dev", "qa", "staging", "prod"][i % 4],
            );
            let run = sentinel_engine::docs::new_run_id();
            let version = format!("1.0.{}", i / 40);
            let doc = DeploymentDoc::requested(
                sentinel_engine::docs::new_run_id().to_string(),
                &app,
                env,
                &version,
                DeploySource::Marker {
                    watcher: format!("{env}-watcher"),
                    key: format!("{app}/{version}.deploy"),
                },
            );
            let mark = format!("bench/{i}");
            db.decide_marker(&mark, &doc, None, false, &|_| true)
                .await
                .unwrap();
            let status = if i % 9 == 0 {
                DeploymentStatus::Failed
            } else {
                DeploymentStatus::Succeeded
            };
            db.deployment_follows(&doc.id, &run, status, None, Some(Utc::now()))
                .unwrap();
        }
        db.create_token("bench", Scope::Read).await.unwrap().0
    };
    let server = wrk::unlimited_server(tmp.path(), &state, "");
    let url = server.url.clone();
    let check = server::Client::new(&url, &token)
        .get("/api/v1/deployments")
        .await;
    // 10 apps over 4 environments by parity: 20 pairs deployed.
    assert_eq!(check["current"].as_array().unwrap().len(), 20);
    assert_eq!(check["deployments"].as_array().unwrap().len(), 100);

    println!(
        "GET /api/v1/deployments with {RECORDED} recorded deployments (wrk -t2 -c16 -d10s, same server):"
    );
    let (h_rps, h_p50, h_p99) = wrk(&format!("{url}/health"), &token);
    println!(
        "  GET /health (baseline)                  {h_rps:>9.0} req/s  p50 {h_p50:.2} ms  p99 {h_p99:.2} ms"
    );
    for (what, path) in [
        ("current + 100 newest", "/api/v1/deployments"),
        (
            "current in prod + 20",
            "/api/v1/deployments?environment=prod&limit=20",
        ),
    ] {
        let (rps, p50, p99) = wrk(&format!("{url}{path}"), &token);
        println!(
            "  {what:<38} {rps:>9.0} req/s  p50 {p50:.2} ms  p99 {p99:.2} ms   ratio to /health: {:.2}× the req/s; goal p99 < 10 ms: {:.2}× the limit",
            rps / h_rps,
            p99 / 10.0
        );
    }
    server.stop();
}
