//! The durable run queue on sled: first in first out, one worker per run
//! even when many claim at once, claims renewed only by their owner, runs of
//! dead or late workers taken back, and everything still there after the
//! database is reopened.

use std::sync::Arc;

use chrono::{Duration, Utc};
use sentinel_api::{RunId, Trigger, TriggerKind};
use sentinel_engine::lease::Owner;
use sentinel_engine::ports::{QueueEntry, RunQueue};
use sentinel_store::SledStore;

fn id(i: u32) -> RunId {
    format!("01JDX3K6Q2T8W9V5M4N3P{i:05}").parse().unwrap()
}

fn entry(i: u32) -> QueueEntry {
    QueueEntry {
        run_id: id(i),
        pipeline: "app".into(),
        trigger: Trigger {
            kind: TriggerKind::Api,
            by: None,
        },
        request: serde_json::json!({"repo": "app", "ref": format!("refs/heads/b{i}")}),
        attempt: 1,
        enqueued: Utc::now(),
        claim: None,
    }
}

fn other_owner() -> Owner {
    Owner {
        pid: 999_999,
        start_ticks: 1,
        boot_id: "another-boot".into(),
        pid_ns: String::new(),
    }
}

#[tokio::test]
async fn first_in_first_out_and_durable() {
    let tmp = tempfile::tempdir().unwrap();
    let me = Owner::current();
    let later = Utc::now() + Duration::seconds(30);
    {
        let q = SledStore::try_open(tmp.path()).unwrap();
        for i in 0..3 {
            q.enqueue(&entry(i)).await.unwrap();
        }
        let dup = q.enqueue(&entry(1)).await.unwrap_err();
        assert!(dup.to_string().contains("already queued"), "{dup}");
        let first = q.claim(&me, later).await.unwrap().unwrap();
        assert_eq!(first.run_id, id(0));
        assert_eq!(first.claim.as_ref().unwrap().owner, me);
        assert_eq!(q.waiting().await.unwrap(), 2);
    }
    // Reopened (a restart): the claim and the waiting runs are still there.
    let q = SledStore::try_open(tmp.path()).unwrap();
    assert_eq!(q.waiting().await.unwrap(), 2);
    assert_eq!(q.claim(&me, later).await.unwrap().unwrap().run_id, id(1));
    assert_eq!(q.claim(&me, later).await.unwrap().unwrap().run_id, id(2));
    assert!(q.claim(&me, later).await.unwrap().is_none());
    q.finish(&id(0)).await.unwrap();
    assert!(!q.renew(&id(0), &me, later).await.unwrap(), "finished");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_workers_never_get_the_same_run() {
    let tmp = tempfile::tempdir().unwrap();
    let q = Arc::new(SledStore::try_open(tmp.path()).unwrap());
    for i in 0..5 {
        q.enqueue(&entry(i)).await.unwrap();
    }
    let later = Utc::now() + Duration::seconds(30);
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let q = q.clone();
        tasks.push(tokio::spawn(async move {
            q.claim(&Owner::current(), later).await.unwrap()
        }));
    }
    let mut got = Vec::new();
    for t in tasks {
        if let Some(e) = t.await.unwrap() {
            got.push(e.run_id);
        }
    }
    got.sort();
    assert_eq!(got, (0..5).map(id).collect::<Vec<_>>());
}

#[tokio::test]
async fn claims_are_renewed_by_their_owner_only() {
    let tmp = tempfile::tempdir().unwrap();
    let q = SledStore::try_open(tmp.path()).unwrap();
    q.enqueue(&entry(0)).await.unwrap();
    let me = Owner::current();
    let soon = Utc::now() + Duration::seconds(5);
    q.claim(&me, soon).await.unwrap().unwrap();
    assert!(!q.renew(&id(0), &other_owner(), soon).await.unwrap());
    assert!(
        q.renew(&id(0), &me, soon + Duration::seconds(30))
            .await
            .unwrap()
    );
    // Renewed: not abandoned at the old deadline.
    let taken = q
        .take_abandoned(soon + Duration::seconds(1), &|o: &Owner| !o.is_alive())
        .await
        .unwrap();
    assert!(taken.is_empty());
}

#[tokio::test]
async fn runs_of_dead_or_late_workers_are_taken_back() {
    let tmp = tempfile::tempdir().unwrap();
    let q = SledStore::try_open(tmp.path()).unwrap();
    for i in 0..4 {
        q.enqueue(&entry(i)).await.unwrap();
    }
    let now = Utc::now();
    let me = Owner::current();
    // 0: claimed by a process that is gone; 1: a claim that ran out;
    // 2: a live claim in time; 3: waiting.
    q.claim(&other_owner(), now + Duration::seconds(60))
        .await
        .unwrap();
    q.claim(&me, now - Duration::seconds(1)).await.unwrap();
    q.claim(&me, now + Duration::seconds(60)).await.unwrap();
    let taken = q
        .take_abandoned(now, &|o: &Owner| !o.is_alive())
        .await
        .unwrap();
    let mut ids: Vec<RunId> = taken.iter().map(|e| e.run_id.clone()).collect();
    ids.sort();
    assert_eq!(ids, vec![id(0), id(1)]);
    assert!(
        !q.renew(&id(0), &other_owner(), now).await.unwrap(),
        "gone from the queue"
    );
    assert_eq!(q.waiting().await.unwrap(), 1);
    // Queued again as a new attempt (a new run), it is the next to run.
    let mut again = entry(10);
    again.attempt = taken[0].attempt + 1;
    q.enqueue(&again).await.unwrap();
    assert_eq!(
        q.claim(&me, now + Duration::seconds(60))
            .await
            .unwrap()
            .unwrap()
            .run_id,
        id(3)
    );
    let next = q
        .claim(&me, now + Duration::seconds(60))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((next.run_id, next.attempt), (id(10), 2));
}
