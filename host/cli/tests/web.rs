//! The results web app in a real headless Chromium:
//! 1. static: the built app and three runs (one failed, with a secret) in a
//!    bucket of the real S3 server with website hosting; the browser opens
//!    the website, sees the runs, opens the failed run, finds the failed
//!    stage marked failed in the DAG, opens its log and sees the secret as
//!    `***`, never its value; a missing results prefix shows an error
//!    naming the URL;
//! 2. live: the app served by `sentinel serve` shows a stage go from
//!    running to succeeded without a reload; signed in, it follows a log,
//!    lists a waiting run as queued, and cancels a run.
//!
//! Each step saves a screenshot under `target/screenshots/`.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::browser::{Browser, dist};
use common::server::{Client, Server, bare_repo};

const PIPELINE: &str = r#"version: 1
name: webby
box: sentinel/busybox:local
defaults:
  network: none
secrets: [WEB_SECRET]
env:
  MODE: ~
stages:
  prepare:
    steps:
      - name: fetch
        run: echo "preparing"
      - name: compile
        run: echo "compiled" > "$SENTINEL_CACHE_DIR/compiled"
    cache:
      key: web-${hash(README.txt)}
      paths: [$SENTINEL_CACHE_DIR]
  check:
    after: [prepare]
    env:
      TOKEN: ${secrets.WEB_SECRET}
    run: |
      printf '\033[32mgreen\033[0m and plain\n'
      echo "the token is $TOKEN"
      test "$MODE" = pass
  publish:
    after: [check]
    run: echo published
  flaky:
    run: |
      test -e .tried || { touch .tried; echo "first try"; exit 75; }
      echo "second try"
    retry: {attempts: 2, on: [75], backoff: 0s}
"#;

const SECRET: &str = "web-secret-value-4711";

/// The 100 MB log test loads the machine (its stage writes the log, its
/// browser renders it): it runs alone, the others together. A page that
/// must see a stage while it runs cannot wait behind it.
static HEAVY: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_site_in_the_bucket_shows_runs_failures_and_masked_logs() {
    let _light = HEAVY.read().await;
    common::docker().await;
    let dist = dist();
    let s3 = sentinel_testkit::s3_server();
    let project = common::Project::new(PIPELINE);
    let prefix = format!("web-{}", std::process::id());
    let url = format!("s3://{}/{prefix}", s3["S3_BUCKET"]);
    let endpoint = s3["S3_ENDPOINT"].clone();
    let sentinel = |args: &[&str], mode: &str| {
        Command::new(env!("CARGO_BIN_EXE_sentinel"))
            .arg("-C")
            .arg(&project.source)
            .arg("--state")
            .arg(&project.state)
            .arg("--results")
            .arg(&project.results)
            .args(args)
            .args([
                "--s3",
                &url,
                "--s3-endpoint",
                &endpoint,
                "--s3-region",
                &s3["S3_REGION"],
                "--s3-path-style",
            ])
            .env("AWS_ACCESS_KEY_ID", &s3["AWS_ACCESS_KEY_ID"])
            .env("AWS_SECRET_ACCESS_KEY", &s3["AWS_SECRET_ACCESS_KEY"])
            .env_remove("AWS_PROFILE")
            .env("MODE", mode)
            .env("WEB_SECRET", SECRET)
            .output()
            .unwrap()
    };
    for mode in ["pass", "pass", "fail"] {
        let out = sentinel(&["run"], mode);
        assert_eq!(
            out.status.code(),
            Some(if mode == "pass" { 0 } else { 1 }),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = sentinel(
        &["web", "publish", "--dist", dist.to_str().unwrap()],
        "pass",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let site =
        sentinel_testkit::website_url(&s3, &s3["S3_BUCKET"], &format!("{prefix}/index.html"));
    let b = Browser::start().await;
    b.client.goto(&site).await.unwrap();
    b.find("tr.run-row").await;
    let until = Instant::now() + Duration::from_secs(30);
    let rows = loop {
        let rows = b
            .client
            .find_all(fantoccini::Locator::Css("tr.run-row"))
            .await
            .unwrap();
        if rows.len() >= 3 || Instant::now() > until {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(rows.len(), 3, "three runs listed");
    assert!(
        b.client
            .find(fantoccini::Locator::Css(".snapshot"))
            .await
            .is_ok(),
        "marked a static snapshot"
    );
    b.screenshot("web-static-runs").await;

    // The failed run, its DAG, the failed stage.
    b.click("tr.run-row.status-failed a").await;
    b.find(r#".node[data-stage="check"]"#).await;
    b.wait_attr(r#".node[data-stage="check"]"#, "data-status", "failed")
        .await;
    b.wait_attr(r#".node[data-stage="publish"]"#, "data-status", "skipped")
        .await;
    let title = b.client.title().await.unwrap();
    assert!(title.contains("failed"), "the tab says it: {title}");
    b.screenshot("web-static-failed-run").await;

    b.click(r#".node[data-stage="check"]"#).await;
    let log = b
        .wait_text(".log", |t| t.contains("the token is"), "the log is shown")
        .await;
    assert!(log.contains("the token is ***"), "{log}");
    let html = b.client.source().await.unwrap();
    assert!(
        !html.contains(SECRET),
        "the secret's value reached the page"
    );
    // ANSI colours became a class, not escape codes.
    assert!(
        html.contains("ansi-fg-2") && !html.contains("\u{1b}["),
        "colours rendered"
    );
    b.screenshot("web-static-stage-log").await;

    // A job's page lists its steps.
    b.client.back().await.unwrap();
    b.click(r#".node[data-stage="prepare"]"#).await;
    let steps = b
        .wait_text(
            "table.steps",
            |t| t.contains("compile"),
            "the job's steps are listed",
        )
        .await;
    assert!(
        steps.contains("fetch") && steps.contains("succeeded"),
        "{steps}"
    );
    // What the job's cache did: the third run restored what the first saved.
    let cache = b
        .wait_text("dd.cache", |t| t.contains("web-"), "the cache is shown")
        .await;
    assert!(
        cache.starts_with("hit web-") && cache.contains("restored"),
        "{cache}"
    );
    // Each step's log is a collapsible section; a step links to its own.
    b.wait_attr(r#"details.section[data-step="compile"]"#, "open", "true")
        .await;
    b.click("table.steps a.step-link").await;
    let target = b
        .wait_text(
            ".log .target",
            |t| t.contains("── step"),
            "a step's link marks its header line",
        )
        .await;
    assert!(target.contains("── step fetch"), "{target}");
    b.click(r#"details.section[data-step="fetch"] > summary .text"#)
        .await;
    assert_eq!(
        b.attr(r#"details.section[data-step="fetch"]"#, "open")
            .await,
        None,
        "a section collapses"
    );
    assert!(
        b.attr(r#"details.section[data-step="compile"]"#, "open")
            .await
            .is_some(),
        "the other stays open"
    );
    b.screenshot("web-static-job-steps").await;

    // A retried stage lists its attempts, each with its exit code and log.
    b.click("nav.crumbs a:nth-of-type(2)").await;
    b.click(r#".node[data-stage="flaky"]"#).await;
    let attempts = b
        .wait_text(
            "table.attempts",
            |t| t.contains("#2"),
            "the attempts are listed",
        )
        .await;
    assert!(
        attempts.contains("#1")
            && attempts.contains("exit code 75")
            && attempts.contains("exit code 0"),
        "{attempts}"
    );
    let first_log = b.attr("table.attempts a.attempt-log", "href").await;
    assert!(
        first_log
            .as_deref()
            .is_some_and(|h| h.ends_with("/flaky.attempt-1.log")),
        "the first attempt links its own log: {first_log:?}"
    );
    b.wait_text(
        ".log",
        |t| t.contains("second try"),
        "the stage's log is the last attempt's",
    )
    .await;
    b.screenshot("web-static-attempts").await;

    // A missing results prefix: an error naming the URL.
    let missing = sentinel_testkit::website_url(
        &s3,
        &s3["S3_BUCKET"],
        &format!("no-such-prefix-{}/", std::process::id()),
    );
    b.client
        .goto(&format!("{site}?results={missing}"))
        .await
        .unwrap();
    let error = b
        .wait_text(
            ".error",
            |t| t.contains("Could not load"),
            "an error is shown",
        )
        .await;
    assert!(
        error.contains(&format!("{missing}runs/index.json")) && error.contains("404"),
        "{error}"
    );
    b.screenshot("web-missing-prefix").await;
    b.close().await;
}

/// A pipeline `name` whose one container stage `slow` prints `tick N`
/// every half second, `ticks` times.
fn ticking(name: &str, ticks: u32) -> String {
    format!(
        "version: 1\nname: {name}\nbox: sentinel/busybox:local\ndefaults:\n  network: none\nstages:\n  slow:\n    run: |\n      for i in $(seq 1 {ticks}); do echo \"tick $i\"; sleep 0.5; done\n"
    )
}

/// `sentinel serve` with the built app and repository `app` holding
/// `pipeline`, an admin client, and a browser — started before any run, as
/// its start is the slow part on a busy machine.
async fn served_app(
    pipeline: &str,
    extra: &[&str],
) -> (tempfile::TempDir, Server, Client, Browser) {
    common::docker().await;
    let dist = dist();
    let tmp = tempfile::tempdir().unwrap();
    let (repo, _) = bare_repo(&tmp.path().join("repo"), &[("sentinel.yml", pipeline)]);
    let repo_arg = format!("app={repo}");
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--repo",
        &repo_arg,
        "--web",
        dist.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let server = Server::start(&tmp.path().join("state"), &args, &[]);
    let c = Client::new(&server.url, &server.admin);
    let b = Browser::start().await;
    (tmp, server, c, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_app_follows_a_stage_live_without_reloading() {
    let _light = HEAVY.read().await;
    let (_tmp, server, c, b) =
        served_app(&ticking("live", 20), &["--public-read", "--runs", "1"]).await;
    // The page opens while its run still waits behind another (no
    // document, no events yet), then follows it once it starts.
    let ahead = c.trigger("app").await;
    c.wait_stage(&ahead, "slow", "running").await;
    let id = c.trigger("app").await;
    b.client
        .goto(&format!("{}/#/run/{id}", server.url))
        .await
        .unwrap();
    b.find(".live-badge").await;
    // Running…
    b.wait_attr(r#".node[data-stage="slow"]"#, "data-status", "running")
        .await;
    b.screenshot("web-live-running").await;
    // A mark on the page: a reload would wipe it.
    b.client
        .execute("window.sentinelMark = 42; return null;", vec![])
        .await
        .unwrap();
    b.wait_attr(r#".node[data-stage="slow"]"#, "data-status", "succeeded")
        .await;
    let mark = b
        .client
        .execute("return window.sentinelMark || null;", vec![])
        .await
        .unwrap();
    assert_eq!(mark, serde_json::json!(42), "the page was not reloaded");
    b.screenshot("web-live-succeeded").await;
    b.close().await;
    server.stop();
}

/// Without `public_read`: the app says to sign in; a token signs in (the
/// session cookie), a running stage's log follows its tail, a second run
/// waiting behind it shows as queued in the runs list, and the Cancel
/// button stops the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_in_user_follows_a_log_and_cancels_the_run() {
    let _light = HEAVY.read().await;
    let (_tmp, server, c, b) = served_app(&ticking("tail", 60), &["--runs", "1"]).await;
    let id = c.trigger("app").await;
    let stage_status = || async {
        let v = c.get(&format!("/api/v1/runs/{id}")).await;
        v["run"]["stages"][0]["status"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };

    b.client
        .goto(&format!("{}/#/run/{id}/slow", server.url))
        .await
        .unwrap();
    // No token yet: the reads are refused, and the page says so.
    b.wait_text(".error", |t| t.contains("401"), "a 401 is shown")
        .await;
    b.find("#token")
        .await
        .send_keys(&server.admin)
        .await
        .unwrap();
    b.click(".sign-in button").await;
    b.find(".sign-out").await;
    // The running stage's log follows its tail.
    b.wait_text(
        ".log",
        |t| t.contains("tick 3"),
        "the log follows the stage",
    )
    .await;
    assert_eq!(
        stage_status().await,
        "running",
        "lines arrived while the stage ran"
    );
    let follows = b
        .client
        .execute(
            "const l = document.querySelector('.log'); return l.scrollTop + l.clientHeight >= l.scrollHeight - 8;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(follows, serde_json::json!(true), "scrolled to the tail");
    b.screenshot("web-live-log-tail").await;

    // One run at a time: a second one waits, and the runs list shows it
    // queued (it is in no results index yet), above the running one.
    let waiting = c.trigger("app").await;
    b.client.goto(&format!("{}/#/", server.url)).await.unwrap();
    let row = |run: &str| format!(r#"tr[data-run="{run}"]"#);
    b.wait_attr(&row(&waiting), "class", "run-row status-queued")
        .await;
    b.wait_attr(&row(&id), "class", "run-row status-running")
        .await;
    let order = b
        .client
        .execute(
            "return [...document.querySelectorAll('tr.run-row')].map(r => r.dataset.run);",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(order, serde_json::json!([waiting, id]), "newest first");
    b.screenshot("web-live-queued").await;
    let (status, v) = c
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/runs/{waiting}/cancel"),
            None,
        )
        .await;
    assert_eq!(status, 200, "withdrawn while it waits: {v}");

    // Cancel from the run's page.
    b.client
        .goto(&format!("{}/#/run/{id}", server.url))
        .await
        .unwrap();
    b.click("button.cancel").await;
    let v = c.wait_final(&id).await;
    assert_eq!(v["run"]["status"], "cancelled", "{v}");
    b.wait_text(
        "h1",
        |t| t.contains("cancelled"),
        "the page shows it cancelled",
    )
    .await;
    b.screenshot("web-live-cancelled").await;
    b.close().await;
    server.stop();
}

/// A 100 MB log (1.2 million lines printed by a real container stage): kept
/// whole, not cut, and opened in the app at line 1,000,000 by its link —
/// the page shows a window of lines, the linked one marked; the time to the
/// marked line is printed (its goal is under 2 s; measured by the web
/// benchmark, not asserted here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_megabyte_log_opens_at_a_deep_line_link() {
    let _alone = HEAVY.write().await;
    let pipeline = "version: 1\nname: big\nbox: sentinel/busybox:local\ndefaults:\n  network: none\nstages:\n  loud:\n    run: |\n      seq 1 1200000 | awk '{printf \"line %08d of the hundred-megabyte log, padded with text to reach about eighty-odd bytes\\n\", $1}'\n";
    let (_tmp, server, c, b) = served_app(pipeline, &["--public-read"]).await;
    let id = c.trigger("app").await;
    let ended = c.wait_final(&id).await;
    assert_eq!(ended["run"]["status"], "succeeded", "{ended}");
    let doc = c.get(&format!("/results/run/{id}/loud.json")).await;
    let bytes = doc["log_bytes"].as_u64().unwrap();
    assert!(bytes > 100_000_000, "a 100 MB log: {bytes} bytes");
    assert_eq!(doc["log_cut_bytes"], 0, "kept whole: {doc}");
    let started = Instant::now();
    b.client
        .goto(&format!("{}/#/run/{id}/loud/L1000000", server.url))
        .await
        .unwrap();
    let target = b
        .wait_text(
            ".log .target",
            |t| t.contains("1000000"),
            "line 1,000,000 is marked",
        )
        .await;
    eprintln!(
        "line 1,000,000 of a {bytes}-byte log marked {:?} after the link opened",
        started.elapsed()
    );
    assert!(target.contains("line 01000000 of"), "{target}");
    let shown = b
        .client
        .find_all(fantoccini::Locator::Css(".log .line"))
        .await
        .unwrap()
        .len();
    assert!(
        shown < 2000,
        "a window of lines, not the whole log: {shown}"
    );
    b.screenshot("web-100mb-log-deep-link").await;
    // Scrolling to the end brings the last line in.
    b.client
        .execute(
            "const l = document.querySelector('.log'); l.scrollTop = l.scrollHeight; l.dispatchEvent(new Event('scroll')); return null;",
            vec![],
        )
        .await
        .unwrap();
    b.wait_text(".log", |t| t.contains("line 01200000 of"), "the last line")
        .await;
    b.close().await;
}

/// The Steps page of a live server: a step published to a folder registry
/// (settings, one secret; the hosts it may reach), pulled by a run through
/// the server's `[registries]`, listed with those facts, and linked from
/// the stage page that used it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_steps_page_lists_a_published_step_with_its_settings_and_hosts() {
    let _light = HEAVY.read().await;
    let tmp = tempfile::tempdir().unwrap();
    // A step: the sandbox's quiet test guest under a manifest of its own.
    let step = tmp.path().join("deploy-notify");
    std::fs::create_dir_all(&step).unwrap();
    std::fs::copy(
        sentinel_testkit::repo_root().join("steps/dist/guests/noop/step.wasm"),
        step.join("step.wasm"),
    )
    .unwrap();
    std::fs::write(
        step.join("step.toml"),
        "name = \"deploy-notify\"\nversion = \"1.2.0\"\ndescription = \"Tells the team a deploy went out\"\n\n\
         [settings.webhook]\nrequired = true\nsecret = true\ndescription = \"The hook's URL\"\n\n\
         [settings.channel]\ndefault = \"#deploys\"\n\n\
         [capabilities]\nworkspace = \"read\"\nhttp = [\"hooks.example.com\"]\n",
    )
    .unwrap();
    let registry = tmp.path().join("registry");
    let publish = |dir: &std::path::Path| {
        let published = Command::new(env!("CARGO_BIN_EXE_sentinel"))
            .args(["step", "publish"])
            .arg(dir)
            .args(["--owner", "acme", "--to"])
            .arg(format!("file://{}", registry.display()))
            .output()
            .unwrap();
        assert!(published.status.success(), "{published:?}");
    };
    publish(&step);
    // A second step, published and never used: listed from the registry.
    let idle = tmp.path().join("deploy-check");
    std::fs::create_dir_all(&idle).unwrap();
    std::fs::copy(step.join("step.wasm"), idle.join("step.wasm")).unwrap();
    std::fs::write(
        idle.join("step.toml"),
        "name = \"deploy-check\"\nversion = \"0.9.0\"\n[settings.url]\nrequired = true\n[capabilities]\nhttp = [\"{url}\"]\n",
    )
    .unwrap();
    publish(&idle);
    let config = tmp.path().join("server.toml");
    std::fs::write(
        &config,
        format!(
            "[registries.team]\nsteps = \"file://{}\"\n[steps]\ndefault = \"team\"\n",
            registry.display()
        ),
    )
    .unwrap();
    let pipeline = "version: 1\nname: notifying\nstages:\n  tell:\n    step: acme/deploy-notify@^1\n    with: {webhook: https://hooks.example.com/x}\n";
    let (_served, server, c, b) = served_app(
        pipeline,
        &["--config", config.to_str().unwrap(), "--public-read"],
    )
    .await;
    let id = c.trigger("app").await;
    c.wait_stage(&id, "tell", "succeeded").await;
    // The stage page says what ran and links to the step.
    b.client
        .goto(&format!("{}/#/run/{id}/tell", server.url))
        .await
        .unwrap();
    let link = b
        .wait_text(
            "a.step-page",
            |t| t.contains("deploy-notify 1.2.0"),
            "the step's link",
        )
        .await;
    assert!(
        link.starts_with("acme/deploy-notify@^1 = deploy-notify 1.2.0 (sha256:"),
        "{link}"
    );
    b.click("a.step-page").await;
    let card = r#".step[data-step="deploy-notify"]"#;
    b.wait_text(
        &format!("{card} .hosts"),
        |t| t == "hooks.example.com",
        "its hosts",
    )
    .await;
    b.wait_text(
        &format!("{card} .workspace"),
        |t| t == "read",
        "its workspace access",
    )
    .await;
    b.wait_text(
        &format!(r#"{card} .setting[data-setting="webhook"] .secret"#),
        |t| t == "secret",
        "the secret setting",
    )
    .await;
    b.wait_text(
        &format!(r#"{card} .setting[data-setting="channel"]"#),
        |t| t.contains("SENTINEL_DEPLOY_NOTIFY_CHANNEL") && t.contains("#deploys"),
        "the setting with a default",
    )
    .await;
    b.wait_text(
        &format!("{card} .source"),
        |t| t.contains("acme/deploy-notify/1.2.0"),
        "where it came from",
    )
    .await;
    b.screenshot("web-steps-page").await;
    // The list holds the bundled steps too, and what the registry holds.
    b.client
        .goto(&format!("{}/#/steps", server.url))
        .await
        .unwrap();
    b.wait_text(
        r#".step[data-step="deploy-check"] .source"#,
        |t| t.ends_with("/registry/acme/deploy-check/0.9.0"),
        "a step only the registry has",
    )
    .await;
    b.wait_text(
        r#".step[data-step="deploy-check"] .hosts"#,
        |t| t == "{url}",
        "its hosts",
    )
    .await;
    b.wait_text(
        r#".step[data-step="jq-pluck"] .source"#,
        |t| t == "bundled",
        "a bundled step",
    )
    .await;
    b.close().await;
    server.stop();
}
