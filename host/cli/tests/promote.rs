//! Promotion on a real `sentinel serve` with a real Docker engine: a
//! succeeded run deployed to an environment with its published files and
//! outputs in `deploy/`; an environment that asks for approval holds the
//! deploy (no run) across a server restart until a `deploy` token approves
//! it — a `trigger` token may not — or rejects it; promoting an older run
//! is a rollback, refused unless asked for; and the web app's Deployments
//! page approves a waiting deploy with the signed-in token and then shows
//! the environment's current version. A pipeline stage's own approval gate
//! (`approval: production`) pauses its run — no container, no queue entry
//! — across a `kill -9` of the server, and the same run goes on when
//! approved, ends failed when rejected and cancelled when cancelled.

mod common;

use std::path::Path;

use common::browser::Browser;
use common::server::{Client, Server, bare_repo_once, free_port};
use serde_json::{Value, json};

const APP: &str = r#"version: 1
name: shop
box: sentinel/busybox:local
defaults:
  network: none
stages:
  build:
    run: |
      echo "shop built at $(date +%s%N)" > "$SENTINEL_ARTIFACTS/shop.txt"
      echo "artifact=shop.txt" >> "$SENTINEL_OUTPUT"
"#;

const DEPLOYER: &str = r#"version: 1
name: deployer
box: sentinel/busybox:local
defaults:
  network: none
stages:
  deploy:
    env:
      WHAT: ${deploy.app} ${deploy.version}
    run: |
      echo "deploying $WHAT to $DEPLOY_ENVIRONMENT"
      cat deploy/outputs.json
      cat deploy/build/shop.txt
"#;

const GATED: &str = r#"version: 1
name: gated
box: sentinel/busybox:local
defaults:
  network: none
stages:
  build:
    run: |
      mkdir -p dist
      echo "v-$(date +%s%N)" > dist/version
      cat dist/version
  deploy:
    after: build
    approval: production
    env:
      BUILT: ${stages.build.output}
    run: |
      echo "deploying $BUILT"
      echo "found $(cat dist/version)"
  cleanup:
    when: always
    run: echo "cleaned up"
"#;

/// A server with the repositories `app`, `deployer` and `gated`, `staging`
/// (no approval) and `production` (approval).
fn start(tmp: &Path, flags: &[&str]) -> Server {
    let repo =
        |name: &str, pipeline: &str| bare_repo_once(&tmp.join(name), &[("sentinel.yml", pipeline)]);
    let (app, deployer) = (repo("app", APP), repo("deployer", DEPLOYER));
    let gated = repo("gated", GATED);
    let config = tmp.join("server.toml");
    std::fs::write(
        &config,
        format!(
            "[repos.app]\nurl = \"{app}\"\n[repos.gated]\nurl = \"{gated}\"\n[repos.deployer]\nurl = \"{deployer}\"\n[environments.staging]\nrepo = \"deployer\"\nref = \"main\"\n[environments.production]\nrepo = \"deployer\"\nref = \"main\"\napproval = true\napproval_timeout_hours = 2\n"
        ),
    )
    .unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut args = vec!["--config", config.to_str().unwrap(), "--listen", &listen];
    args.extend_from_slice(flags);
    Server::start(&tmp.join("state"), &args, &[])
}

/// A token of `scope`, made with the admin token.
async fn token(admin: &Client, name: &str, scope: &str) -> String {
    let (status, v) = admin
        .call(
            reqwest::Method::POST,
            "/api/v1/tokens",
            Some(json!({ "name": name, "scope": scope })),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    v["token"].as_str().unwrap().to_string()
}

async fn promote(c: &Client, run: &str, body: Value) -> (u16, Value) {
    c.call(
        reqwest::Method::POST,
        &format!("/api/v1/runs/{run}/promote"),
        Some(body),
    )
    .await
}

/// Runs `app` once; its id.
async fn build(c: &Client) -> String {
    let id = c.trigger("app").await;
    assert_eq!(c.wait_final(&id).await["run"]["status"], "succeeded");
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promotion_waits_for_approval_across_a_restart_and_rollbacks_are_explicit() {
    common::docker().await;
    let tmp = tempfile::tempdir().unwrap();
    let server = start(tmp.path(), &[]);
    let admin = Client::new(&server.url, &server.admin);
    let read = Client::new(&server.url, &token(&admin, "reader", "read").await);
    let trigger = Client::new(&server.url, &token(&admin, "ci", "trigger").await);
    let deployer = token(&admin, "release-manager", "deploy").await;
    let first = build(&trigger).await;
    let second = build(&trigger).await;

    // A read token may not promote.
    let (status, _) = promote(&read, &second, json!({ "to": "staging" })).await;
    assert_eq!(status, 403);
    // Staging: no approval; the run's files and outputs are in deploy/.
    let (status, v) = promote(&trigger, &second, json!({ "to": "staging" })).await;
    assert_eq!(status, 202, "{v}");
    assert_eq!(v["status"], "queued", "{v}");
    let run = v["run"].as_str().unwrap().to_string();
    let done = trigger.wait_final(&run).await;
    assert_eq!(done["run"]["status"], "succeeded", "{done}");
    let (_, log) = trigger
        .text(&format!("/api/v1/runs/{run}/stages/deploy/log"))
        .await;
    assert!(log.contains("deploying shop"), "{log}");
    assert!(log.contains(r#""artifact": "shop.txt""#), "{log}");
    assert!(log.contains("shop built at"), "{log}");

    // An older run: a rollback, refused unless asked for, then recorded.
    let (status, v) = promote(&trigger, &first, json!({ "to": "staging" })).await;
    assert_eq!(status, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("rollback"), "{v}");
    let (status, v) = promote(
        &trigger,
        &first,
        json!({ "to": "staging", "rollback": true }),
    )
    .await;
    assert_eq!(status, 202, "{v}");
    let rolled = v["deployment"].as_str().unwrap().to_string();
    let run = v["run"].as_str().unwrap().to_string();
    assert_eq!(trigger.wait_final(&run).await["run"]["status"], "succeeded");
    let d = trigger.get(&format!("/api/v1/deployments/{rolled}")).await;
    assert_eq!(d["source"]["rollback"], true, "{d}");
    assert_eq!(d["source"]["from_run"], first.as_str(), "{d}");

    // Production asks for an approval: the deploy waits, nothing runs.
    let runs_before = trigger.get("/api/v1/runs").await["runs"]
        .as_array()
        .unwrap()
        .len();
    let (status, v) = promote(&trigger, &second, json!({ "to": "production" })).await;
    assert_eq!(status, 202, "{v}");
    assert_eq!(v["status"], "waiting_approval", "{v}");
    assert!(v["run"].is_null(), "{v}");
    let waiting = v["deployment"].as_str().unwrap().to_string();
    let (status, _) = trigger
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/deployments/{waiting}/approve"),
            None,
        )
        .await;
    assert_eq!(status, 403, "a trigger token may not approve");

    // A restart: it still waits, holding no run.
    server.stop();
    let server = start(tmp.path(), &[]);
    let boss = Client::new(&server.url, &deployer);
    let d = boss.get(&format!("/api/v1/deployments/{waiting}")).await;
    assert_eq!(d["status"], "waiting_approval", "{d}");
    let runs = boss.get("/api/v1/runs").await;
    assert_eq!(
        runs["runs"].as_array().unwrap().len(),
        runs_before,
        "{runs}"
    );
    assert!(runs["queued"].as_array().unwrap().is_empty(), "{runs}");
    // The CLI approves it with a deploy token; its run goes.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sentinel"))
        .args([
            "approve",
            &waiting,
            "--server",
            &server.url,
            "--token",
            &deployer,
        ])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("approved: run"), "{said}");
    let d = boss.get(&format!("/api/v1/deployments/{waiting}")).await;
    let run = d["run"].as_str().unwrap().to_string();
    assert_eq!(boss.wait_final(&run).await["run"]["status"], "succeeded");
    let d = boss.get(&format!("/api/v1/deployments/{waiting}")).await;
    assert_eq!(d["status"], "succeeded", "{d}");
    assert_eq!(d["approval"]["by"], "token:release-manager", "{d}");
    assert_eq!(d["approval"]["approved"], true, "{d}");
    // Approved once: a second answer is a conflict.
    let (status, _) = boss
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/deployments/{waiting}/reject"),
            None,
        )
        .await;
    assert_eq!(status, 409);

    // Another one, rejected with a reason: nothing runs.
    let promoter = Client::new(&server.url, &trigger.token);
    let (_, v) = promote(&promoter, &second, json!({ "to": "production" })).await;
    let refused = v["deployment"].as_str().unwrap().to_string();
    let (status, v) = boss
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/deployments/{refused}/reject"),
            Some(json!({ "reason": "change freeze" })),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["status"], "rejected");
    assert_eq!(v["reason"], "change freeze");
    assert!(v["run"].is_null(), "{v}");

    // What is deployed where: production has the approved run's version.
    let d = boss.get("/api/v1/deployments?app=shop").await;
    let now: Vec<(&str, &str)> = d["current"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["environment"].as_str().unwrap(),
                x["source"]["from_run"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(now.contains(&("production", second.as_str())), "{d}");
    assert!(
        now.contains(&("staging", first.as_str())),
        "rolled back: {d}"
    );
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deployments_page_approves_a_waiting_deploy() {
    common::docker().await;
    let dist = common::browser::dist();
    let tmp = tempfile::tempdir().unwrap();
    let server = start(tmp.path(), &["--web", dist.to_str().unwrap()]);
    let admin = Client::new(&server.url, &server.admin);
    let deployer = token(&admin, "release-manager", "deploy").await;
    let run = build(&admin).await;
    let (status, v) = promote(&admin, &run, json!({ "to": "production" })).await;
    assert_eq!(status, 202, "{v}");
    let waiting = v["deployment"].as_str().unwrap().to_string();

    let b = Browser::start().await;
    b.client
        .goto(&format!("{}/#/deployments", server.url))
        .await
        .unwrap();
    b.find("#token").await.send_keys(&deployer).await.unwrap();
    b.click(".sign-in button").await;
    b.find(".sign-out").await;
    b.client
        .goto(&format!("{}/#/deployments", server.url))
        .await
        .unwrap();
    let row = format!(r#"tr[data-deployment="{waiting}"]"#);
    b.wait_attr(&row, "class", "deployment-row status-waiting_approval")
        .await;
    b.screenshot("web-deployment-waiting").await;
    b.click(&format!("{row} button.approve")).await;
    b.wait_attr(&row, "class", "deployment-row status-succeeded")
        .await;
    let current = r#".environment[data-environment="production"] tr[data-app="shop"] .version"#;
    let commit = admin.get(&format!("/api/v1/runs/{run}")).await["run"]["git"]["commit"]
        .as_str()
        .unwrap()[..12]
        .to_string();
    b.wait_text(current, |t| t == commit, "production's current version")
        .await;
    b.screenshot("web-deployments-production").await;
    let d = admin.get(&format!("/api/v1/deployments/{waiting}")).await;
    assert_eq!(d["approval"]["by"], "token:release-manager", "{d}");
    b.close().await;
    server.stop();
}

/// The gate deployment of run `run` (recorded a moment after the run
/// shows it paused).
async fn gate_of(c: &Client, run: &str) -> Value {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let d = c.get("/api/v1/deployments?app=gated").await;
        let found = d["deployments"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["source"]["run"] == run)
            .cloned();
        if let Some(found) = found {
            return found;
        }
        assert!(
            std::time::Instant::now() < until,
            "no deployment of run {run}'s gate: {d}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Run `run` once it has paused at its gate.
async fn wait_paused(c: &Client, run: &str) -> Value {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let v = c.get(&format!("/api/v1/runs/{run}")).await;
        if v["run"]["status"] == "waiting_approval" {
            return v;
        }
        assert!(std::time::Instant::now() < until, "never paused: {v}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Run `run` once it has ended, or the server's log.
async fn ended(server: &Server, c: &Client, run: &str) -> Value {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let v = c.get(&format!("/api/v1/runs/{run}")).await;
        let s = v["run"]["status"].as_str().unwrap_or_default();
        if !matches!(s, "queued" | "running" | "waiting_approval") {
            return v;
        }
        assert!(
            std::time::Instant::now() < until,
            "run {run} did not end: {v}\n{}",
            server.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A deployment as it is now.
async fn deployment(c: &Client, d: &Value) -> Value {
    c.get(&format!(
        "/api/v1/deployments/{}",
        d["id"].as_str().unwrap()
    ))
    .await
}

async fn answer(c: &Client, deployment: &Value, what: &str, body: Option<Value>) -> (u16, Value) {
    let id = deployment["id"].as_str().unwrap();
    c.call(
        reqwest::Method::POST,
        &format!("/api/v1/deployments/{id}/{what}"),
        body,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_gate_pauses_its_run_across_a_kill_and_the_same_run_goes_on() {
    common::docker().await;
    let tmp = tempfile::tempdir().unwrap();
    let server = start(tmp.path(), &[]);
    let admin = Client::new(&server.url, &server.admin);
    let trigger = Client::new(&server.url, &token(&admin, "ci", "trigger").await);
    let deployer = token(&admin, "release-manager", "deploy").await;

    let run = trigger.trigger("gated").await;
    let paused = wait_paused(&trigger, &run).await;
    assert_eq!(paused["run"]["status"], "waiting_approval", "{paused}");
    let built_at = paused["run"]["stages"][0]["started"].clone();
    let (_, build_log) = trigger
        .text(&format!("/api/v1/runs/{run}/stages/build/log"))
        .await;
    let version = build_log.trim().to_string();
    assert!(version.starts_with("v-"), "{build_log}");
    // Holding nothing: no container, not in the queue.
    assert!(common::leftovers(Some(&run)).await.is_empty());
    let runs = trigger.get("/api/v1/runs").await;
    assert!(runs["queued"].as_array().unwrap().is_empty(), "{runs}");
    let gate = gate_of(&trigger, &run).await;
    assert_eq!(gate["status"], "waiting_approval", "{gate}");
    assert_eq!(gate["source"]["kind"], "pipeline", "{gate}");
    assert_eq!(gate["source"]["stage"], "deploy", "{gate}");
    assert_eq!(gate["environment"], "production", "{gate}");
    let (status, _) = answer(&trigger, &gate, "approve", None).await;
    assert_eq!(status, 403, "a trigger token may not approve");

    // kill -9, then a new server: the run still waits, not interrupted.
    drop(server);
    let server = start(tmp.path(), &[]);
    let boss = Client::new(&server.url, &deployer);
    let trigger = Client::new(&server.url, &trigger.token);
    let v = boss.get(&format!("/api/v1/runs/{run}")).await;
    assert_eq!(v["run"]["status"], "waiting_approval", "{v}");
    let (status, v) = answer(&boss, &gate, "approve", None).await;
    assert_eq!(status, 200, "{v}");

    // The same run goes on: `build` kept, its files and output back.
    let done = ended(&server, &boss, &run).await;
    assert_eq!(done["run"]["status"], "succeeded", "{done}");
    assert_eq!(done["run"]["stages"][0]["started"], built_at, "{done}");
    let (_, log) = boss
        .text(&format!("/api/v1/runs/{run}/stages/deploy/log"))
        .await;
    assert!(log.contains(&format!("deploying {version}")), "{log}");
    assert!(log.contains(&format!("found {version}")), "{log}");
    let deploy = done["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "deploy")
        .unwrap();
    let by = &deploy["approval"]["answer"]["by"];
    assert_eq!(by, "token:release-manager", "{deploy}");
    let gate_now = deployment(&boss, &gate).await;
    assert_eq!(gate_now["status"], "succeeded", "{gate_now}");

    // Rejected: the gate's stage fails, the `always` stage still runs.
    let refused = trigger.trigger("gated").await;
    wait_paused(&trigger, &refused).await;
    let gate = gate_of(&trigger, &refused).await;
    let (status, v) = answer(
        &boss,
        &gate,
        "reject",
        Some(json!({ "reason": "change freeze" })),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let done = ended(&server, &boss, &refused).await;
    assert_eq!(done["run"]["status"], "failed", "{done}");
    let reason = done["run"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("change freeze"), "{reason}");
    trigger.wait_stage(&refused, "cleanup", "succeeded").await;

    // Cancelled while it waits: it ends cancelled, after its `always` stage.
    let cancelled = trigger.trigger("gated").await;
    wait_paused(&trigger, &cancelled).await;
    let (status, v) = trigger
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/runs/{cancelled}/cancel"),
            None,
        )
        .await;
    assert_eq!(status, 202, "{v}");
    let done = ended(&server, &boss, &cancelled).await;
    assert_eq!(done["run"]["status"], "cancelled", "{done}");
    trigger.wait_stage(&cancelled, "cleanup", "succeeded").await;
    let gate = deployment(&boss, &gate_of(&boss, &cancelled).await).await;
    assert_eq!(gate["status"], "cancelled", "{gate}");
    server.stop();
}
