//! The outbox on sled: results written while the sink is away wait durably
//! (files copied to the spool folder), survive a restart of the process's
//! state, and go out in the order they were written once the sink answers.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use sentinel_api::{RunDoc, RunId, RunStatus, keys};
use sentinel_engine::fake::{MemSink, run_doc};
use sentinel_engine::log::LogBody;
use sentinel_engine::outbox::OutboxSink;
use sentinel_engine::ports::{Outbox, ResultsSink};
use sentinel_store::{OpenError, SledStore};

/// Opens the database, waiting for an earlier handle's last clone to go.
async fn open(dir: &std::path::Path) -> SledStore {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        match SledStore::try_open(dir) {
            Ok(s) => return s,
            Err(OpenError::Locked(_)) if Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_results_survive_a_restart_and_go_out_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let (db, spool) = (tmp.path().join("db"), tmp.path().join("spool"));
    let mem = Arc::new(MemSink::default());
    let run: RunId = "01JDX3K6Q2T8W9V5M4N3P2R1S0".parse().unwrap();
    let stage = "build".parse().unwrap();
    let live_log = tmp.path().join("build.log");
    std::fs::write(&live_log, "compiling\n").unwrap();

    mem.away.store(true, Ordering::SeqCst);
    {
        let store = open(&db).await;
        let sink = OutboxSink::start(
            mem.clone(),
            Arc::new(store) as Arc<dyn Outbox>,
            spool.clone(),
        )
        .await;
        sink.put_log(&run, &stage, None, &LogBody::File(live_log.clone()))
            .await
            .unwrap();
        sink.put_log(
            &run,
            &"test".parse().unwrap(),
            None,
            &LogBody::Memory(b"ok\n".to_vec()),
        )
        .await
        .unwrap();
        sink.put_run(&run_doc(&run, RunStatus::Running))
            .await
            .unwrap();
        sink.put_run(&run_doc(&run, RunStatus::Succeeded))
            .await
            .unwrap();
        assert_eq!(sink.waiting(), 4);
        assert!(mem.writes.lock().unwrap().is_empty());
    }
    // The run folder goes away with the run: the outbox kept its own copy.
    std::fs::remove_file(&live_log).unwrap();

    // A new process (the same database) finds them and, once the sink
    // answers, sends them in order.
    mem.away.store(false, Ordering::SeqCst);
    let store = open(&db).await;
    assert_eq!(
        Outbox::len(&store),
        4,
        "nothing was lost across the restart"
    );
    let sink = OutboxSink::start(
        mem.clone(),
        Arc::new(store) as Arc<dyn Outbox>,
        spool.clone(),
    )
    .await;
    let until = Instant::now() + Duration::from_secs(15);
    while sink.waiting() > 0 {
        assert!(Instant::now() < until, "{} still waiting", sink.waiting());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let writes = mem.writes.lock().unwrap().clone();
    assert_eq!(
        writes,
        vec![
            keys::stage_log(&run, &stage),
            keys::stage_log(&run, &"test".parse().unwrap()),
            keys::run_doc(&run),
            keys::run_doc(&run),
        ]
    );
    let objects = mem.objects.lock().unwrap();
    assert_eq!(objects[&keys::stage_log(&run, &stage)], b"compiling\n");
    let last: RunDoc = serde_json::from_slice(&objects[&keys::run_doc(&run)]).unwrap();
    assert_eq!(
        last.status,
        RunStatus::Succeeded,
        "the newest run.json is the last written"
    );
    assert_eq!(
        std::fs::read_dir(&spool).map(|d| d.count()).unwrap_or(0),
        0,
        "spooled files are removed once sent"
    );
}

#[tokio::test]
async fn results_go_straight_through_while_the_sink_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemSink::default());
    let store = open(&tmp.path().join("db")).await;
    let sink = OutboxSink::start(
        mem.clone(),
        Arc::new(store) as Arc<dyn Outbox>,
        tmp.path().join("spool"),
    )
    .await;
    let run: RunId = "01JDX3K6Q2T8W9V5M4N3P2R1S0".parse().unwrap();
    sink.put_run(&run_doc(&run, RunStatus::Running))
        .await
        .unwrap();
    assert_eq!(sink.waiting(), 0);
    assert_eq!(mem.writes.lock().unwrap().len(), 1);
    assert!(!tmp.path().join("spool").exists(), "nothing spooled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_refused_for_good_is_parked_without_blocking_other_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let mem = Arc::new(MemSink::default());
    let store = open(&tmp.path().join("db")).await;
    let sink = OutboxSink::start(
        mem.clone(),
        Arc::new(store.clone()) as Arc<dyn Outbox>,
        tmp.path().join("spool"),
    )
    .await;
    let bad: RunId = "01JDX3K6Q2T8W9V5M4N3P2R1S0".parse().unwrap();
    let good: RunId = "01JDX3K6Q2T8W9V5M4N3P2R1S1".parse().unwrap();
    mem.refused.lock().unwrap().push(bad.clone());
    // The refused run's result waits; another run's, written after it, too
    // (the order holds) — until the refused one is parked.
    sink.put_run(&run_doc(&bad, RunStatus::Running))
        .await
        .unwrap();
    sink.put_run(&run_doc(&good, RunStatus::Running))
        .await
        .unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    while sink.waiting() > 0 {
        assert!(Instant::now() < until, "{} still waiting", sink.waiting());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(sink.parked(), 1, "the refused result is kept, parked");
    assert!(
        mem.objects
            .lock()
            .unwrap()
            .contains_key(&keys::run_doc(&good)),
        "the other run's result went out"
    );
    // A later result of the parked run waits behind it (its order holds);
    // other runs go straight through.
    sink.put_run(&run_doc(&bad, RunStatus::Succeeded))
        .await
        .unwrap();
    sink.put_run(&run_doc(&good, RunStatus::Succeeded))
        .await
        .unwrap();
    assert_eq!((sink.waiting(), sink.parked()), (0, 2));
    let parked = store.parked().await.unwrap();
    assert!(parked.iter().all(|p| p.item.run() == &bad));
    assert!(parked[0].reason.contains("403"), "{}", parked[0].reason);

    // Retried once the sink accepts it: both go out, in order.
    mem.refused.lock().unwrap().clear();
    assert_eq!(sink.retry_parked().await.unwrap(), 2);
    assert!(sink.settle(Duration::from_secs(30)).await);
    assert_eq!(sink.parked(), 0);
    let doc: RunDoc =
        serde_json::from_slice(&mem.objects.lock().unwrap()[&keys::run_doc(&bad)]).unwrap();
    assert_eq!(doc.status, RunStatus::Succeeded, "the newer one last");
}
