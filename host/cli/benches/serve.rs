//! Benchmark (not a test) of `sentinel serve`, in one run against a real
//! server process: `wrk` on `GET /api/v1/runs` with 10,000 stored runs
//! (p99 latency and requests/s, against `GET /health` on the same server
//! as the baseline), and the trigger-to-start latency of a queued
//! wasm-only run (from the API call to its stage starting) over 100 runs
//! against a `git clone` of the same repository, and the server's memory
//! with the stored runs, with 100 queued, and across 1,000 more runs —
//! each figure beside its goal.
//! Run with `cargo bench -p sentinel --bench serve` (needs `wrk`:
//! `scripts/setup.sh` installs it, and `scripts/build-steps.sh`).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use chrono::Utc;
use sentinel_api::{RunDoc, RunStatus, SCHEMA_VERSION, Trigger, TriggerKind};
use sentinel_engine::ports::Store;
use sentinel_store::SledStore;
use sentinel_store::tokens::Scope;

#[path = "../tests/common/server.rs"]
mod server;
#[path = "common/wrk.rs"]
mod wrk;

use wrk::wrk;

const STORED: usize = 10_000;

fn git(dir: &Path, args: &[&str]) {
    let ok = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "b")
        .env("GIT_AUTHOR_EMAIL", "b@example.invalid")
        .env("GIT_COMMITTER_NAME", "b")
        .env("GIT_COMMITTER_EMAIL", "b@example.invalid")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("git")
        .success();
    assert!(ok, "git {args:?}");
}

/// The resident set of process `pid`, in MiB.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib / 1024.0
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    // 10,000 stored runs and a read token.
    let token = {
        let db = SledStore::try_open(&state).unwrap();
        let now = Utc::now();
        for i in 0..STORED {
            let doc = RunDoc {
                schema: SCHEMA_VERSION,
                id: sentinel_engine::docs::new_run_id(),
                pipeline: format!("pipeline-{}", i % 7),
                status: if i % 10 == 0 {
                    RunStatus::Failed
                } else {
                    RunStatus::Succeeded
                },
                reason: None,
                trigger: Trigger {
                    kind: TriggerKind::Api,
                    by: None,
                },
                git: None,
                created: now,
                started: Some(now),
                finished: Some(now),
                duration_ms: Some(1234),
                stages: Vec::new(),
                sentinel: "bench".into(),
                from_run: None,
                deploy: None,
                upstream: None,
                pull_request: None,
            };
            db.put_run(&doc, i + 1 == STORED).await.unwrap();
        }
        db.create_token("bench", Scope::Trigger).await.unwrap().0
    };

    // A repository with a wasm-only pipeline.
    let repo = tmp.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(
        repo.join("sentinel.yml"),
        "version: 1\nname: wasm-only\nstages:\n  pluck:\n    step: jq-pluck@1\n    with:\n      input: '{\"a\": 1}'\n      filter: .a\n",
    )
    .unwrap();
    git(&repo, &["init", "--quiet", "--initial-branch=main"]);
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "--quiet", "-m", "bench"]);
    let server = wrk::unlimited_server(
        tmp.path(),
        &state,
        &format!("[repos.app]\nurl = \"file://{}\"\n", repo.display()),
    );
    let url = server.url.clone();

    println!("GET /api/v1/runs with {STORED} stored runs (wrk -t2 -c16 -d10s, same server):");
    let (h_rps, h_p50, h_p99) = wrk(&format!("{url}/health"), &token);
    let (rps, p50, p99) = wrk(&format!("{url}/api/v1/runs"), &token);
    let (rps500, p50_500, p99_500) = wrk(&format!("{url}/api/v1/runs?limit=500"), &token);
    println!(
        "  GET /health (baseline)        {h_rps:>9.0} req/s  p50 {h_p50:.2} ms  p99 {h_p99:.2} ms"
    );
    println!(
        "  GET /api/v1/runs (50/page)    {rps:>9.0} req/s  p50 {p50:.2} ms  p99 {p99:.2} ms   ratio to /health: {:.2}× the req/s, {:.1}× the p99",
        rps / h_rps,
        p99 / h_p99
    );
    println!(
        "  GET /api/v1/runs?limit=500    {rps500:>9.0} req/s  p50 {p50_500:.2} ms  p99 {p99_500:.2} ms   ratio to /health: {:.3}× the req/s, {:.1}× the p99",
        rps500 / h_rps,
        p99_500 / h_p99
    );
    println!(
        "  goals (50/page): >= 20,000 req/s: {:.2}× the goal; p99 < 5 ms: {:.2}× the limit",
        rps / 20_000.0,
        p99 / 5.0
    );
    let (m_rps, m_p50, m_p99) = wrk(&format!("{url}/metrics"), &token);
    println!(
        "  GET /metrics                  {m_rps:>9.0} req/s  p50 {m_p50:.2} ms  p99 {m_p99:.2} ms   ratio to /health: {:.2}× the req/s (runs counted once, then kept)",
        m_rps / h_rps
    );

    // Memory: with the stored runs, then with 100 runs queued at once.
    let pid = server.child.id();
    let rss_stored = rss_mib(pid);
    let c = server::Client::new(&url, &token);
    let trigger = || c.trigger("app");
    let c = &c;
    let ended = |id: String| async move {
        let v = c.wait_final(&id).await;
        assert_eq!(v["run"]["status"], "succeeded", "{v}");
        v
    };
    let mut batch = Vec::new();
    for _ in 0..100 {
        batch.push(trigger().await);
    }
    let rss_queued = rss_mib(pid);
    for id in batch.drain(..) {
        ended(id).await;
    }

    // Trigger-to-start of a queued wasm-only run, one at a time, on an idle server.
    let mut latencies = Vec::new();
    let rounds = 101;
    for i in 0..rounds {
        let t0 = Utc::now();
        let v = ended(trigger().await).await;
        let s = v["stages"][0]["started"].as_str().unwrap();
        let started = chrono::DateTime::parse_from_rfc3339(s).unwrap();
        let ms = (started.with_timezone(&Utc) - t0)
            .num_microseconds()
            .unwrap() as f64
            / 1000.0;
        // The first run warms the server (the step's compile follows its start): apart.
        if i == 0 {
            println!("\ntrigger-to-start, first run after start: {ms:.1} ms");
        } else {
            latencies.push(ms);
        }
    }
    let mut clones = Vec::new();
    for i in 0..20 {
        let dest = tmp.path().join(format!("clone-{i}"));
        let t = Instant::now();
        git(
            tmp.path(),
            &[
                "clone",
                "--quiet",
                &format!("file://{}", repo.display()),
                dest.to_str().unwrap(),
            ],
        );
        clones.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let clone_p50 = pct(&mut clones, 0.5);
    let (l50, l99) = (pct(&mut latencies, 0.5), pct(&mut latencies, 0.99));
    println!(
        "trigger-to-start of a queued wasm-only run ({} runs, one at a time, idle server):",
        latencies.len()
    );
    println!("  baseline: `git clone` of the same repository, p50 {clone_p50:.1} ms");
    println!(
        "  p50 {l50:>7.1} ms  (goal < 50 ms: {:.2}× the limit; {:.2}× the clone)",
        l50 / 50.0,
        l50 / clone_p50
    );
    println!(
        "  p99 {l99:>7.1} ms  (goal < 150 ms: {:.2}× the limit)",
        l99 / 150.0
    );

    // Memory across 1,000 more runs (ten at a time): flat, no growth per run.
    let mut marks = vec![(0usize, rss_mib(pid))];
    for round in 1..=100 {
        for _ in 0..10 {
            batch.push(trigger().await);
        }
        for id in batch.drain(..) {
            ended(id).await;
        }
        if round % 25 == 0 {
            marks.push((round * 10, rss_mib(pid)));
        }
    }
    println!("memory (the server's resident set):");
    println!("  with {STORED} stored runs             : {rss_stored:>7.1} MiB");
    println!("  with 100 runs queued besides         : {rss_queued:>7.1} MiB");
    for (n, rss) in &marks {
        println!("  after {n:>4} more runs               : {rss:>7.1} MiB");
    }
    let (first, last) = (marks[1].1, marks[marks.len() - 1].1);
    println!(
        "  growth from run 250 to run 1,000     : {:>7.1} KiB per run (goal: flat)",
        (last - first) * 1024.0 / 750.0
    );
    server.stop();
}
