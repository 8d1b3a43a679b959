//! Deploy markers on a real `sentinel serve` with a real Docker engine:
//! markers and payloads in a folder (and, in `s3.rs`-style, in the S3
//! server) found by a watcher, each acted on once — newer versions
//! deployed in order with the payload in `deploy/` and the facts as
//! `${deploy.*}` and `DEPLOY_*`, older ones ignored with the reason, bad
//! payloads refused with theirs and nothing run — `/force` polling at
//! once, the deployments record answering what is deployed where, and a
//! crash between a marker's decision and its run's start deploying it
//! exactly once.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::server::{Client, Server, bare_repo, bare_repo_once, free_port};
use sentinel_testkit::payload::{self as kit, Entry, FILE};
use serde_json::Value;

const DEPLOYER: &str = r#"version: 1
name: deployer
box: sentinel/busybox:local
defaults:
  network: none
stages:
  deploy:
    env:
      WHAT: ${deploy.app}@${deploy.version}
    run: |
      echo "deploying $WHAT image=$DEPLOY_IMAGE_VERSION x$DEPLOY_INSTANCES to $DEPLOY_ENVIRONMENT.$DEPLOY_DOMAIN"
      ls deploy
      cat deploy/*.metadata.json
"#;

const DOMAIN: &str = "example.com";
const ENV: &str = "development";

/// A watched folder: `markers/` and `payloads/`.
struct Bucket(PathBuf);

impl Bucket {
    /// Publishes a payload, then touches its marker (as a build does).
    fn publish(&self, app: &str, version: &str, payload: &[u8]) {
        let p = self.0.join("payloads").join(app);
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(
            p.join(format!("{DOMAIN}-{ENV}-{app}-{version}.tar.gz")),
            payload,
        )
        .unwrap();
        let m = self.0.join("markers").join(app);
        std::fs::create_dir_all(&m).unwrap();
        std::fs::write(m.join(format!("{version}.deploy")), b"").unwrap();
    }
}

/// A good payload of `app` at `version`, in its folder.
fn good(app: &str, version: &str) -> Vec<u8> {
    let folder = format!("{DOMAIN}-{ENV}-{app}-{version}");
    let meta = kit::metadata(app, version, &format!("img-{version}"), 3);
    kit::tar_gz(&kit::good(Some(&folder), app, version, &meta))
}

/// A server whose watcher `dev` watches `bucket`, deploying with `DEPLOYER`.
fn start(tmp: &Path, bucket: &Bucket, poll_seconds: u64, env: &[(&str, &str)]) -> Server {
    start_with(tmp, bucket, poll_seconds, env, &[])
}

/// [`start`] with more flags.
fn start_with(
    tmp: &Path,
    bucket: &Bucket,
    poll_seconds: u64,
    env: &[(&str, &str)],
    flags: &[&str],
) -> Server {
    // One repository, however often the server starts.
    let url = bare_repo_once(&tmp.join("deployer"), &[("sentinel.yml", DEPLOYER)]);
    let config = tmp.join("server.toml");
    std::fs::write(
        &config,
        format!(
            "runs = 2\nmax_attempts = 10\n[repos.deployer]\nurl = \"{url}\"\n[watchers.dev]\nrepo = \"deployer\"\nref = \"main\"\nenvironment = \"{ENV}\"\ndomain = \"{DOMAIN}\"\nmarkers = \"{}\"\npayloads = \"{}\"\npoll_seconds = {poll_seconds}\n",
            bucket.0.join("markers").display(),
            bucket.0.join("payloads").display(),
        ),
    )
    .unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut args = vec!["--config", config.to_str().unwrap(), "--listen", &listen];
    args.extend_from_slice(flags);
    Server::start(&tmp.join("state"), &args, env)
}

async fn poll(c: &Client) -> Value {
    let (status, v) = c
        .call(reqwest::Method::POST, "/api/v1/watchers/dev/poll", None)
        .await;
    assert_eq!(status, 200, "{v}");
    v
}

/// The one new marker a poll acted on.
fn only_new(v: &Value) -> &Value {
    let new = v["new"].as_array().unwrap();
    assert_eq!(new.len(), 1, "{v}");
    &new[0]
}

async fn deployments(c: &Client) -> Value {
    c.get("/api/v1/deployments?app=video-mobile").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_markers_deploy_in_order_once_and_older_ones_are_ignored() {
    common::docker().await;
    let tmp = tempfile::tempdir().unwrap();
    let bucket = Bucket(tmp.path().join("bucket"));
    let server = start(tmp.path(), &bucket, 3600, &[]);
    let c = Client::new(&server.url, &server.admin);

    // Placed after the server's first poll: /force finds it without waiting.
    bucket.publish(
        "video-mobile",
        "1.0.1-21",
        &good("video-mobile", "1.0.1-21"),
    );
    let (status, v) = c.call(reqwest::Method::GET, "/force", None).await;
    assert_eq!(status, 200, "{v}");
    let first = only_new(&v["watchers"][0]);
    assert_eq!(first["outcome"], "queued", "{v}");
    let run21 = first["run"].as_str().unwrap().to_string();
    let done = c.wait_final(&run21).await;
    assert_eq!(done["run"]["status"], "succeeded", "{done}");
    assert_eq!(done["run"]["trigger"]["kind"], "deploy");
    assert_eq!(done["run"]["deploy"]["image_version"], "img-1.0.1-21");
    let (_, log) = c
        .text(&format!("/api/v1/runs/{run21}/stages/deploy/log"))
        .await;
    assert!(
        log.contains(
            "deploying video-mobile@1.0.1-21 image=img-1.0.1-21 x3 to development.example.com"
        ),
        "{log}"
    );
    for file in [
        "video-mobile.metadata.json",
        "video-mobile-1.0.1-21@.service",
        "video-mobile.etcd2",
        "README.md",
    ] {
        assert!(log.contains(file), "deploy/{file} in the workspace: {log}");
    }
    assert!(log.contains(r#""numInstance":3"#), "{log}");

    // The next build: deployed after the first.
    bucket.publish(
        "video-mobile",
        "1.0.1-22",
        &good("video-mobile", "1.0.1-22"),
    );
    let v = poll(&c).await;
    let second = only_new(&v);
    assert_eq!(second["outcome"], "queued", "{v}");
    assert_eq!(v["already_acted_on"], 1, "{v}");
    let run22 = second["run"].as_str().unwrap().to_string();
    assert_eq!(c.wait_final(&run22).await["run"]["status"], "succeeded");

    // An older one afterwards: ignored, with the reason; nothing runs.
    bucket.publish(
        "video-mobile",
        "1.0.1-20",
        &good("video-mobile", "1.0.1-20"),
    );
    let v = poll(&c).await;
    let old = only_new(&v);
    assert_eq!(old["outcome"], "ignored", "{v}");
    assert!(old.get("run").is_none(), "{v}");
    assert!(
        old["reason"]
            .as_str()
            .unwrap()
            .contains("1.0.1-20 is not newer than 1.0.1-22"),
        "{v}"
    );

    // The same markers, seen by 50 polls: nothing more.
    for _ in 0..50 {
        let v = poll(&c).await;
        assert!(v["new"].as_array().unwrap().is_empty(), "{v}");
        assert_eq!(v["already_acted_on"], 3, "{v}");
    }
    let d = deployments(&c).await;
    assert_eq!(d["deployments"].as_array().unwrap().len(), 3, "{d}");
    let history: Vec<(&str, &str)> = d["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["version"].as_str().unwrap(),
                x["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        history,
        vec![
            ("1.0.1-20", "ignored"),
            ("1.0.1-22", "succeeded"),
            ("1.0.1-21", "succeeded")
        ]
    );
    let now = d["current"].as_array().unwrap();
    assert_eq!(now.len(), 1, "{d}");
    assert_eq!(now[0]["version"], "1.0.1-22");
    assert_eq!(now[0]["environment"], ENV);
    assert_eq!(now[0]["run"], run22.as_str());
    // The results say it too (the static site reads this document).
    let published = server.state.join("results/deployments/index.json");
    let until = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let doc: Value = std::fs::read(&published)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        if doc["current"][0]["version"] == "1.0.1-22"
            && doc["recent"].as_array().map(Vec::len) == Some(3)
        {
            assert_eq!(doc["schema"], 1);
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "{} says {doc}",
            published.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The CLI asks the server running on the state folder.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sentinel"))
        .arg("--state")
        .arg(&server.state)
        .args(["deployments", "--app", "video-mobile"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}");
    let now = said.lines().nth(1).unwrap_or_default();
    assert!(
        now.contains("development") && now.contains("video-mobile") && now.contains("1.0.1-22"),
        "{said}"
    );
    assert!(
        said.contains("1.0.1-20 → development  ignored: 1.0.1-20 is not newer"),
        "{said}"
    );
    let (_, metrics) = c.text("/metrics").await;
    for line in [
        r#"sentinel_deploy_markers_total{watcher="dev",outcome="queued"} 2"#,
        r#"sentinel_deploy_markers_total{watcher="dev",outcome="ignored"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    // Runs: exactly the two deploys.
    let runs = c.get("/api/v1/runs").await;
    assert_eq!(runs["runs"].as_array().unwrap().len(), 2, "{runs}");
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_payloads_fail_their_deploy_with_the_reason_and_run_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let bucket = Bucket(tmp.path().join("bucket"));
    let server = start(tmp.path(), &bucket, 3600, &[]);
    let c = Client::new(&server.url, &server.admin);
    let with = |app: &str, meta: &str, extra: Vec<Entry>| {
        let mut e = kit::good(None, app, "1.0", meta);
        e.extend(extra);
        kit::tar_gz(&e)
    };
    let meta = |app: &str| kit::metadata(app, "1.0", "img", 1);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "two-metadata",
            with(
                "two-metadata",
                &meta("two-metadata"),
                vec![("other.json".into(), FILE, meta("two-metadata").into_bytes())],
            ),
            "two metadata (.json) files",
        ),
        (
            "no-image",
            with(
                "no-image",
                r#"{"name":"no-image","version":"1.0","numInstance":1}"#,
                vec![],
            ),
            "`imageVersion` is missing",
        ),
        (
            "wrong-types",
            with(
                "wrong-types",
                r#"{"name":"wrong-types","version":"1.0","imageVersion":"i","numInstance":"1"}"#,
                vec![],
            ),
            "`numInstance` must be a whole number",
        ),
        (
            "mismatch",
            with("mismatch", &meta("someone-else"), vec![]),
            "`name` is `someone-else` but the marker is for `mismatch`",
        ),
        (
            "escape",
            with(
                "escape",
                &meta("escape"),
                vec![("../evil.etcd2".into(), FILE, b"x".to_vec())],
            ),
            "`../evil.etcd2` leaves the payload",
        ),
        (
            "link",
            with(
                "link",
                &meta("link"),
                vec![("README.md".into(), tar::EntryType::Symlink, Vec::new())],
            ),
            "`README.md` is a link",
        ),
        (
            "bomb",
            kit::bomb("bomb.metadata.json"),
            "larger than 16777216 bytes uncompressed",
        ),
        ("not-a-tar", b"just text".to_vec(), "is not a .tar.gz"),
    ];
    for (app, payload, _) in &cases {
        bucket.publish(app, "1.0", payload);
    }
    let v = poll(&c).await;
    let new = v["new"].as_array().unwrap();
    assert_eq!(new.len(), cases.len(), "{v}");
    for (app, _, why) in &cases {
        let seen = new.iter().find(|n| n["app"] == *app).unwrap();
        assert_eq!(seen["outcome"], "failed", "{app}: {seen}");
        assert!(seen.get("run").is_none(), "{app}: nothing runs: {seen}");
        let reason = seen["reason"].as_str().unwrap();
        assert!(reason.contains(why), "{app}: `{why}` in `{reason}`");
        let d = c
            .get(&format!("/api/v1/deployments?app={app}&environment={ENV}"))
            .await;
        assert_eq!(d["deployments"][0]["status"], "failed", "{d}");
        assert_eq!(d["deployments"][0]["reason"], reason, "{d}");
        assert!(d["current"].as_array().unwrap().is_empty(), "{d}");
    }
    // Refused once: the next poll does not look at them again.
    let v = poll(&c).await;
    assert!(v["new"].as_array().unwrap().is_empty(), "{v}");
    let runs = c.get("/api/v1/runs").await;
    assert!(runs["runs"].as_array().unwrap().is_empty(), "{runs}");
    assert!(
        !tmp.path().join("state/payloads").exists()
            || std::fs::read_dir(tmp.path().join("state/payloads"))
                .unwrap()
                .next()
                .is_none(),
        "no refused payload is kept"
    );
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_decision_and_run_deploys_each_marker_exactly_once() {
    common::docker().await;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("seed {seed}");
    let mut rng = common::Rng(seed);
    let tmp = tempfile::tempdir().unwrap();
    let bucket = Bucket(tmp.path().join("bucket"));
    let mut versions = Vec::new();
    // The failpoint: the server stops right after deciding, every round.
    for round in 1..=3 {
        let version = format!("2.0.{round}");
        bucket.publish("video-mobile", &version, &good("video-mobile", &version));
        versions.push(version);
        let mut server = start(
            tmp.path(),
            &bucket,
            3600,
            &[("SENTINEL_FAILPOINT", "deploy-decided")],
        );
        // Its first poll decides and stops it, before the run can start.
        let status = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                if let Some(s) = server.child.try_wait().unwrap() {
                    return s;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the failpoint did not stop the server");
        assert!(!status.success(), "round {round}: {}", server.log());
        assert!(
            server.log().contains("failpoint deploy-decided"),
            "{}",
            server.log()
        );
    }
    // kill -9 at random moments while polling every second.
    for round in 4..=6 {
        let version = format!("2.0.{round}");
        bucket.publish("video-mobile", &version, &good("video-mobile", &version));
        versions.push(version);
        let mut server = start(tmp.path(), &bucket, 1, &[]);
        tokio::time::sleep(Duration::from_millis(rng.below(2500))).await;
        server.child.kill().unwrap();
        server.child.wait().unwrap();
        assert!(!server.log().contains("panicked"), "{}", server.log());
    }

    // The last start: every marker ends in exactly one deployment.
    let server = start(tmp.path(), &bucket, 1, &[]);
    let c = Client::new(&server.url, &server.admin);
    // Each ends succeeded: a run its server died under is tried again (a
    // deployment may say `interrupted` for the moment between; the six
    // crashes stay within the ten attempts the server allows).
    let until = std::time::Instant::now() + Duration::from_secs(120);
    let d = loop {
        let d = deployments(&c).await;
        let all = d["deployments"].as_array().unwrap();
        if all.len() == versions.len() && all.iter().all(|x| x["status"] == "succeeded") {
            break d;
        }
        assert!(std::time::Instant::now() < until, "{d}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for _ in 0..50 {
        let v = poll(&c).await;
        assert!(v["new"].as_array().unwrap().is_empty(), "{v}");
    }
    let all = d["deployments"].as_array().unwrap();
    let mut seen: Vec<&str> = all.iter().map(|x| x["version"].as_str().unwrap()).collect();
    seen.sort();
    assert_eq!(seen, versions, "one deployment per marker: {d}");
    // Each deployment ran until one run of it succeeded (a run its server
    // died under was started again as a new run), and no marker ran twice.
    let runs = c.get("/api/v1/runs?limit=500").await;
    let runs = runs["runs"].as_array().unwrap();
    let succeeded: Vec<&str> = runs
        .iter()
        .filter(|r| r["status"] == "succeeded")
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(succeeded.len(), versions.len(), "{runs:?}");
    for x in all {
        assert_eq!(x["status"], "succeeded", "{d}");
        let run = x["run"].as_str().unwrap();
        assert!(succeeded.contains(&run), "{run} of {x}");
        let r = c.get(&format!("/api/v1/runs/{run}")).await;
        assert_eq!(r["run"]["deploy"]["version"], x["version"], "{r}");
    }
    // A marker whose decision was made before a crash still ran: the first
    // three (the failpoint rounds) each ran once.
    for v in ["2.0.1", "2.0.2", "2.0.3"] {
        let x = all.iter().find(|x| x["version"] == v).unwrap();
        assert_eq!(x["status"], "succeeded", "{v}: {x}");
    }
    server.stop();
}

/// A build that packs a payload and touches its marker, then publishes
/// both to the bucket with the `s3sync` step (as the monitor's builds did).
const BUILD: &str = r#"version: 1
name: build
box: sentinel/busybox:local
defaults:
  network: none
env:
  S3_ENDPOINT: ~
  S3_BUCKET: ~
  PREFIX: ~
secrets: [AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY]
stages:
  package:
    run: |
      v=4.2.0-7
      d=example.com-development-billing-$v
      mkdir -p "$d" out/payloads/billing out/deploys/billing
      echo "{\"name\":\"billing\",\"version\":\"$v\",\"imageVersion\":\"img-$v\",\"numInstance\":2}" > "$d/billing.metadata.json"
      echo "[Unit]" > "$d/billing@.service"
      tar -czf "out/payloads/billing/$d.tar.gz" "$d"
      : > "out/deploys/billing/$v.deploy"
  publish:
    step: s3sync@1
    after: [package]
    with:
      bucket: ${env.S3_BUCKET}
      key_id: ${secrets.AWS_ACCESS_KEY_ID}
      key_secret: ${secrets.AWS_SECRET_ACCESS_KEY}
      endpoint: ${env.S3_ENDPOINT}
      region: garage
      path_style: true
      source_dir: out
      prefix: ${env.PREFIX}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_publishes_to_the_bucket_and_the_watcher_deploys_it() {
    common::docker().await;
    let s3 = sentinel_testkit::s3_server();
    let prefix = format!(
        "deploys-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let tmp = tempfile::tempdir().unwrap();
    let build = tmp.path().join("build");
    std::fs::create_dir_all(&build).unwrap();
    std::fs::write(build.join("sentinel.yml"), BUILD).unwrap();
    let aws = [
        ("AWS_ACCESS_KEY_ID", s3["AWS_ACCESS_KEY_ID"].as_str()),
        (
            "AWS_SECRET_ACCESS_KEY",
            s3["AWS_SECRET_ACCESS_KEY"].as_str(),
        ),
    ];
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sentinel"))
        .arg("-C")
        .arg(&build)
        .args(["run", "--json"])
        .envs(aws)
        .env("S3_ENDPOINT", &s3["S3_ENDPOINT"])
        .env("S3_BUCKET", &s3["S3_BUCKET"])
        .env("PREFIX", &prefix)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the build: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The server watches the bucket (its credentials: the AWS chain).
    let (url, _) = bare_repo(&tmp.path().join("deployer"), &[("sentinel.yml", DEPLOYER)]);
    let config = tmp.path().join("server.toml");
    let bucket = &s3["S3_BUCKET"];
    std::fs::write(
        &config,
        format!(
            "[repos.deployer]\nurl = \"{url}\"\n[watchers.billing-dev]\nrepo = \"deployer\"\nref = \"main\"\nenvironment = \"{ENV}\"\ndomain = \"{DOMAIN}\"\nmarkers = \"s3://{bucket}/{prefix}/deploys\"\npayloads = \"s3://{bucket}/{prefix}/payloads\"\npoll_seconds = 3600\nendpoint = \"{}\"\nregion = \"{}\"\npath_style = true\n",
            s3["S3_ENDPOINT"], s3["S3_REGION"]
        ),
    )
    .unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let server = Server::start(
        &tmp.path().join("state"),
        &["--config", config.to_str().unwrap(), "--listen", &listen],
        &aws,
    );
    let c = Client::new(&server.url, &server.admin);
    let (status, v) = c
        .call(
            reqwest::Method::POST,
            "/api/v1/watchers/billing-dev/poll",
            None,
        )
        .await;
    assert_eq!(status, 200, "{v}");
    // The server's first poll may have found it already.
    let d = c.get("/api/v1/deployments?app=billing").await;
    assert_eq!(d["deployments"].as_array().unwrap().len(), 1, "{v} {d}");
    let run = d["deployments"][0]["run"].as_str().unwrap().to_string();
    let done = c.wait_final(&run).await;
    assert_eq!(done["run"]["status"], "succeeded", "{done}");
    let (_, log) = c
        .text(&format!("/api/v1/runs/{run}/stages/deploy/log"))
        .await;
    assert!(
        log.contains("deploying billing@4.2.0-7 image=img-4.2.0-7 x2 to development.example.com"),
        "{log}"
    );
    let d = c.get("/api/v1/deployments?environment=development").await;
    assert_eq!(d["current"][0]["version"], "4.2.0-7", "{d}");
    let (_, w) = c.call(reqwest::Method::GET, "/api/v1/watchers", None).await;
    assert_eq!(
        w["watchers"][0]["markers"],
        format!("s3://{bucket}/{prefix}/deploys"),
        "{w}"
    );
    server.stop();
}

#[test]
fn the_deploy_example_pipelines_are_valid() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/deploy");
    for p in ["build/sentinel.yml", "deployer/sentinel.yml"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sentinel"))
            .arg("validate")
            .arg(examples.join(p))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{p}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deployments_page_shows_each_environments_current_version() {
    common::docker().await;
    let dist = common::browser::dist();
    let tmp = tempfile::tempdir().unwrap();
    let bucket = Bucket(tmp.path().join("bucket"));
    let server = start_with(
        tmp.path(),
        &bucket,
        3600,
        &[],
        &["--web", dist.to_str().unwrap(), "--public-read"],
    );
    let c = Client::new(&server.url, &server.admin);
    bucket.publish("video-mobile", "3.1.0", &good("video-mobile", "3.1.0"));
    bucket.publish(
        "video-desktop",
        "7.0.0-2",
        &good("video-desktop", "7.0.0-2"),
    );
    bucket.publish("video-desktop", "7.0.0-1", b"not a tar");
    let v = poll(&c).await;
    for n in v["new"].as_array().unwrap() {
        if let Some(run) = n["run"].as_str() {
            assert_eq!(c.wait_final(run).await["run"]["status"], "succeeded");
        }
    }
    let b = common::browser::Browser::start().await;
    b.client
        .goto(&format!("{}/#/deployments", server.url))
        .await
        .unwrap();
    let at = |app: &str| {
        format!(r#".environment[data-environment="{ENV}"] tr[data-app="{app}"] .version"#)
    };
    b.wait_text(&at("video-mobile"), |t| t == "3.1.0", "the current version")
        .await;
    b.wait_text(
        &at("video-desktop"),
        |t| t == "7.0.0-2",
        "the current version",
    )
    .await;
    // The history: the refused payload too, with its reason.
    b.wait_text(
        ".history .status-failed",
        |t| t.contains("7.0.0-1") && t.contains("is not a .tar.gz"),
        "the refused deploy in the history",
    )
    .await;
    b.screenshot("web-deployments").await;
    b.close().await;
    server.stop();
}
