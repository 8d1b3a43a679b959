//! Benchmark (not a test) of the results web app in headless Chromium: the
//! time from navigation to a rendered runs list of 1,000 runs (ten index
//! pages, fetched and drawn), against the default first page of 100 runs
//! measured in the same run, both served by `sentinel serve`; and a stage
//! with a 100 MB log (1.2 million lines): the time to its first painted
//! lines and to line 1,000,000 marked by its link, against a stage of 1,000
//! lines (goal: under 2 s).
//! Run with `cargo bench -p sentinel --bench web` after `scripts/build-web.sh`
//! (needs `chromium` and `chromium-driver`: `scripts/setup.sh`).

use std::process::{Command, Stdio};
use std::time::Duration;

use chrono::Utc;
use fantoccini::ClientBuilder;
use sentinel_api::{
    GitContext, RunDoc, RunStatus, RunSummary, SCHEMA_VERSION, Trigger, TriggerKind,
};
use sentinel_engine::ResultsSink;

#[path = "../tests/common/server.rs"]
mod server;

const RUNS: usize = 1000;
const ROUNDS: usize = 15;

async fn measure(client: &fantoccini::Client, url: &str) -> Vec<f64> {
    let mut times = Vec::new();
    for _ in 0..ROUNDS {
        client.goto("about:blank").await.unwrap();
        client.goto(url).await.unwrap();
        let t = loop {
            let v = client
                .execute("return window.sentinelRendered || null;", vec![])
                .await
                .unwrap();
            if let Some(t) = v.as_f64() {
                break t;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        times.push(t);
    }
    times.sort_by(f64::total_cmp);
    times
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dist = root.join("dist");
    assert!(
        dist.join("index.html").is_file(),
        "run scripts/build-web.sh first"
    );
    let tmp = tempfile::tempdir().unwrap();
    let results = tmp.path().join("results");
    let sink = sentinel_results::LocalSink::new(&results);
    let now = Utc::now();
    for i in 0..RUNS {
        let run = RunDoc {
            schema: SCHEMA_VERSION,
            id: sentinel_engine::docs::new_run_id(),
            pipeline: format!("service-{}", i % 9),
            status: if i % 11 == 0 {
                RunStatus::Failed
            } else {
                RunStatus::Succeeded
            },
            reason: None,
            trigger: Trigger {
                kind: TriggerKind::Webhook,
                by: None,
            },
            git: Some(GitContext {
                repo: None,
                branch: Some(["main", "dev", "release"][i % 3].into()),
                commit: Some(format!("{:040x}", i * 7919)),
            }),
            created: now,
            started: Some(now),
            finished: Some(now),
            duration_ms: Some(1000 + i as u64),
            stages: Vec::new(),
            sentinel: "bench".into(),
            from_run: None,
            deploy: None,
            upstream: None,
            pull_request: None,
        };
        sink.update_index(&RunSummary::of(&run)).await.unwrap();
    }
    // A stage with a 100 MB log, and one with 1,000 lines.
    let mut logged = Vec::new();
    for lines in [1_000usize, 1_200_000] {
        let id = sentinel_engine::docs::new_run_id();
        let name: sentinel_api::StageName = "loud".parse().unwrap();
        let mut text = String::with_capacity(lines * 92);
        for n in 1..=lines {
            text.push_str(&format!(
                "line {n:08} of the hundred-megabyte log, padded with text to reach about eighty-odd bytes\n"
            ));
        }
        let bytes = text.len() as u64;
        let key = sink
            .put_log(
                &id,
                &name,
                None,
                &sentinel_engine::ports::LogBody::Memory(text.into_bytes()),
            )
            .await
            .unwrap();
        let stage: sentinel_api::StageDoc = serde_json::from_value(serde_json::json!({
            "schema": 1, "run_id": id, "name": "loud", "kind": "container",
            "status": "succeeded", "when": "on_success", "needs": [],
            "log": key, "log_bytes": bytes, "inputs": {}
        }))
        .unwrap();
        sink.put_stage(&stage).await.unwrap();
        logged.push((id, lines, bytes));
    }
    let state = tmp.path().join("state");
    let server = server::Server::start(
        &state,
        &[
            "--listen",
            "127.0.0.1:0",
            "--public-read",
            "--web",
            dist.to_str().unwrap(),
        ],
        &[
            ("SENTINEL_LOG", "warn"),
            ("SENTINEL_RESULTS", results.to_str().unwrap()),
        ],
    );
    let url = server.url.clone();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut driver = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver (scripts/setup.sh installs it)");
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(50));
    }
    let profile = tempfile::tempdir().unwrap();
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({ "binary": "/usr/bin/chromium", "args": [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900",
            format!("--user-data-dir={}", profile.path().display())
        ]}),
    );
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .unwrap();
    let rows = |n: usize| format!("{url}/?limit={n}#/");
    // Warm the cache of the app's files first.
    measure(&client, &rows(100)).await;
    let page = measure(&client, &rows(100)).await;
    let all = measure(&client, &rows(RUNS)).await;
    let count = client
        .execute(
            "return document.querySelectorAll('tr.run-row').length;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(count, serde_json::json!(RUNS), "all runs rendered");
    let p = |v: &[f64], q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    println!("runs list, navigation → rendered rows, {ROUNDS} loads each (headless Chromium):");
    println!(
        "  100 runs (first index page, baseline): p50 {:.0} ms, max {:.0} ms",
        p(&page, 0.5),
        p(&page, 1.0)
    );
    println!(
        "  {RUNS} runs (10 index pages):            p50 {:.0} ms, max {:.0} ms  → {:.2}× the first page (goal < 500 ms)",
        p(&all, 0.5),
        p(&all, 1.0),
        p(&all, 0.5) / p(&page, 0.5)
    );
    // Navigation → the first lines painted, and → line 1,000,000 marked.
    let until = |css: &'static str| {
        let client = client.clone();
        async move {
            let t = std::time::Instant::now();
            loop {
                let found = client
                    .execute(
                        &format!("return !!document.querySelector('{css}');"),
                        vec![],
                    )
                    .await
                    .unwrap();
                if found == serde_json::json!(true) {
                    break t.elapsed().as_secs_f64() * 1e3;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    let mut paint = Vec::new();
    for (id, _, _) in &logged {
        let mut times = Vec::new();
        for _ in 0..5 {
            client.goto("about:blank").await.unwrap();
            client
                .goto(&format!("{url}/#/run/{id}/loud"))
                .await
                .unwrap();
            times.push(until(".log .line").await);
        }
        times.sort_by(f64::total_cmp);
        paint.push(times[2]);
    }
    let (big, lines, bytes) = &logged[1];
    let mut deep = Vec::new();
    for _ in 0..5 {
        client.goto("about:blank").await.unwrap();
        client
            .goto(&format!("{url}/#/run/{big}/loud/L1000000"))
            .await
            .unwrap();
        deep.push(until(".log .target").await);
    }
    deep.sort_by(f64::total_cmp);
    println!("a stage's log, navigation → painted (median of 5, headless Chromium):");
    println!(
        "  1,000 lines (baseline):           first lines {:.0} ms",
        paint[0]
    );
    println!(
        "  {lines} lines, {} MB: first lines {:.0} ms ({:.1}× the baseline), line 1,000,000 by its link {:.0} ms (goal < 2,000 ms)",
        bytes / 1_000_000,
        paint[1],
        paint[1] / paint[0],
        deep[2]
    );
    let _ = client.close().await;
    let _ = driver.kill();
    let _ = driver.wait();
    server.stop();
}
