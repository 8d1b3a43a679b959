//! Triggers on a real `sentinel serve` with a real Docker engine. A
//! repository with two named pipelines: each runs by name, with its own
//! runs list and badge, and a trigger that names none is refused naming
//! both. Schedules, on a test clock (debug builds read the time from the file
//! `SENTINEL_TEST_CLOCK` names, so no test waits real minutes): an
//! every-minute schedule fires once per minute across a restart; three
//! minutes of downtime give one catch-up run under `catch_up = "latest"`
//! and none under `"none"`; a schedule at 02:30 in `Europe/Berlin` fires at
//! 03:00 CEST on the spring-forward day and once, at its first occurrence,
//! on the autumn day. The API, the CLI and the web app show each
//! schedule's next firing.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::browser::Browser;
use common::server::{Client, Server, bare_repo_once, free_port};

const PIPELINE: &str = r#"version: 1
name: tick
box: sentinel/busybox:local
defaults:
  network: none
stages:
  tick:
    env:
      WHY: ~
    run: echo "tick $WHY"
"#;

struct Rig {
    tmp: tempfile::TempDir,
    clock: PathBuf,
    config: PathBuf,
}

impl Rig {
    fn new(schedules: &str, at: &str) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let repo = bare_repo_once(&tmp.path().join("tick"), &[("sentinel.yml", PIPELINE)]);
        let config = tmp.path().join("server.toml");
        std::fs::write(
            &config,
            format!("[repos.tick]\nurl = \"{repo}\"\n{schedules}"),
        )
        .unwrap();
        let clock = tmp.path().join("clock");
        let rig = Self { tmp, clock, config };
        rig.at(at);
        rig
    }

    /// Sets the server's clock.
    fn at(&self, t: &str) {
        std::fs::write(&self.clock, t).unwrap();
    }

    fn start(&self) -> Server {
        let listen = format!("127.0.0.1:{}", free_port());
        let clock = self.clock.to_str().unwrap();
        Server::start(
            &self.tmp.path().join("state"),
            &[
                "--config",
                self.config.to_str().unwrap(),
                "--listen",
                &listen,
                "--web",
                common::browser::dist().to_str().unwrap(),
            ],
            &[("SENTINEL_TEST_CLOCK", clock)],
        )
    }
}

/// A client of `server` once its scheduler has looked at every enabled
/// schedule (a new schedule fires from its first look on: a test that moved
/// the clock before it, on a loaded machine, waited for nothing).
async fn scheduling(server: &Server) -> Client {
    let c = Client::new(&server.url, &server.admin);
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let v = c.get("/api/v1/schedules").await;
        let looked = v["schedules"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["enabled"] == false || !s["next"].is_null());
        if looked {
            return c;
        }
        assert!(Instant::now() < until, "the scheduler never looked: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The firings of schedule `name` that queued a run: run id → `by`.
async fn fired(c: &Client, name: &str) -> BTreeMap<String, String> {
    let v = c.get("/api/v1/runs?limit=500").await;
    let prefix = format!("schedule {name} at ");
    v["runs"]
        .as_array()
        .unwrap()
        .iter()
        .chain(v["queued"].as_array().unwrap())
        .filter_map(|r| {
            let by = r["trigger"]["by"].as_str()?;
            by.starts_with(&prefix)
                .then(|| (r["id"].as_str().unwrap().to_string(), by.to_string()))
        })
        .collect()
}

/// Waits until schedule `name` has queued `n` runs, then makes sure it
/// queues no more for a while; the firing times, in order.
async fn expect(c: &Client, name: &str, n: usize) -> Vec<String> {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let got = fired(c, name).await;
        assert!(got.len() <= n, "{name} fired too often: {got:?}");
        if got.len() == n {
            break;
        }
        assert!(
            Instant::now() < until,
            "{name} fired {got:?}, not {n} times"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Ten passes of the schedules later, still `n`.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let got = fired(c, name).await;
    assert_eq!(got.len(), n, "{name}: {got:?}");
    let mut at: Vec<String> = got
        .values()
        .map(|by| by.rsplit(' ').next().unwrap().to_string())
        .collect();
    at.sort();
    at
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_fires_once_per_minute_across_restarts_and_catches_up_by_policy() {
    common::docker().await;
    let rig = Rig::new(
        "[schedules.every]\nrepo = \"tick\"\ncron = \"* * * * *\"\nenv = { WHY = \"every\" }\n\
         [schedules.quiet]\nrepo = \"tick\"\ncron = \"* * * * *\"\ncatch_up = \"none\"\nenv = { WHY = \"quiet\" }\n\
         [schedules.off]\nrepo = \"tick\"\ncron = \"* * * * *\"\nenabled = false\n",
        "2030-01-01T00:00:30Z",
    );
    let server = rig.start();
    let c = scheduling(&server).await;
    assert!(expect(&c, "every", 0).await.is_empty());

    // A minute on: each fires once, for 00:01.
    rig.at("2030-01-01T00:01:05Z");
    assert_eq!(expect(&c, "every", 1).await, ["2030-01-01T00:01:00Z"]);
    assert_eq!(expect(&c, "quiet", 1).await.len(), 1);
    rig.at("2030-01-01T00:01:40Z");
    expect(&c, "every", 1).await;

    // kill -9 and a new server: 00:01 is not fired again, 00:02 is, once.
    drop(server);
    let server = rig.start();
    let c = scheduling(&server).await;
    rig.at("2030-01-01T00:02:10Z");
    assert_eq!(
        expect(&c, "every", 2).await,
        ["2030-01-01T00:01:00Z", "2030-01-01T00:02:00Z"]
    );
    assert_eq!(expect(&c, "quiet", 2).await.len(), 2);

    // Down for three minutes (00:03, 00:04, 00:05 missed): `latest` runs
    // the newest once, `none` runs none.
    server.stop();
    rig.at("2030-01-01T00:05:30Z");
    let server = rig.start();
    let c = scheduling(&server).await;
    let every = expect(&c, "every", 3).await;
    assert_eq!(every[2], "2030-01-01T00:05:00Z", "{every:?}");
    assert_eq!(expect(&c, "quiet", 2).await.len(), 2, "{}", server.log());
    assert!(fired(&c, "off").await.is_empty());

    // The API says where each stands; a scheduled run got its env.
    let v = c.get("/api/v1/schedules").await;
    let every = v["schedules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "every")
        .unwrap();
    assert_eq!(every["next"], "2030-01-01T00:06:00Z", "{v}");
    assert_eq!(every["last_firing"], "2030-01-01T00:05:00Z", "{v}");
    let run = every["last_run"].as_str().unwrap();
    let done = c.wait_final(run).await;
    assert_eq!(done["run"]["status"], "succeeded", "{done}");
    assert_eq!(done["run"]["trigger"]["kind"], "schedule", "{done}");
    let (_, log) = c.text(&format!("/api/v1/runs/{run}/stages/tick/log")).await;
    assert!(log.contains("tick every"), "{log}");
    // And so does the CLI.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sentinel"))
        .args([
            "schedules",
            "--server",
            &server.url,
            "--token",
            &server.admin,
        ])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}");
    let line = said
        .lines()
        .find(|l| l.starts_with("every "))
        .unwrap_or_default();
    assert!(
        line.contains("2030-01-01 00:06") && line.contains(run),
        "{said}"
    );
    let off = said
        .lines()
        .find(|l| l.starts_with("off "))
        .unwrap_or_default();
    assert!(off.contains("disabled"), "{said}");
    // And so does the web app, to a signed-in user.
    let b = Browser::start().await;
    b.sign_in(&server.url, &server.admin).await;
    b.client
        .goto(&format!("{}/#/schedules", server.url))
        .await
        .unwrap();
    let next = r#"tr[data-schedule="every"] .next"#;
    b.wait_text(next, |t| t == "2030-01-01 00:06 UTC", "every's next firing")
        .await;
    b.wait_text(
        r#"tr[data-schedule="off"] .next"#,
        |t| t == "disabled",
        "off",
    )
    .await;
    b.screenshot("web-schedules").await;
    b.close().await;
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_berlin_schedule_crosses_both_daylight_saving_changes_as_documented() {
    common::docker().await;
    let schedule = "[schedules.berlin]\nrepo = \"tick\"\ncron = \"30 2 * * *\"\ntimezone = \"Europe/Berlin\"\n";
    // Spring: 02:30 does not exist on 2027-03-28; it fires at 03:00 CEST.
    let spring = Rig::new(schedule, "2027-03-27T23:00:00Z");
    let server = spring.start();
    let c = scheduling(&server).await;
    spring.at("2027-03-28T00:45:00Z"); // 01:45 CET
    assert!(expect(&c, "berlin", 0).await.is_empty());
    spring.at("2027-03-28T01:00:30Z"); // 03:00:30 CEST
    assert_eq!(expect(&c, "berlin", 1).await, ["2027-03-28T01:00:00Z"]);
    server.stop();

    // Autumn: 02:30 happens twice on 2027-10-31; it fires at the first.
    let autumn = Rig::new(schedule, "2027-10-30T22:00:00Z");
    let server = autumn.start();
    let c = scheduling(&server).await;
    autumn.at("2027-10-31T00:31:00Z"); // 02:31 CEST
    assert_eq!(expect(&c, "berlin", 1).await, ["2027-10-31T00:30:00Z"]);
    autumn.at("2027-10-31T01:31:00Z"); // 02:31 CET, the hour again
    expect(&c, "berlin", 1).await;
    autumn.at("2027-11-01T01:31:00Z"); // 02:31 CET the next day
    assert_eq!(
        expect(&c, "berlin", 2).await,
        ["2027-10-31T00:30:00Z", "2027-11-01T01:30:00Z"]
    );
    server.stop();
}

const BUILD: &str = "version: 1\nbox: sentinel/busybox:local\ndefaults:\n  network: none\nstages:\n  build:\n    run: echo building\n";
const DOCS: &str = "version: 1\nbox: sentinel/busybox:local\nenv: {DOCS_VERSION: ~}\ndefaults:\n  network: none\nstages:\n  docs:\n    run: echo writing docs $DOCS_VERSION\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_named_pipeline_of_a_repository_runs_by_name_with_its_own_list_and_badge() {
    common::docker().await;
    let tmp = tempfile::tempdir().unwrap();
    let repo = bare_repo_once(
        &tmp.path().join("shop"),
        &[("ci/build.yml", BUILD), ("ci/docs.yml", DOCS)],
    );
    let server = serve(
        tmp.path(),
        &format!(
            "[repos.shop]\nurl = \"{repo}\"\n[repos.shop.pipelines.shop-build]\nfile = \"ci/build.yml\"\n[repos.shop.pipelines.shop-docs]\nfile = \"ci/docs.yml\"\n"
        ),
        &[],
    );
    let c = Client::new(&server.url, &server.admin);
    let trigger = |pipeline: Option<&str>| {
        let body = serde_json::json!({ "repo": "shop", "ref": "main", "pipeline": pipeline });
        c.call(reqwest::Method::POST, "/api/v1/runs", Some(body))
    };
    let (status, v) = trigger(None).await;
    assert_eq!(status, 400, "{v}");
    let e = v["error"].as_str().unwrap();
    assert!(
        e.contains("shop-build, shop-docs") && e.contains("name one"),
        "{e}"
    );
    let (status, v) = trigger(Some("shop-tests")).await;
    assert_eq!(status, 400, "{v}");

    let (_, v) = trigger(Some("shop-build")).await;
    let build = v["id"].as_str().unwrap().to_string();
    let done = c.wait_final(&build).await;
    assert_eq!(done["run"]["status"], "succeeded", "{done}");
    assert_eq!(done["run"]["pipeline"], "shop-build", "{done}");
    let (_, log) = c
        .text(&format!("/api/v1/runs/{build}/stages/build/log"))
        .await;
    assert!(log.contains("building"), "{log}");
    // The CLI names the pipeline too.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sentinel"))
        .args([
            "trigger",
            "shop",
            "--ref",
            "main",
            "--pipeline",
            "shop-docs",
            "-e",
            "DOCS_VERSION=3.2",
            "--wait",
        ])
        .args(["--server", &server.url, "--token", &server.admin])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let done = c.wait_final(&docs).await;
    assert_eq!(done["run"]["pipeline"], "shop-docs", "{done}");
    // `-e` filled the pipeline's `DOCS_VERSION: ~`.
    let (_, log) = c
        .text(&format!("/api/v1/runs/{docs}/stages/docs/log"))
        .await;
    assert!(log.contains("writing docs 3.2"), "{log}");

    // Each pipeline's own runs list and badge.
    let list = c.get("/api/v1/runs?pipeline=shop-docs").await;
    let ids: Vec<&str> = list["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [docs.as_str()], "{list}");
    for p in ["shop-build", "shop-docs"] {
        let badge = reqwest::get(format!("{}/badge/{p}.svg", server.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(badge.contains("succeeded"), "{p}: {badge}");
    }
    // The web app's runs list keeps one pipeline's runs.
    let b = Browser::start().await;
    b.sign_in(&server.url, &server.admin).await;
    b.client.goto(&format!("{}/#/", server.url)).await.unwrap();
    b.find(&format!(r#"tr.run-row[data-run="{docs}"]"#)).await;
    b.find(&format!(r#"tr.run-row[data-run="{build}"]"#)).await;
    b.find(r#"select.pipeline-filter option[value="shop-docs"]"#)
        .await
        .click()
        .await
        .unwrap();
    let shown = || async {
        b.client
            .execute(
                "return [...document.querySelectorAll('tr.run-row')].map(r => r.dataset.run);",
                vec![],
            )
            .await
            .unwrap()
    };
    let until = Instant::now() + Duration::from_secs(10);
    while shown().await != serde_json::json!([docs.clone()]) {
        assert!(Instant::now() < until, "shown: {}", shown().await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.close().await;
    server.stop();
}

const RELEASE: &str = r#"version: 1
box: sentinel/busybox:local
defaults:
  network: none
stages:
  build:
    env:
      BREAK: ~
    run: |
      test "$BREAK" != yes
      echo "version=1.2.$(date +%s)" >> "$SENTINEL_OUTPUT"
"#;

const SHIP: &str = r#"version: 1
box: sentinel/busybox:local
defaults:
  network: none
stages:
  ship:
    env:
      VERSION: ${upstream.stages.build.outputs.version}
      FROM: ${upstream.run.id}
    run: echo "shipping $VERSION from $FROM"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_runs_after_another_succeeds_on_main_with_its_outputs() {
    common::docker().await;
    let tmp = tempfile::tempdir().unwrap();
    let repo = bare_repo_once(
        &tmp.path().join("rel"),
        &[("ci/release.yml", RELEASE), ("ci/ship.yml", SHIP)],
    );
    let server = serve(
        tmp.path(),
        &format!(
            "[repos.rel]\nurl = \"{repo}\"\n[repos.rel.pipelines.release]\nfile = \"ci/release.yml\"\n\
             [repos.rel.pipelines.ship]\nfile = \"ci/ship.yml\"\nafter = {{ pipeline = \"release\", branch = \"main\" }}\n"
        ),
        &[],
    );
    let c = Client::new(&server.url, &server.admin);
    let release = |breaks: &str| {
        let body = serde_json::json!({
            "repo": "rel", "ref": "main", "pipeline": "release", "env": { "BREAK": breaks }
        });
        c.call(reqwest::Method::POST, "/api/v1/runs", Some(body))
    };
    let shipped = || async {
        let v = c.get("/api/v1/runs?pipeline=ship").await;
        let mut ids: Vec<String> = v["runs"]
            .as_array()
            .unwrap()
            .iter()
            .chain(v["queued"].as_array().unwrap())
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect();
        ids.dedup();
        ids
    };

    // Release succeeds on main: ship runs once, with its outputs.
    let (_, v) = release("no").await;
    let first = v["id"].as_str().unwrap().to_string();
    let done = c.wait_final(&first).await;
    assert_eq!(done["run"]["status"], "succeeded", "{done}");
    let version = done["stages"][0]["outputs"]["version"]
        .as_str()
        .unwrap()
        .to_string();
    let until = Instant::now() + Duration::from_secs(30);
    let ship = loop {
        if let Some(id) = shipped().await.first() {
            break id.clone();
        }
        assert!(
            Instant::now() < until,
            "ship never started: {}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let done = c.wait_final(&ship).await;
    assert_eq!(done["run"]["status"], "succeeded", "{done}");
    assert_eq!(done["run"]["upstream"], first.as_str(), "{done}");
    assert_eq!(done["run"]["trigger"]["kind"], "upstream", "{done}");
    assert_eq!(
        done["run"]["git"]["commit"],
        c.get(&format!("/api/v1/runs/{first}")).await["run"]["git"]["commit"],
        "the upstream's commit"
    );
    let (_, log) = c
        .text(&format!("/api/v1/runs/{ship}/stages/ship/log"))
        .await;
    assert!(
        log.contains(&format!("shipping {version} from {first}")),
        "{log}"
    );

    // Release fails: ship does not run.
    let (_, v) = release("yes").await;
    let failed = v["id"].as_str().unwrap().to_string();
    assert_eq!(c.wait_final(&failed).await["run"]["status"], "failed");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(shipped().await, vec![ship.clone()]);

    // A restart does not queue it again.
    server.stop();
    let server = restart(tmp.path(), &[]);
    let c = Client::new(&server.url, &server.admin);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let v = c.get("/api/v1/runs?pipeline=ship").await;
    assert_eq!(v["runs"].as_array().unwrap().len(), 1, "{v}");
    assert!(v["queued"].as_array().unwrap().is_empty(), "{v}");
    server.stop();
}

/// Delivers a signed GitHub webhook `event` (secret `hooks-secret`); the
/// server's answer.
async fn hook(
    c: &Client,
    event: &str,
    delivery: &str,
    body: serde_json::Value,
) -> serde_json::Value {
    let body = body.to_string();
    let sig = sentinel_server::github_signature(b"hooks-secret", body.as_bytes());
    c.http
        .post(format!("{}/hooks/github", c.url))
        .header("x-github-event", event)
        .header("x-github-delivery", delivery)
        .header("x-hub-signature-256", sig)
        .body(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Writes `config` as the configuration of a server with its state under
/// `dir`, and starts it (with the built web app).
fn serve(dir: &std::path::Path, config: &str, env: &[(&str, &str)]) -> Server {
    std::fs::write(dir.join("server.toml"), config).unwrap();
    restart(dir, env)
}

/// A server on the configuration and state under `dir`, started (again).
fn restart(dir: &std::path::Path, env: &[(&str, &str)]) -> Server {
    let listen = format!("127.0.0.1:{}", free_port());
    let config = dir.join("server.toml");
    let dist = common::browser::dist();
    let args = [
        "--config",
        config.to_str().unwrap(),
        "--listen",
        &listen,
        "--web",
        dist.to_str().unwrap(),
    ];
    Server::start(&dir.join("state"), &args, env)
}

const SLOW: &str = r#"version: 1
box: sentinel/busybox:local
defaults:
  network: none
stages:
  work:
    run: sleep 3
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_push_to_a_branch_cancels_the_older_run_naming_it() {
    common::docker().await;
    let tmp = tempfile::tempdir().unwrap();
    let (repo, commit) =
        common::server::bare_repo(&tmp.path().join("slow"), &[("sentinel.yml", SLOW)]);
    let server = serve(
        tmp.path(),
        &format!("[repos.slow]\nurl = \"{repo}\"\ngithub = \"octo/slow\"\n"),
        &[("SENTINEL_GITHUB_WEBHOOK_SECRET", "hooks-secret")],
    );
    let c = Client::new(&server.url, &server.admin);
    let push = |branch: &str, delivery: &str| {
        let body = serde_json::json!({
            "ref": format!("refs/heads/{branch}"),
            "before": "0000000000000000000000000000000000000000",
            "after": commit,
            "repository": { "full_name": "octo/slow", "clone_url": "https://github.com/octo/slow.git" }
        });
        let (c, delivery) = (&c, delivery.to_string());
        async move {
            let v = hook(c, "push", &delivery, body).await;
            v["id"].as_str().unwrap_or_default().to_string()
        }
    };
    // Two quick pushes to a feature branch: the first is superseded.
    let first = push("feature", "d-1").await;
    c.wait_stage(&first, "work", "running").await;
    let second = push("feature", "d-2").await;
    let done = c.wait_final(&first).await;
    assert_eq!(done["run"]["status"], "cancelled", "{done}");
    let reason = done["run"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&format!("superseded by run {second}")),
        "{reason}"
    );
    assert_eq!(c.wait_final(&second).await["run"]["status"], "succeeded");

    // On the default branch both run.
    let a = push("main", "d-3").await;
    let b = push("main", "d-4").await;
    assert_eq!(c.wait_final(&a).await["run"]["status"], "succeeded");
    assert_eq!(c.wait_final(&b).await["run"]["status"], "succeeded");
    server.stop();
}

/// GitHub's commit-status API played on loopback: records each status.
struct FakeGithub {
    port: u16,
    seen: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
    serving: tokio::task::JoinHandle<()>,
}

impl FakeGithub {
    /// Up on `port` (0: any), recording into `seen`.
    async fn up(port: u16, seen: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>) -> Self {
        use axum::extract::{Path as P, State};
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        type Seen = std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>;
        async fn status(
            State(seen): State<Seen>,
            P((owner, repo, sha)): P<(String, String, String)>,
            headers: axum::http::HeaderMap,
            axum::Json(body): axum::Json<serde_json::Value>,
        ) -> (axum::http::StatusCode, axum::Json<serde_json::Value>) {
            let auth = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            seen.lock().unwrap().push(serde_json::json!({
                "repo": format!("{owner}/{repo}"), "sha": sha, "auth": auth, "body": body
            }));
            (
                axum::http::StatusCode::CREATED,
                axum::Json(serde_json::json!({ "id": 1 })),
            )
        }
        let app = axum::Router::new()
            .route(
                "/repos/{owner}/{repo}/statuses/{sha}",
                axum::routing::post(status),
            )
            .with_state(seen.clone());
        let serving = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            port,
            seen,
            serving,
        }
    }

    /// Down: connections are refused until it is up again.
    fn down(
        self,
    ) -> (
        u16,
        std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
    ) {
        self.serving.abort();
        (self.port, self.seen)
    }
}

/// The states of the statuses of `run` GitHub got, in order.
fn states_of(seen: &std::sync::Mutex<Vec<serde_json::Value>>, run: &str) -> Vec<String> {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|s| {
            s["body"]["target_url"]
                .as_str()
                .is_some_and(|u| u.ends_with(run))
        })
        .map(|s| s["body"]["state"].as_str().unwrap().to_string())
        .collect()
}

const GREEN_OR_RED: &str = r#"version: 1
box: sentinel/busybox:local
defaults:
  network: none
stages:
  check:
    env:
      BREAK: ~
    run: test "$BREAK" != yes
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_statuses_reach_github_in_order_and_wait_out_an_outage() {
    common::docker().await;
    let seen = std::sync::Arc::default();
    let github = FakeGithub::up(0, seen).await;
    let tmp = tempfile::tempdir().unwrap();
    let (repo, commit) =
        common::server::bare_repo(&tmp.path().join("gh"), &[("sentinel.yml", GREEN_OR_RED)]);
    let config = tmp.path().join("server.toml");
    std::fs::write(
        &config,
        format!(
            "[repos.gh]\nurl = \"{repo}\"\ngithub = \"octo/gh\"\n[github]\napi = \"http://127.0.0.1:{}\"\ntoken_secret = \"GH_TOKEN\"\npublic_url = \"https://ci.example\"\n",
            github.port
        ),
    )
    .unwrap();
    let listen = "127.0.0.1:0".to_string(); // the server says its address in server.json
    let key = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
    let server = Server::start(
        &tmp.path().join("state"),
        &["--config", config.to_str().unwrap(), "--listen", &listen],
        &[("SENTINEL_SECRETS_KEY", key)],
    );
    let c = Client::new(&server.url, &server.admin);
    let token = "ghp_statusTokenForTheFake0123";
    c.set_secret("GH_TOKEN", token).await;
    let run = |breaks: &str| {
        let body = serde_json::json!({ "repo": "gh", "ref": "main", "env": { "BREAK": breaks } });
        c.call(reqwest::Method::POST, "/api/v1/runs", Some(body))
    };
    let statuses = |gh: &FakeGithub, id: &str, n: usize| {
        let until = Instant::now() + Duration::from_secs(40);
        let (seen, id) = (gh.seen.clone(), id.to_string());
        async move {
            loop {
                let got = states_of(&seen, &id);
                if got.len() >= n {
                    return got;
                }
                assert!(Instant::now() < until, "statuses of {id}: {got:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };

    // Green, then red: pending then success, pending then failure.
    let (_, v) = run("no").await;
    let green = v["id"].as_str().unwrap().to_string();
    assert_eq!(c.wait_final(&green).await["run"]["status"], "succeeded");
    assert_eq!(statuses(&github, &green, 2).await, ["pending", "success"]);
    let (_, v) = run("yes").await;
    let red = v["id"].as_str().unwrap().to_string();
    assert_eq!(c.wait_final(&red).await["run"]["status"], "failed");
    assert_eq!(statuses(&github, &red, 2).await, ["pending", "failure"]);
    let first = github.seen.lock().unwrap()[0].clone();
    assert_eq!(first["repo"], "octo/gh", "{first}");
    assert_eq!(first["sha"], commit.as_str(), "{first}");
    assert_eq!(first["auth"], format!("Bearer {token}"), "{first}");
    assert_eq!(first["body"]["context"], "sentinel/gh", "{first}");
    assert_eq!(
        first["body"]["target_url"],
        format!("https://ci.example/#/run/{green}"),
        "{first}"
    );

    // GitHub down: the run ends on time all the same; its statuses wait
    // (and say so in /metrics), then arrive once GitHub is back.
    let (port, seen) = github.down();
    let (_, v) = run("no").await;
    let later = v["id"].as_str().unwrap().to_string();
    assert_eq!(c.wait_final(&later).await["run"]["status"], "succeeded");
    let (_, metrics) = c.text("/metrics").await;
    let waiting = metrics
        .lines()
        .find(|l| l.starts_with("sentinel_commit_statuses_waiting "))
        .unwrap_or_default()
        .to_string();
    assert!(!waiting.ends_with(" 0") && !waiting.is_empty(), "{metrics}");
    assert!(
        metrics.contains("sentinel_commit_status_failures_total{kind=\"retried\"}"),
        "{metrics}"
    );
    let github = FakeGithub::up(port, seen).await;
    assert_eq!(statuses(&github, &later, 2).await, ["pending", "success"]);
    assert!(!server.log().contains(token), "the token reached the log");
    server.stop();
}

const PR_PIPELINE: &str = r#"version: 1
box: sentinel/busybox:local
defaults:
  network: none
secrets: [TOKEN]
stages:
  look:
    run: env | sort
  needs-token:
    env:
      T: ${secrets.TOKEN}
    run: echo "token is ${#T} long"
  cached:
    cache:
      key: pr-cache
      paths: [.pr-cache]
    run: mkdir -p .pr-cache && echo kept > .pr-cache/file
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_pull_request_runs_without_secrets_cache_writes_or_deploys() {
    common::docker().await;
    let tmp = tempfile::tempdir().unwrap();
    let (repo, commit) =
        common::server::bare_repo(&tmp.path().join("pr"), &[("sentinel.yml", PR_PIPELINE)]);
    let config = tmp.path().join("server.toml");
    std::fs::write(
        &config,
        format!(
            "[repos.pr]\nurl = \"{repo}\"\ngithub = \"octo/pr\"\n[environments.prod]\nrepo = \"pr\"\n"
        ),
    )
    .unwrap();
    let listen = "127.0.0.1:0".to_string(); // the server says its address in server.json
    let key = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
    let server = Server::start(
        &tmp.path().join("state"),
        &["--config", config.to_str().unwrap(), "--listen", &listen],
        &[
            ("SENTINEL_SECRETS_KEY", key),
            ("SENTINEL_GITHUB_WEBHOOK_SECRET", "hooks-secret"),
        ],
    );
    let c = Client::new(&server.url, &server.admin);
    let token = "s3cr3t-token-value-42";
    c.set_secret("TOKEN", token).await;
    let open_pr = |from: &str, number: u64, delivery: &str| {
        let body = serde_json::json!({
            "action": "opened",
            "number": number,
            "pull_request": {
                "head": { "ref": "feature", "sha": commit, "repo": { "full_name": from } },
                "base": { "ref": "main", "sha": commit, "repo": { "full_name": "octo/pr" } }
            },
            "repository": { "full_name": "octo/pr", "clone_url": "https://github.com/octo/pr.git" }
        });
        let (c, delivery) = (&c, delivery.to_string());
        async move {
            let v = hook(c, "pull_request", &delivery, body).await;
            v["id"].as_str().unwrap_or_default().to_string()
        }
    };
    let stage = |done: &serde_json::Value, name: &str| {
        done["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .cloned()
            .unwrap()
    };

    // From a fork: no secret anywhere, the stage needing one skipped.
    let fork = open_pr("evil/pr", 7, "pr-1").await;
    let done = c.wait_final(&fork).await;
    assert_eq!(done["run"]["status"], "succeeded", "{done}");
    assert_eq!(done["run"]["trigger"]["kind"], "pull_request", "{done}");
    assert_eq!(done["run"]["pull_request"]["number"], 7, "{done}");
    assert_eq!(done["run"]["pull_request"]["fork"], true, "{done}");
    let skipped = stage(&done, "needs-token");
    assert_eq!(skipped["status"], "skipped", "{skipped}");
    let why = skipped["reason"].as_str().unwrap_or_default();
    assert!(
        why.contains("a pull request from a fork gets no secrets") && why.contains("`TOKEN`"),
        "{why}"
    );
    let (_, env) = c
        .text(&format!("/api/v1/runs/{fork}/stages/look/log"))
        .await;
    assert!(env.contains("SENTINEL_"), "{env}");
    assert!(!env.contains(token) && !env.contains("TOKEN="), "{env}");
    let cached = stage(&done, "cached");
    let note = cached["cache"]["note"].as_str().unwrap_or_default();
    assert!(note.contains("not write it"), "{cached}");
    let (status, v) = c
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/runs/{fork}/promote"),
            Some(serde_json::json!({ "to": "prod" })),
        )
        .await;
    assert_eq!(status, 409, "{v}");

    // From the repository itself: its secrets, as any run of it.
    let own = open_pr("octo/pr", 8, "pr-2").await;
    let done = c.wait_final(&own).await;
    assert_eq!(done["run"]["status"], "succeeded", "{done}");
    assert_eq!(done["run"]["pull_request"]["fork"], false, "{done}");
    assert_eq!(stage(&done, "needs-token")["status"], "succeeded");
    let (_, log) = c
        .text(&format!("/api/v1/runs/{own}/stages/needs-token/log"))
        .await;
    assert!(
        log.contains(&format!("token is {} long", token.len())),
        "{log}"
    );
    server.stop();
}

const BUMP: &str = r#"version: 1
box: sentinel/busybox:local
defaults:
  network: none
stages:
  bump:
    env:
      NEW: ${trigger.version}
      OLD: ${trigger.previous_version}
    run: echo "bump $OLD -> $NEW"
"#;

/// The runs version watches started.
async fn version_runs(c: &Client) -> Vec<String> {
    let v = c.get("/api/v1/runs").await;
    let mut ids: Vec<String> = v["runs"]
        .as_array()
        .unwrap()
        .iter()
        .chain(v["queued"].as_array().unwrap())
        .filter(|r| r["trigger"]["kind"] == "version")
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_watch_runs_once_per_new_version_across_a_restart() {
    common::docker().await;
    // The package registry, on loopback: its version can be changed.
    let version = std::sync::Arc::new(std::sync::Mutex::new("1.0.0".to_string()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let registry = format!("http://{}/pkg.json", listener.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/pkg.json",
        axum::routing::get({
            let version = version.clone();
            move || {
                let v = version.lock().unwrap().clone();
                async move { axum::Json(serde_json::json!({ "info": { "version": v } })) }
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let tmp = tempfile::tempdir().unwrap();
    let repo = bare_repo_once(&tmp.path().join("deps"), &[("sentinel.yml", BUMP)]);
    let config = tmp.path().join("server.toml");
    std::fs::write(
        &config,
        format!(
            "[repos.deps]\nurl = \"{repo}\"\n[versions.pkg]\nrepo = \"deps\"\nurl = \"{registry}\"\nfilter = \".info.version\"\nevery_seconds = 1\n"
        ),
    )
    .unwrap();
    let listen = "127.0.0.1:0".to_string(); // the server says its address in server.json
    let start = || {
        Server::start(
            &tmp.path().join("state"),
            &["--config", config.to_str().unwrap(), "--listen", &listen],
            &[],
        )
    };
    let server = start();
    let c = Client::new(&server.url, &server.admin);
    // The first version seen is the starting point: nothing runs.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(version_runs(&c).await.is_empty());

    // A new version: one run, with both versions.
    *version.lock().unwrap() = "2.0.0".into();
    let until = Instant::now() + Duration::from_secs(20);
    let run = loop {
        if let Some(id) = version_runs(&c).await.first() {
            break id.clone();
        }
        assert!(Instant::now() < until, "no run: {}", server.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(c.wait_final(&run).await["run"]["status"], "succeeded");
    let (_, log) = c.text(&format!("/api/v1/runs/{run}/stages/bump/log")).await;
    assert!(log.contains("bump 1.0.0 -> 2.0.0"), "{log}");
    // Polled again, and across a restart: nothing more.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(version_runs(&c).await, vec![run.clone()]);
    server.stop();
    let server = start();
    let c = Client::new(&server.url, &server.admin);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(version_runs(&c).await, vec![run.clone()]);
    server.stop();
}

const SHOW_NOTES: &str = r#"version: 1
box: sentinel/busybox:local
defaults:
  network: none
stages:
  show:
    run: cat notes.txt extra.txt 2>/dev/null; true
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_request_merged_onto_its_base_when_asked_and_a_conflict_fails_saying_so() {
    use common::server::git;
    common::docker().await;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("m");
    let (repo, _) = common::server::bare_repo(
        &root,
        &[("sentinel.yml", SHOW_NOTES), ("notes.txt", "base notes\n")],
    );
    let work = root.join("work");
    let bare = root.join("app.git");
    let bare = bare.to_str().unwrap();
    // A branch that merges cleanly, and one that conflicts with main.
    git(&work, &["checkout", "--quiet", "-b", "good"]);
    std::fs::write(work.join("extra.txt"), "extra from good\n").unwrap();
    git(&work, &["add", "."]);
    git(&work, &["commit", "--quiet", "-m", "good"]);
    let good = git(&work, &["rev-parse", "HEAD"]);
    git(&work, &["checkout", "--quiet", "main"]);
    git(&work, &["checkout", "--quiet", "-b", "bad"]);
    std::fs::write(work.join("notes.txt"), "notes from bad\n").unwrap();
    git(&work, &["commit", "--quiet", "-am", "bad"]);
    let bad = git(&work, &["rev-parse", "HEAD"]);
    git(&work, &["checkout", "--quiet", "main"]);
    std::fs::write(work.join("notes.txt"), "notes moved on in main\n").unwrap();
    git(&work, &["commit", "--quiet", "-am", "main moves on"]);
    git(&work, &["push", "--quiet", bare, "main", "good", "bad"]);

    let server = serve(
        tmp.path(),
        &format!("[repos.m]\nurl = \"{repo}\"\ngithub = \"octo/m\"\nmerge_pull_requests = true\n"),
        &[("SENTINEL_GITHUB_WEBHOOK_SECRET", "hooks-secret")],
    );
    let c = Client::new(&server.url, &server.admin);
    let open_pr = |head: &str, sha: &str, number: u64| {
        let body = serde_json::json!({
            "action": "opened",
            "number": number,
            "pull_request": {
                "head": { "ref": head, "sha": sha, "repo": { "full_name": "octo/m" } },
                "base": { "ref": "main", "sha": "", "repo": { "full_name": "octo/m" } }
            },
            "repository": { "full_name": "octo/m", "clone_url": "https://github.com/octo/m.git" }
        });
        let c = &c;
        async move {
            let v = hook(c, "pull_request", &format!("merge-{number}"), body).await;
            v["id"].as_str().unwrap().to_string()
        }
    };
    // It merges: the run sees main's notes and the branch's file, at a
    // merge commit of its own.
    let run = open_pr("good", &good, 1).await;
    let done = c.wait_final(&run).await;
    assert_eq!(done["run"]["status"], "succeeded", "{done}");
    let commit = done["run"]["git"]["commit"].as_str().unwrap();
    assert_ne!(commit, good, "a merge commit");
    assert_eq!(done["run"]["pull_request"]["head_sha"], good.as_str());
    let (_, log) = c.text(&format!("/api/v1/runs/{run}/stages/show/log")).await;
    assert!(
        log.contains("notes moved on in main") && log.contains("extra from good"),
        "{log}"
    );
    // It conflicts: the run fails before any stage, saying so.
    let run = open_pr("bad", &bad, 2).await;
    let done = c.wait_final(&run).await;
    assert_eq!(done["run"]["status"], "failed", "{done}");
    let reason = done["run"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("pull request #2 does not merge onto main"),
        "{reason}"
    );
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_a_pipelines_filters_do_not_take_queue_nothing_and_say_why() {
    common::docker().await;
    let tmp = tempfile::tempdir().unwrap();
    let (repo, commit) =
        common::server::bare_repo(&tmp.path().join("f"), &[("sentinel.yml", SLOW)]);
    let server = serve(
        tmp.path(),
        &format!(
            "[repos.f]\nurl = \"{repo}\"\ngithub = \"octo/f\"\n[repos.f.on]\nbranches = [\"main\"]\ntags = [\"v*\"]\npaths = [\"src/**\"]\n"
        ),
        &[("SENTINEL_GITHUB_WEBHOOK_SECRET", "hooks-secret")],
    );
    let c = Client::new(&server.url, &server.admin);
    let push = |git_ref: &str, files: &[&str]| {
        serde_json::json!({
            "ref": git_ref,
            "before": "1111111111111111111111111111111111111111",
            "after": commit,
            "commits": [{ "id": commit, "added": files, "removed": [], "modified": [] }],
            "repository": { "full_name": "octo/f", "clone_url": "https://github.com/octo/f.git" }
        })
    };
    for (delivery, body, why) in [
        (
            "f-1",
            push("refs/heads/wip", &["src/a.rs"]),
            "branch `wip` matches none of branches (main)",
        ),
        (
            "f-2",
            push("refs/heads/main", &["docs/a.md"]),
            "no changed path matters: docs/a.md",
        ),
        (
            "f-3",
            push("refs/tags/nightly", &["src/a.rs"]),
            "tag `nightly` matches none of tags (v*)",
        ),
    ] {
        let v = hook(&c, "push", delivery, body).await;
        assert_eq!(v["status"], "ignored", "{v}");
        assert!(
            v["ignored"][0]["reason"].as_str().unwrap().contains(why),
            "{v}"
        );
    }
    let v = c.get("/api/v1/runs").await;
    assert!(v["runs"].as_array().unwrap().is_empty(), "{v}");
    assert!(v["queued"].as_array().unwrap().is_empty(), "{v}");
    let ignored = c.get("/api/v1/ignored").await;
    let reasons: Vec<&str> = ignored["ignored"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons.len(), 3, "{ignored}");
    assert!(reasons[0].contains("tag `nightly`"), "{ignored}");
    // A push that matters runs.
    let v = hook(&c, "push", "f-4", push("refs/heads/main", &["src/a.rs"])).await;
    assert_eq!(v["status"], "queued", "{v}");
    let id = v["id"].as_str().unwrap();
    assert_eq!(c.wait_final(id).await["run"]["status"], "succeeded");
    server.stop();
}
