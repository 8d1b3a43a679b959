//! Crash safety of `sentinel serve`: 20 rounds of `kill -9` at a random
//! moment while 20 runs (container stages) are being triggered and run,
//! restarting the server each time. Afterwards every run whose trigger got
//! a 2xx exists and ended in exactly one final state (one run-level final
//! event), no run is `running` without a live lease (no lease is left at
//! all), nothing waits in the queue, and no container or network of these
//! runs is left behind. And a state folder whose disk runs short (a small
//! tmpfs): new runs are refused with 503 saying why, the run going ends as
//! it would have, and runs are accepted again once space returns.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::server::{Client, Server, bare_repo, free_port};
use sentinel_engine::ports::{RunQueue, Store};

const PIPELINE: &str = r#"version: 1
name: crashy
box: sentinel/busybox:local
defaults:
  network: none
stages:
  first:
    run: echo one; sleep 0.3
  second:
    after: [first]
    run: echo two
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_accepted_run_and_leaves_nothing_behind() {
    common::docker().await;
    let seed = std::env::var("SENTINEL_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    println!("seed {seed} (SENTINEL_CRASH_SEED={seed} replays it)");
    let mut rng = common::Rng(seed);
    let tmp = tempfile::tempdir().unwrap();
    let (url, _) = bare_repo(&tmp.path().join("repo"), &[("sentinel.yml", PIPELINE)]);
    let state = tmp.path().join("state");
    // A trigger token, made in the database before any server runs.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sentinel"))
        .arg("--state")
        .arg(&state)
        .args(["token", "create", "--name", "crash", "--scope", "trigger"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let listen = format!("127.0.0.1:{}", free_port());
    let repo = format!("app={url}");
    let args = [
        "--listen",
        listen.as_str(),
        "--repo",
        repo.as_str(),
        "--runs",
        "3",
        "--max-attempts",
        "3",
    ];
    let base = format!("http://{listen}");

    // 20 triggers, retried while the server is down; each 2xx is kept.
    let accepted: Arc<Mutex<Vec<String>>> = Arc::default();
    let triggers = {
        let (accepted, base, token) = (accepted.clone(), base.clone(), token.clone());
        let mut gaps: Vec<u64> = (0..20).map(|_| rng.below(2000)).collect();
        tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            for gap in gaps.drain(..) {
                loop {
                    let res = http
                        .post(format!("{base}/api/v1/runs"))
                        .bearer_auth(&token)
                        .json(&serde_json::json!({ "repo": "app", "ref": "main" }))
                        .send()
                        .await;
                    if let Ok(r) = res
                        && r.status().is_success()
                        && let Ok(v) = r.json::<serde_json::Value>().await
                    {
                        accepted
                            .lock()
                            .unwrap()
                            .push(v["id"].as_str().unwrap().to_string());
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                tokio::time::sleep(Duration::from_millis(gap)).await;
            }
        })
    };

    for round in 0..20 {
        let mut server = Server::start(&state, &args, &[]);
        tokio::time::sleep(Duration::from_millis(100 + rng.below(2900))).await;
        server.child.kill().unwrap(); // SIGKILL
        server.child.wait().unwrap();
        let log = server.log();
        assert!(
            !log.contains("panicked"),
            "round {round}: the server panicked:\n{log}"
        );
    }

    // The last start: everything accepted ends.
    let server = Server::start(&state, &args, &[]);
    tokio::time::timeout(Duration::from_secs(120), triggers)
        .await
        .expect("the triggers did not get through")
        .unwrap();
    let accepted: Vec<String> = accepted.lock().unwrap().clone();
    assert_eq!(accepted.len(), 20);
    let c = Client::new(&base, &token);
    let mut statuses = BTreeMap::new();
    for id in &accepted {
        let status = c.status(id).await;
        assert_ne!(status, "missing", "accepted run {id} is gone");
        let v = c.wait_final(id).await;
        statuses.insert(id.clone(), v["run"]["status"].as_str().unwrap().to_string());
    }
    // Let the retries (new attempts of interrupted runs) end too.
    let until = Instant::now() + Duration::from_secs(240);
    loop {
        let v = c.get("/api/v1/runs?limit=500").await;
        let going = v["runs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| matches!(r["status"].as_str(), Some("queued" | "running")))
            .count();
        if going == 0 {
            break;
        }
        assert!(Instant::now() < until, "{going} run(s) never ended");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // After twenty kills, the server still runs a run through.
    let last = c.trigger("app").await;
    let v = c.wait_final(&last).await;
    assert_eq!(
        v["run"]["status"], "succeeded",
        "the run after the kills: {v}"
    );
    server.stop();
    println!("accepted runs: {statuses:?}");

    // The database, read directly once the server is gone.
    let db = sentinel_store::SledStore::try_open(&state).unwrap();
    assert!(db.leases().await.unwrap().is_empty(), "a lease is left");
    let abandoned = db
        .take_abandoned(chrono::Utc::now() + chrono::Duration::days(1), &|_| true)
        .await
        .unwrap();
    assert!(
        abandoned.is_empty(),
        "runs left in the queue: {abandoned:?}"
    );
    assert_eq!(RunQueue::waiting(&db).await.unwrap(), 0);
    let runs = db.list_runs(1000).await.unwrap();
    let ids: BTreeSet<String> = runs.iter().map(|r| r.id.to_string()).collect();
    assert_eq!(ids.len(), runs.len(), "no run is stored twice");
    for id in &accepted {
        assert!(ids.contains(id), "accepted run {id} has no document");
    }
    for run in &runs {
        assert!(run.status.is_final(), "run {} is {}", run.id, run.status);
        let events = db.get_events(&run.id).await.unwrap();
        let finals = events
            .iter()
            .filter(|e| e.stage.is_none())
            .filter(|e| {
                matches!(
                    e.status.as_str(),
                    "succeeded" | "failed" | "cancelled" | "interrupted"
                )
            })
            .count();
        assert_eq!(
            finals, 1,
            "run {} ended {finals} times: {events:#?}",
            run.id
        );
        let left = common::leftovers(Some(run.id.as_str())).await;
        assert!(left.is_empty(), "run {} left {left:?}", run.id);
    }
    let succeeded = runs
        .iter()
        .filter(|r| r.status == sentinel_api::RunStatus::Succeeded)
        .count();
    println!(
        "{} runs stored ({} accepted), {succeeded} succeeded",
        runs.len(),
        accepted.len()
    );
}

/// A small tmpfs for a state folder, unmounted when dropped.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(at: &std::path::Path, mib: u64) -> Self {
        std::fs::create_dir_all(at).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(at)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "this test mounts a {mib} MiB tmpfs for the state folder and needs root (or CAP_SYS_ADMIN): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(at.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// The state folder's disk runs short of `min_free_mib` while a run goes:
/// a trigger is refused with 503 saying why (the server stays healthy),
/// the run going ends as it would have, and once space returns a new
/// trigger is accepted and runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_disk_refuses_new_runs_and_loses_none() {
    common::docker().await;
    let tmp = tempfile::tempdir().unwrap();
    let pipeline = "version: 1\nbox: sentinel/busybox:local\ndefaults: {network: none}\nstages:\n  work:\n    run: sleep 2; echo finished\n";
    let (url, _) = bare_repo(&tmp.path().join("repo"), &[("sentinel.yml", pipeline)]);
    let disk = tmp.path().join("disk");
    let _mounted = SmallDisk::mount(&disk, 128);
    let state = disk.join("state");
    let config = tmp.path().join("server.toml");
    std::fs::write(
        &config,
        format!("min_free_mib = 48\n[repos.app]\nurl = \"{url}\"\n"),
    )
    .unwrap();
    let server = Server::start(
        &state,
        &[
            "--config",
            config.to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
        ],
        &[],
    );
    let c = Client::new(&server.url, &server.admin);
    let going = c.trigger("app").await;
    c.wait_stage(&going, "work", "running").await;

    // Fill the disk to 24 MiB short of the reserve.
    let free = || {
        let out = std::process::Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(&disk)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse::<u64>().ok())
            .unwrap()
    };
    let filler = disk.join("filler");
    let fill = free().saturating_sub(24 << 20);
    std::fs::write(&filler, vec![7u8; fill as usize]).unwrap();
    let (status, body) = c
        .call(
            reqwest::Method::POST,
            "/api/v1/runs",
            Some(serde_json::json!({"repo": "app", "ref": "main"})),
        )
        .await;
    assert_eq!(status, 503, "{body}");
    let why = body["error"]["message"]
        .as_str()
        .or(body["message"].as_str())
        .unwrap_or_default()
        .to_string();
    assert!(
        body.to_string().contains("reserve") && body.to_string().contains("free"),
        "the refusal says why: {body} {why}"
    );
    let (status, _) = c.call(reqwest::Method::GET, "/health", None).await;
    assert_eq!(status, 200, "still healthy");

    // The run going was accepted: it ends as it would have.
    let ended = c.wait_final(&going).await;
    assert_eq!(ended["run"]["status"], "succeeded", "{ended}");

    // Space returns: runs are accepted and run again.
    std::fs::remove_file(&filler).unwrap();
    let next = c.trigger("app").await;
    let ended = c.wait_final(&next).await;
    assert_eq!(ended["run"]["status"], "succeeded", "{ended}");
    assert!(
        server.log().contains("new runs are refused"),
        "the server's log says it too: {}",
        server.log()
    );
    server.stop();
}

/// A Docker daemon of the test's own (its own data root, exec root,
/// socket and bridge, no iptables): stopped, and its folders and bridge
/// removed, when dropped. The shared daemon is never touched — not even its
/// `docker0`, which a daemon started with `--bridge=none` deletes.
struct BridgedDaemon {
    daemon: common::daemon::OwnDaemon,
    bridge: String,
}

impl BridgedDaemon {
    fn start(dir: &std::path::Path) -> Self {
        let bridge = format!("sntl{}", std::process::id() % 100_000);
        let ip = |args: &[&str]| {
            std::process::Command::new("ip")
                .args(args)
                .output()
                .expect("ip (iproute2)")
        };
        let _ = ip(&["link", "del", &bridge]);
        for args in [
            vec!["link", "add", &bridge, "type", "bridge"],
            vec!["addr", "add", "10.213.0.1/24", "dev", &bridge],
            vec!["link", "set", &bridge, "up"],
        ] {
            let out = ip(&args);
            assert!(
                out.status.success(),
                "ip {args:?} (this test makes a bridge for its own Docker daemon and needs root): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let args: Vec<String> = [
            format!("--bridge={bridge}"),
            "--iptables=false".into(),
            "--ip-masq=false".into(),
            "--ip-forward=false".into(),
        ]
        .into();
        let mut daemon = common::daemon::OwnDaemon::new(dir, &[], &args);
        daemon.up();
        // The stage image, from the shared daemon (nothing can be pulled).
        daemon.load(&[common::IMAGE]);
        Self { daemon, bridge }
    }
}

impl std::ops::Deref for BridgedDaemon {
    type Target = common::daemon::OwnDaemon;
    fn deref(&self) -> &Self::Target {
        &self.daemon
    }
}

impl std::ops::DerefMut for BridgedDaemon {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.daemon
    }
}

impl Drop for BridgedDaemon {
    fn drop(&mut self) {
        self.daemon.down();
        let _ = std::fs::remove_dir_all(&self.daemon.dir);
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
    }
}

/// The Docker daemon restarted in the middle of a stage (the test's own
/// daemon): the stage's attempt ends as the infrastructure's failure, its
/// retry policy runs it again once the daemon is back, the run ends,
/// nothing of it is left on the daemon, and the next run succeeds.
#[test]
fn a_daemon_restarted_mid_run_ends_the_attempt_and_the_retry_finishes() {
    let tmp = tempfile::tempdir().unwrap();
    // Short: the daemon's socket path must fit a Unix socket address.
    let dir = std::path::PathBuf::from(format!("/tmp/sentinel-dockerd-{}", std::process::id()));
    let mut daemon = BridgedDaemon::start(&dir);
    let project = tmp.path().join("project");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(
        project.join("sentinel.yml"),
        "version: 1\nbox: sentinel/busybox:local\ndefaults: {network: none}\nstages:\n  long:\n    run: echo started; sleep 6; echo finished\n    retry: {attempts: 4, on: [infrastructure], backoff: 2s}\n  after:\n    after: long\n    run: echo after\n",
    )
    .unwrap();
    let host = daemon.host();
    let sentinel = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_sentinel"))
            .arg("-C")
            .arg(&project)
            .args(args)
            .env("DOCKER_HOST", &host)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let run = sentinel(&["run", "--json"]);
    // Once the stage's container runs, the daemon restarts under it.
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let ps = daemon.docker(&["ps", "-q", "--filter", "label=dev.sentinel.stage=long"]);
        if !String::from_utf8_lossy(&ps.stdout).trim().is_empty() {
            break;
        }
        assert!(Instant::now() < until, "the stage never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    daemon.down();
    daemon.up();
    let out = run.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let doc: serde_json::Value = stdout
        .lines()
        .rev()
        .find_map(|l| {
            serde_json::from_str(l)
                .ok()
                .filter(|v: &serde_json::Value| v["schema"] == 1)
        })
        .unwrap_or_else(|| panic!("no run document: {stdout}\n{stderr}"));
    assert_eq!(doc["status"], "succeeded", "{doc}\n{stderr}");
    let results = project
        .join(".sentinel/results/run")
        .join(doc["id"].as_str().unwrap());
    let long: serde_json::Value =
        serde_json::from_slice(&std::fs::read(results.join("long.json")).unwrap()).unwrap();
    let attempts = long["attempts"].as_array().cloned().unwrap_or_default();
    assert!(attempts.len() >= 2, "the stage was attempted again: {long}");
    assert!(
        matches!(
            attempts[0]["failure"].as_str(),
            Some("runtime_error" | "start_error")
        ),
        "the first attempt ended as the infrastructure's failure: {}",
        attempts[0]
    );
    assert_eq!(attempts.last().unwrap()["status"], "succeeded");
    let left = daemon.docker(&["ps", "-aq", "--filter", "label=dev.sentinel.run"]);
    assert!(
        String::from_utf8_lossy(&left.stdout).trim().is_empty(),
        "containers left on the daemon: {}",
        String::from_utf8_lossy(&left.stdout)
    );
    let again = sentinel(&["run"]).wait_with_output().unwrap();
    assert!(
        again.status.success(),
        "the next run: {}",
        String::from_utf8_lossy(&again.stderr)
    );
}
