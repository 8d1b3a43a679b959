//! `sentinel serve` end to end, as a real process over a real socket, with
//! a real Docker engine and a git repository reached by a `file://` URL:
//! a token made through the running server's admin API; a trigger through
//! the API; a container stage's log streamed over SSE while it runs; the
//! results served under `/results/`; a signed push webhook running the
//! pushed commit with its git context; a secret set through the server and
//! masked; a re-run from the failed stage that keeps the earlier results;
//! cancel; metrics and badge.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::server::{Client, Server, bare_repo, free_port};
use serde_json::{Value, json};

const PIPELINE: &str = r#"version: 1
name: served
box: sentinel/busybox:local
defaults:
  network: none
secrets: [GATE]
stages:
  build:
    run: |
      echo "commit=$SENTINEL_COMMIT branch=$SENTINEL_BRANCH repo=$SENTINEL_REPO"
      echo "built at $(date +%s%N)"
      date +%s%N > built.txt
  key:
    sensitive: true
    run: echo "key-$(date +%s%N)"
  slow:
    after: [build]
    run: |
      for i in 1 2 3 4 5 6 7 8; do echo "tick $i"; sleep 0.4; done
  gate:
    after: [slow]
    env:
      GATE: ${secrets.GATE}
      K: ${stages.key.output}
    run: |
      echo "gate is $GATE"
      echo "inputs: key $(echo "$K" | md5sum | cut -c1-12) built $(cat built.txt)"
      test "$GATE" = open-sesame-value
"#;

const LONG: &str = r#"version: 1
name: long
box: sentinel/busybox:local
defaults:
  network: none
stages:
  wait:
    run: sleep 120
"#;

const HOOK_SECRET: &str = "hook-secret-for-tests";
const KEY: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";

fn sentinel(state: &Path, args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write as _;
    let mut child = Command::new(env!("CARGO_BIN_EXE_sentinel"))
        .arg("--state")
        .arg(state)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "sentinel {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn stage<'a>(run: &'a Value, name: &str) -> &'a Value {
    run["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no stage {name} in {run}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_end_to_end() {
    common::docker().await;
    let tmp = tempfile::tempdir().unwrap();
    let (app_url, commit) = bare_repo(&tmp.path().join("app"), &[("sentinel.yml", PIPELINE)]);
    let (long_url, _) = bare_repo(&tmp.path().join("long"), &[("sentinel.yml", LONG)]);
    let state = tmp.path().join("state");
    let port = free_port().to_string();
    let config = tmp.path().join("server.toml");
    std::fs::write(
        &config,
        format!(
            "runs = 2\njobs = 2\n[repos.app]\nurl = \"{app_url}\"\ngithub = \"octo/app\"\n[repos.long]\nurl = \"{long_url}\"\n"
        ),
    )
    .unwrap();
    let server = Server::start(
        &state,
        &[
            "--config",
            config.to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{port}"),
        ],
        &[
            ("SENTINEL_SECRETS_KEY", KEY),
            ("SENTINEL_GITHUB_WEBHOOK_SECRET", HOOK_SECRET),
        ],
    );

    // A token through the running server's admin API (it holds the database).
    let token = sentinel(
        &state,
        &["token", "create", "--name", "t", "--scope", "admin"],
        None,
    );
    assert!(token.starts_with("sentinel_"), "{token}");
    let listed = sentinel(&state, &["token", "list"], None);
    assert!(
        listed.contains(" t") && !listed.contains(&token),
        "{listed}"
    );
    let c = Client::new(&server.url, &token);
    // A secret through the server: stored encrypted, value from stdin.
    sentinel(
        &state,
        &["secret", "set", "GATE"],
        Some("closed-door-value\n"),
    );
    assert_eq!(sentinel(&state, &["secret", "list"], None), "GATE");

    // Trigger, and follow the slow container stage's log over SSE.
    let id = c.trigger("app").await;
    c.wait_stage(&id, "slow", "running").await;
    let mut res = c
        .http
        .get(format!("{}/api/v1/runs/{id}/stages/slow/log/stream", c.url))
        .bearer_auth(&c.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let mut seen = String::new();
    let mut lines_while_running = 0;
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(30), res.chunk())
        .await
        .expect("the stream stalled")
        .unwrap()
    {
        seen.push_str(&String::from_utf8_lossy(&chunk));
        if seen.contains("event: log") && lines_while_running == 0 {
            // A line arrived: the stage is still running now.
            let v = c.get(&format!("/api/v1/runs/{id}")).await;
            if stage(&v["run"], "slow")["status"] == "running" {
                lines_while_running = seen.matches("tick").count();
            }
        }
        if seen.contains("event: end") {
            break;
        }
    }
    assert!(
        lines_while_running >= 1,
        "log lines arrived while the stage ran: {seen}"
    );
    assert!(
        seen.contains("tick 8") && seen.contains(r#""status":"succeeded""#),
        "{seen}"
    );

    // The run fails at the gate (the secret is wrong), masked in its log.
    let v = c.wait_final(&id).await;
    assert_eq!(v["run"]["status"], "failed", "{v}");
    assert_eq!(v["run"]["git"]["commit"], commit.as_str());
    let (_, gate_log) = c.text(&format!("/api/v1/runs/{id}/stages/gate/log")).await;
    assert!(
        gate_log.contains("gate is ***") && !gate_log.contains("closed-door"),
        "{gate_log}"
    );
    let inputs = |log: &str| {
        log.lines()
            .find(|l| l.starts_with("inputs:"))
            .unwrap_or_default()
            .to_string()
    };
    let first_inputs = inputs(&gate_log);
    assert!(first_inputs.contains(" built 1"), "{gate_log}");
    let (_, build_log) = c.text(&format!("/api/v1/runs/{id}/stages/build/log")).await;
    assert!(
        build_log.contains(&format!("commit={commit} branch=main repo={app_url}")),
        "{build_log}"
    );
    // The results folder is served read-only.
    let run_json = c.get(&format!("/results/run/{id}/run.json")).await;
    assert_eq!(run_json["id"], id.as_str());
    // Never kept by a browser's cache: it changes while a run goes.
    let res = c
        .http
        .get(format!("{}/results/run/{id}/run.json", c.url))
        .bearer_auth(&c.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["cache-control"], "no-store");
    let (status, _) = c
        .call(
            reqwest::Method::PUT,
            &format!("/results/run/{id}/run.json"),
            Some(json!({})),
        )
        .await;
    assert!(status == 405 || status == 404, "{status}");

    // The right secret, then a re-run from the failed stage: build and slow are kept.
    sentinel(
        &state,
        &["secret", "set", "GATE"],
        Some("open-sesame-value\n"),
    );
    let (status, v) = c
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/runs/{id}/rerun"),
            Some(json!({ "from": "gate" })),
        )
        .await;
    assert_eq!(status, 202, "{v}");
    let again = v["id"].as_str().unwrap().to_string();
    let v = c.wait_final(&again).await;
    assert_eq!(v["run"]["status"], "succeeded", "{v}");
    let docs = v["stages"].as_array().unwrap();
    let doc = |n: &str| docs.iter().find(|d| d["name"] == n).unwrap().clone();
    assert_eq!(
        doc("build")["reason"],
        format!("reused from run {id}"),
        "{}",
        doc("build")
    );
    assert_eq!(doc("slow")["reason"], format!("reused from run {id}"));
    assert_eq!(doc("key")["reason"], format!("reused from run {id}"));
    assert!(doc("gate")["reason"].is_null(), "gate ran again");
    let (_, gate_log) = c
        .text(&format!("/api/v1/runs/{again}/stages/gate/log"))
        .await;
    assert!(
        gate_log.contains("gate is ***") && !gate_log.contains("open-sesame"),
        "{gate_log}"
    );
    // It saw exactly the first run's inputs: the sensitive output as it was
    // (not a masked one) and the file the reused build made.
    assert_eq!(inputs(&gate_log), first_inputs, "{gate_log}");
    // A stage that succeeded is not a place to re-run from.
    let (status, _) = c
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/runs/{again}/rerun"),
            Some(json!({ "from": "build" })),
        )
        .await;
    assert_eq!(status, 400);

    // A trigger may say which stored secret serves a name; a run it cannot
    // start fails with the reason (its checkout removed, checked below).
    let failed_reason = |stored: &'static str| {
        let c = &c;
        async move {
            let (status, v) = c
                .call(
                    reqwest::Method::POST,
                    "/api/v1/runs",
                    Some(json!({ "repo": "app", "ref": "main", "secrets": { "GATE": stored } })),
                )
                .await;
            assert_eq!(status, 202, "{v}");
            let v = c.wait_final(v["id"].as_str().unwrap()).await;
            assert_eq!(v["run"]["status"], "failed", "{v}");
            v["run"]["reason"].as_str().unwrap_or_default().to_string()
        }
    };
    // Not stored: refused before the checkout, naming it.
    let reason = failed_reason("PROD_GATE").await;
    assert!(reason.contains("secret `PROD_GATE` is not set"), "{reason}");
    // Too short to be masked: refused by the engine after the checkout.
    sentinel(&state, &["secret", "set", "SHORT"], Some("abc\n"));
    let reason = failed_reason("SHORT").await;
    assert!(reason.contains("masked reliably"), "{reason}");

    // A signed push webhook runs the pushed commit on its branch.
    let body = json!({
        "ref": "refs/heads/main",
        "after": commit,
        "repository": { "full_name": "octo/app", "clone_url": "https://github.com/octo/app.git" }
    })
    .to_string();
    let res = c
        .http
        .post(format!("{}/hooks/github", c.url))
        .header("x-github-event", "push")
        .header("x-github-delivery", "delivery-1")
        .header(
            "x-hub-signature-256",
            sentinel_server::github_signature(HOOK_SECRET.as_bytes(), body.as_bytes()),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let hooked: Value = res.json().await.unwrap();
    let hooked = hooked["id"].as_str().unwrap().to_string();
    let v = c.wait_final(&hooked).await;
    assert_eq!(v["run"]["status"], "succeeded", "{v}");
    assert_eq!(v["run"]["trigger"]["kind"], "webhook");
    let (_, log) = c
        .text(&format!("/api/v1/runs/{hooked}/stages/build/log"))
        .await;
    assert!(
        log.contains(&format!("commit={commit} branch=main")),
        "{log}"
    );

    // Cancel: a waiting-then-running long run stops.
    let long = c.trigger("long").await;
    c.wait_stage(&long, "wait", "running").await;
    let (status, v) = c
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/runs/{long}/cancel"),
            None,
        )
        .await;
    assert_eq!(status, 202, "{v}");
    let v = c.wait_final(&long).await;
    assert_eq!(v["run"]["status"], "cancelled", "{v}");
    let (status, _) = c
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/runs/{long}/cancel"),
            None,
        )
        .await;
    assert_eq!(status, 409, "an ended run cannot be cancelled");

    // The list: every run stored, none waiting.
    let list = c.get("/api/v1/runs").await;
    assert_eq!(list["runs"].as_array().unwrap().len(), 6, "{list}");
    assert_eq!(list["queued"], json!([]), "{list}");
    // No checkout is left, not even of the run that never started.
    let checkouts = state.join("checkouts");
    let left = || {
        std::fs::read_dir(&checkouts)
            .map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while !left().is_empty() {
        assert!(
            std::time::Instant::now() < until,
            "checkouts left: {:?}",
            left()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Metrics and the badge.
    let (status, metrics) = c.text("/metrics").await;
    assert_eq!(status, 200);
    for needle in [
        "sentinel_runs{status=\"succeeded\"} 2",
        "sentinel_runs{status=\"failed\"} 3",
        "sentinel_runs{status=\"cancelled\"} 1",
        "sentinel_queue_depth 0",
        "sentinel_stage_duration_seconds_count{status=\"succeeded\"}",
        "sentinel_step_start_latency_seconds_count 4",
        "sentinel_outbox_depth 0",
    ] {
        assert!(metrics.contains(needle), "{needle} not in\n{metrics}");
    }
    let badge = reqwest::get(format!("{}/badge/served.svg", c.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(badge.contains("succeeded"), "{badge}");
    // Network namespaces kept ready (2 × jobs) while idle, removed at the stop.
    let pid = server.child.id();
    let holders = || {
        let out = Command::new("docker")
            .args([
                "ps",
                "-a",
                "--filter",
                "label=dev.sentinel.kind=netns",
                "--format",
                "{{.Label \"dev.sentinel.owner\"}}",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|o| o.rsplit(':').nth(1) == Some(&pid.to_string()))
            .count()
    };
    let until = std::time::Instant::now() + Duration::from_secs(20);
    while holders() != 4 {
        assert!(
            std::time::Instant::now() < until,
            "the idle server keeps 4 namespaces ready: {}",
            holders()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.stop();
    assert_eq!(
        holders(),
        0,
        "the server's stop removes its namespace holders"
    );
    // A clean stop revokes the local admin token and removes its file.
    assert!(!state.join("server.json").exists());
}
