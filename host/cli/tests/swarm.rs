//! The Swarm executor on real swarms. `swarm_suite` runs the container
//! behaviour suite (the cases of `tests/docker.rs`, the same code) and the
//! Swarm-only cases against this machine's one-node swarm
//! (`scripts/swarm.sh`), then checks that no container, service, secret,
//! network or volume with the project's labels remains. `two_nodes` builds
//! a swarm of two Docker daemons of the test's own, each in a network
//! namespace joined to the other by a veth pair, and places a stage on the
//! worker. `kill_9` kills a server mid-run and restarts it.

mod cases;
mod common;
mod swarm_nodes;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cases::*;
use common::server::{Client, Server, bare_repo, free_port};
use common::{Case, Opts, Project, leftovers, pipeline, run};
use sentinel_api::{RunStatus, StageStatus};

/// No secret value in any `docker service inspect` or `docker inspect`
/// output while the stage that holds it runs (read while it runs).
async fn no_secret_in_any_inspect_while_the_stage_runs() -> Result<(), String> {
    let secret = "sk-swarm-4711-secret-value";
    let marker = format!("swarm-probe-{}", std::process::id());
    let p = Project::new(&format!(
        "version: 1\nbox: {}\nsecrets: [API_KEY]\ndefaults: {{network: none, timeout: 60s}}\nstages:\n  hold:\n    env: {{KEY: '${{secrets.API_KEY}}', MARKER: {marker}}}\n    run: 'echo \"$KEY\" | base64; sleep 6; echo done'\n",
        common::IMAGE
    ));
    let opts = Opts {
        secrets: BTreeMap::from([("API_KEY".to_string(), secret.to_string())]),
        ..Default::default()
    };
    let watch = tokio::spawn({
        let marker = marker.clone();
        async move {
            let sh = |cmd: &str| {
                let out = std::process::Command::new("sh")
                    .args(["-c", cmd])
                    .output()
                    .expect("sh");
                String::from_utf8_lossy(&out.stdout).into_owned()
            };
            let (mut seen_service, mut seen_container) = (false, false);
            let until = Instant::now() + Duration::from_secs(60);
            while Instant::now() < until && !(seen_service && seen_container) {
                let services = sh("docker service ls -q | xargs -r docker service inspect");
                let containers = sh("docker ps -aq | xargs -r docker inspect");
                if services.contains(secret) || containers.contains(secret) {
                    return Err("the secret is in an inspect output".to_string());
                }
                seen_service |= services.contains(&marker);
                seen_container |= containers.contains(&marker);
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            if seen_service && seen_container {
                Ok(())
            } else {
                Err(format!(
                    "the stage was never seen running (service {seen_service}, container {seen_container})"
                ))
            }
        }
    });
    let r = run(&p, opts).await;
    let seen = watch.await.map_err(|e| e.to_string())?;
    ensure!(
        r.status == RunStatus::Succeeded,
        "run {:?} {:?}",
        r.status,
        r.reason
    );
    seen?;
    let log = p.log(&r, "hold");
    ensure!(
        !log.contains(secret) && log.contains("done"),
        "the log holds the value or is cut: {log}"
    );
    Ok(())
}

/// Placement: a constraint this node meets runs here (`SENTINEL_NODE` is
/// the node's name); one no node meets fails at once, saying so.
async fn placement_met_and_unmet() -> Result<(), String> {
    let p = Project::new(&pipeline(
        "  here: {placement: ['node.role == manager'], run: 'echo \"on $SENTINEL_NODE\"'}\n  nowhere: {placement: ['node.labels.sentinel-test == nowhere'], run: 'true'}\n",
    ));
    let t = Instant::now();
    let r = run(&p, Opts::default()).await;
    let here = p.stage(&r, "here").await;
    let host = std::process::Command::new("docker")
        .args(["info", "--format", "{{.Name}}"])
        .output()
        .map_err(|e| e.to_string())?;
    let host = String::from_utf8_lossy(&host.stdout).trim().to_string();
    ensure!(
        here.status == StageStatus::Succeeded
            && here.output.as_deref() == Some(format!("on {host}").as_str()),
        "here: {:?} {:?} {:?}",
        here.status,
        here.output,
        here.reason
    );
    let nowhere = p.stage(&r, "nowhere").await;
    let reason = nowhere.reason.unwrap_or_default();
    ensure!(
        nowhere.status == StageStatus::Failed
            && reason.contains(
                "no node of the swarm meets the placement `node.labels.sentinel-test == nowhere`"
            ),
        "nowhere: {:?} {reason}",
        nowhere.status
    );
    ensure!(
        t.elapsed() < Duration::from_secs(40),
        "took {:?}",
        t.elapsed()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn swarm_suite() {
    let _one = ONE_AT_A_TIME.lock().await;
    common::use_swarm();
    common::docker().await;
    common::swarm().await;
    let cases: Vec<(&str, Case)> = cases![
        exit_codes_and_skips,
        outputs_env_and_workspace,
        secrets_masked_in_env_and_log,
        artifacts_zipped,
        oom_is_named,
        timeout_is_named,
        cancel_still_runs_always,
        service_reached_by_name,
        service_never_ready_fails_the_run,
        sensitive_value_in_no_file,
        missing_image_says_so,
        log_limit_keeps_head_and_tail,
        hardened_container,
        no_secret_in_any_inspect_while_the_stage_runs,
        placement_met_and_unmet,
    ];
    common::run_suite("Swarm", cases).await;
}

/// The runs of one test at a time on this machine's swarm: the suite's
/// final check counts every object with the project's labels.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const KEY: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";

const LONG: &str = r#"version: 1
name: swarm-crash
box: sentinel/busybox:local
secrets: [TOKEN]
services:
  api:
    command: sleep 600
stages:
  long:
    env: {T: '${secrets.TOKEN}'}
    run: echo waiting; sleep 120
"#;

/// `kill -9` of a server running a stage on the swarm, then a restart: the
/// run ends `interrupted` and nothing of it remains on the swarm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_run_leaves_nothing_on_the_swarm() {
    let _one = ONE_AT_A_TIME.lock().await;
    common::use_swarm();
    common::swarm().await;
    let tmp = tempfile::tempdir().unwrap();
    let (url, _) = bare_repo(&tmp.path().join("repo"), &[("sentinel.yml", LONG)]);
    let state = tmp.path().join("state");
    let listen = format!("127.0.0.1:{}", free_port());
    let repo = format!("app={url}");
    let args = [
        "--listen",
        listen.as_str(),
        "--repo",
        repo.as_str(),
        "--max-attempts",
        "1",
        "--executor",
        "swarm",
    ];
    let env = [("SENTINEL_SECRETS_KEY", KEY)];
    let server = Server::start(&state, &args, &env);
    let client = Client::new(&server.url, &server.admin);
    client.set_secret("TOKEN", "tok-kill-9-secret").await;
    let id = client.trigger("app").await;
    client.wait_stage(&id, "long", "running").await;
    // Its services, secrets, networks and volumes are there.
    let until = Instant::now() + Duration::from_secs(30);
    while leftovers(Some(&id)).await.len() < 6 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let before = leftovers(Some(&id)).await;
    assert!(
        before.len() >= 6,
        "the run's objects should be there: {before:?}"
    );
    drop(server); // SIGKILL
    let server = Server::start(&state, &args, &env);
    let client = Client::new(&server.url, &server.admin);
    let v = client.wait_final(&id).await;
    assert_eq!(v["run"]["status"], "interrupted", "{v}");
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let left = leftovers(Some(&id)).await;
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < until,
            "objects of the killed run remain after the restart: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.stop();
}

/// Two nodes of the test's own: a stage constrained to the worker runs
/// there (its task's node), gets the run's workspace, and its outputs and
/// artifacts reach the results; the next stage, on the manager, sees the
/// files it wrote. Nothing is left on either node.
#[test]
fn two_nodes() {
    swarm_nodes::two_nodes();
}
