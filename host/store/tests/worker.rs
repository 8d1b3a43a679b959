//! The queue worker over sled with the fake executor: queued runs run with
//! their accepted ids, at most `runs` at once, and leave the queue when
//! final; a run whose worker died before it started ends `interrupted` (it
//! has a document) and is queued again as a new attempt while attempts
//! remain; a request that cannot be resolved ends `failed` with the reason.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use sentinel_api::{RunId, RunStatus, Trigger, TriggerKind};
use sentinel_engine::fake::{FakeExecutor, MemSink};
use sentinel_engine::lease::Owner;
use sentinel_engine::ports::{QueueEntry, RunQueue, Store};
use sentinel_engine::queue::{Cancelled, Resolve, Worker, WorkerConfig};
use sentinel_engine::{Engine, EngineConfig, RunRequest};
use sentinel_store::SledStore;
use tokio_util::sync::CancellationToken;

fn entry(pipeline: &str) -> QueueEntry {
    QueueEntry {
        run_id: sentinel_engine::docs::new_run_id(),
        pipeline: "queued".into(),
        trigger: Trigger {
            kind: TriggerKind::Api,
            by: Some("test".into()),
        },
        request: serde_json::json!({ "pipeline": pipeline }),
        attempt: 1,
        enqueued: Utc::now(),
        claim: None,
    }
}

/// Reads the pipeline from the request (a server would fetch a repository).
fn resolve(src: std::path::PathBuf) -> Resolve {
    Arc::new(move |e: QueueEntry| {
        let src = src.clone();
        Box::pin(async move {
            let yaml = e.request["pipeline"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let plan = sentinel_pipeline::parse_str_with(
                &yaml,
                "sentinel.yml",
                "queued",
                &sentinel_pipeline::NoSteps,
                &src,
            )
            .map_err(|d| {
                sentinel_engine::ResolveError::permanent(format!("invalid pipeline: {d}"))
            })?;
            Ok(RunRequest::local(plan, src))
        })
    })
}

struct Setup {
    _tmp: tempfile::TempDir,
    store: SledStore,
    exec: Arc<FakeExecutor>,
    worker: Arc<Worker>,
}

fn setup(runs: usize, max_attempts: u32) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let store = SledStore::try_open(&tmp.path().join("db")).unwrap();
    let exec = Arc::new(FakeExecutor::default());
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let engine = Engine {
        exec: exec.clone(),
        store: Arc::new(store.clone()),
        sink: Arc::new(MemSink::default()),
        config: EngineConfig {
            jobs: 4,
            state_dir: tmp.path().join("state"),
            keep_workspace: false,
            keep_files: sentinel_engine::EngineConfig::KEEP_FILES,
        },
    };
    let worker = Worker::new(
        engine,
        Arc::new(store.clone()),
        WorkerConfig {
            runs,
            max_attempts,
            claim_for: Duration::from_secs(3),
            disk: None,
        },
        resolve(src),
        Arc::new(|_, _| {}),
    );
    Setup {
        _tmp: tmp,
        store,
        exec,
        worker,
    }
}

const SLEEPY: &str = "version: 1\nbox: fake\nstages:\n  work:\n    run: sleep 200\n";

async fn wait_final(store: &SledStore, id: &RunId) -> RunStatus {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(r) = store.get_run(id).await.unwrap()
            && r.status.is_final()
        {
            return r.status;
        }
        assert!(Instant::now() < until, "run {id} did not end");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_runs_run_with_their_ids_a_few_at_a_time() {
    let s = setup(2, 1);
    let entries: Vec<QueueEntry> = (0..5).map(|_| entry(SLEEPY)).collect();
    for e in &entries {
        s.store.enqueue(e).await.unwrap();
    }
    let stop = CancellationToken::new();
    let serving = tokio::spawn(s.worker.clone().serve(stop.clone()));
    for e in &entries {
        assert_eq!(wait_final(&s.store, &e.run_id).await, RunStatus::Succeeded);
    }
    assert_eq!(
        s.exec.max_running.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "two runs at a time"
    );
    stop.cancel();
    serving.await.unwrap();
    // Stopped (it waits for its runs): nothing is left in the queue.
    assert_eq!(RunQueue::waiting(&s.store).await.unwrap(), 0);
    let later = Utc::now() + chrono::Duration::days(1);
    assert!(
        s.store
            .take_abandoned(later, &|_: &Owner| true)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Queues `e` and claims it for a worker that is gone; that worker.
async fn claimed_by_the_dead(s: &Setup, e: &QueueEntry) -> Owner {
    s.store.enqueue(e).await.unwrap();
    let dead = Owner {
        pid: 999_999,
        start_ticks: 1,
        boot_id: "gone".into(),
        pid_ns: String::new(),
    };
    s.store
        .claim(&dead, Utc::now() + chrono::Duration::seconds(60))
        .await
        .unwrap()
        .unwrap();
    dead
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_of_a_dead_worker_are_interrupted_and_tried_again() {
    let s = setup(1, 2);
    let lost = entry(SLEEPY);
    let dead = claimed_by_the_dead(&s, &lost).await;

    let again = s.worker.reclaim().await.unwrap();
    let run = s.store.get_run(&lost.run_id).await.unwrap().unwrap();
    assert_eq!(
        run.status,
        RunStatus::Interrupted,
        "it has a document, interrupted"
    );
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempt, 2);
    assert_ne!(again[0].run_id, lost.run_id, "a new attempt is a new run");

    let stop = CancellationToken::new();
    let serving = tokio::spawn(s.worker.clone().serve(stop.clone()));
    assert_eq!(
        wait_final(&s.store, &again[0].run_id).await,
        RunStatus::Succeeded
    );
    stop.cancel();
    serving.await.unwrap();

    // The last attempt is not queued again.
    let last = QueueEntry {
        attempt: 2,
        ..entry(SLEEPY)
    };
    s.store.enqueue(&last).await.unwrap();
    s.store
        .claim(&dead, Utc::now() + chrono::Duration::seconds(60))
        .await
        .unwrap();
    assert!(s.worker.reclaim().await.unwrap().is_empty());
}

/// A server that died after a run ended but before its queue entry was
/// removed: the run is not run again, and keeps its outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_ended_before_its_server_died_is_not_run_again() {
    let s = setup(1, 3);
    let done = entry(SLEEPY);
    claimed_by_the_dead(&s, &done).await;
    let doc = sentinel_engine::fake::run_doc(&done.run_id, RunStatus::Succeeded);
    s.store.put_run(&doc, true).await.unwrap();
    assert!(s.worker.reclaim().await.unwrap().is_empty(), "not again");
    let run = s.store.get_run(&done.run_id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Succeeded);
    assert_eq!(RunQueue::waiting(&s.store).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_cannot_start_fails_with_the_reason() {
    let s = setup(1, 1);
    let bad = entry("version: 1\nstages: [oops\n");
    s.store.enqueue(&bad).await.unwrap();
    let stop = CancellationToken::new();
    let serving = tokio::spawn(s.worker.clone().serve(stop.clone()));
    assert_eq!(wait_final(&s.store, &bad.run_id).await, RunStatus::Failed);
    let run = s.store.get_run(&bad.run_id).await.unwrap().unwrap();
    assert!(
        run.reason
            .as_deref()
            .unwrap_or_default()
            .contains("invalid pipeline"),
        "{:?}",
        run.reason
    );
    stop.cancel();
    serving.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_running_run_and_withdraws_a_waiting_one() {
    const LONG: &str = "version: 1\nbox: fake\nstages:\n  work:\n    run: sleep 60000\n";
    let s = setup(1, 1);
    let (going, waiting) = (entry(LONG), entry(LONG));
    s.store.enqueue(&going).await.unwrap();
    s.store.enqueue(&waiting).await.unwrap();
    let stop = CancellationToken::new();
    let serving = tokio::spawn(s.worker.clone().serve(stop.clone()));
    let until = Instant::now() + Duration::from_secs(20);
    while s.worker.running() == 0 {
        assert!(Instant::now() < until, "the first run did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        s.worker.cancel(&waiting.run_id).await.unwrap(),
        Cancelled::Withdrawn
    );
    let run = s.store.get_run(&waiting.run_id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Cancelled);
    assert!(run.stages.is_empty() && run.started.is_none());
    assert!(s.store.get(&waiting.run_id).await.unwrap().is_none());

    assert_eq!(
        s.worker.cancel(&going.run_id).await.unwrap(),
        Cancelled::Running
    );
    assert_eq!(
        wait_final(&s.store, &going.run_id).await,
        RunStatus::Cancelled
    );
    // Final: nothing left to cancel, even while the worker may still be
    // releasing the run (what a caller reads agrees with the answer).
    assert_eq!(
        s.worker.cancel(&going.run_id).await.unwrap(),
        Cancelled::NotHere
    );
    stop.cancel();
    serving.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_idempotency_key_queues_one_run_among_concurrent_callers() {
    let s = setup(1, 1);
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let store = s.store.clone();
        calls.spawn(async move {
            store
                .enqueue_once("delivery-1", &entry(SLEEPY))
                .await
                .unwrap()
        });
    }
    let mut ids = std::collections::BTreeSet::new();
    let mut queued = 0;
    while let Some(r) = calls.join_next().await {
        let (id, fresh) = r.unwrap();
        ids.insert(id);
        queued += usize::from(fresh);
    }
    assert_eq!((ids.len(), queued), (1, 1), "one run, queued once");
    assert_eq!(RunQueue::waiting(&s.store).await.unwrap(), 1);
    let id = ids.into_iter().next().unwrap();
    assert!(s.store.request_of(&id).unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_ids_older_than_the_cutoff_are_forgotten() {
    let s = setup(1, 1);
    let days_ago = |d: i64| {
        let at = Utc::now() - chrono::Duration::days(d);
        let id = ulid::Ulid::from_parts(at.timestamp_millis() as u64, 7);
        id.to_string().parse::<RunId>().unwrap()
    };
    let old = QueueEntry {
        run_id: days_ago(40),
        ..entry(SLEEPY)
    };
    let recent = QueueEntry {
        run_id: days_ago(2),
        ..entry(SLEEPY)
    };
    s.store.enqueue_once("old", &old).await.unwrap();
    s.store.enqueue_once("recent", &recent).await.unwrap();
    let cutoff = Utc::now() - chrono::Duration::days(30);
    assert_eq!(s.store.prune_deliveries(cutoff).await.unwrap(), 1);
    assert_eq!(s.store.prune_deliveries(cutoff).await.unwrap(), 0, "once");
    // The recent key still answers with its run; the old one is free again.
    let (id, fresh) = s
        .store
        .enqueue_once("recent", &entry(SLEEPY))
        .await
        .unwrap();
    assert_eq!((id, fresh), (recent.run_id.clone(), false));
    let again = entry(SLEEPY);
    let (id, fresh) = s.store.enqueue_once("old", &again).await.unwrap();
    assert_eq!((id, fresh), (again.run_id.clone(), true));
}
