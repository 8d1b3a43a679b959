//! Deployments on sled: a marker decided once however many deciders race,
//! older versions ignored, a held deploy queued only when approved —
//! answered once — and every decision still there after a reopen.

use std::sync::Arc;

use chrono::Utc;
use sentinel_api::{
    Approval, DeploySource, DeploymentDoc, DeploymentStatus, RunId, Trigger, TriggerKind,
};
use sentinel_engine::ports::{QueueEntry, RunQueue};
use sentinel_store::SledStore;
use sentinel_store::deploys::Decided;

fn entry() -> QueueEntry {
    QueueEntry {
        run_id: sentinel_engine::docs::new_run_id(),
        pipeline: "deployer".into(),
        trigger: Trigger {
            kind: TriggerKind::Deploy,
            by: None,
        },
        request: serde_json::json!({"repo": "deployer", "ref": "main"}),
        attempt: 1,
        enqueued: Utc::now(),
        claim: None,
    }
}

fn doc(version: &str) -> DeploymentDoc {
    DeploymentDoc::requested(
        ulid::Ulid::new().to_string(),
        "video",
        "dev",
        version,
        DeploySource::Marker {
            watcher: "w".into(),
            key: format!("video/{version}.deploy"),
        },
    )
}

/// Versions as numbers, enough for these tests.
fn newer(v: &'static str) -> impl Fn(&str) -> bool + Sync {
    move |latest: &str| v.parse::<u32>().unwrap() > latest.parse::<u32>().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_marker_is_decided_once_however_many_race() {
    let tmp = tempfile::tempdir().unwrap();
    let db = Arc::new(SledStore::try_open(tmp.path()).unwrap());
    let mut racers = Vec::new();
    for _ in 0..16 {
        let db = db.clone();
        racers.push(tokio::spawn(async move {
            db.decide_marker(
                "w/video/2.deploy",
                &doc("2"),
                Some(&entry()),
                false,
                &newer("2"),
            )
            .await
            .unwrap()
        }));
    }
    let mut new = 0;
    for r in racers {
        if matches!(r.await.unwrap(), Decided::New(_)) {
            new += 1;
        }
    }
    assert_eq!(new, 1, "one decision");
    assert_eq!(RunQueue::waiting(db.as_ref()).await.unwrap(), 1, "one run");
    // Older afterwards: ignored, nothing queued.
    let Decided::New(d) = db
        .decide_marker(
            "w/video/1.deploy",
            &doc("1"),
            Some(&entry()),
            false,
            &newer("1"),
        )
        .await
        .unwrap()
    else {
        panic!("not decided")
    };
    assert_eq!(d.status, DeploymentStatus::Ignored);
    assert!(d.reason.unwrap().contains("1 is not newer than 2"));
    assert_eq!(RunQueue::waiting(db.as_ref()).await.unwrap(), 1);
    drop(db);
    // Reopened: the decisions hold.
    let db = SledStore::try_open(tmp.path()).unwrap();
    assert!(db.marked("w/video/2.deploy").unwrap().is_some());
    assert_eq!(
        db.latest_version("dev", "video").unwrap().as_deref(),
        Some("2")
    );
    assert_eq!(db.deployments(None, None, 10).await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_deploy_is_queued_only_when_approved_and_answered_once() {
    let tmp = tempfile::tempdir().unwrap();
    let db = SledStore::try_open(tmp.path()).unwrap();
    let e = entry();
    let held = db.request_deployment(&doc("5"), &e, true).await.unwrap();
    assert_eq!(held.status, DeploymentStatus::WaitingApproval);
    assert_eq!(RunQueue::waiting(&db).await.unwrap(), 0, "nothing queued");
    assert_eq!(db.waiting_approval().unwrap().len(), 1);
    let yes = |approved| Approval {
        approved,
        by: "token:boss".into(),
        at: Utc::now(),
        reason: None,
    };
    let d = db
        .answer_approval(&held.id, yes(true), false)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.status, DeploymentStatus::Queued);
    assert_eq!(d.run.as_ref(), Some(&e.run_id));
    assert_eq!(RunQueue::waiting(&db).await.unwrap(), 1);
    assert!(db.waiting_approval().unwrap().is_empty());
    assert_eq!(
        db.answer_approval(&held.id, yes(false), false)
            .await
            .unwrap(),
        Err(DeploymentStatus::Queued),
        "answered once"
    );
    assert_eq!(
        db.answer_approval("nope", yes(true), false).await.unwrap(),
        Err(DeploymentStatus::Unknown)
    );
    // A success makes it current.
    let run: RunId = e.run_id.clone();
    db.deployment_follows(
        &held.id,
        &run,
        DeploymentStatus::Succeeded,
        None,
        Some(Utc::now()),
    )
    .unwrap();
    let now = db.current(Some("video"), None).unwrap();
    assert_eq!(now.len(), 1);
    assert_eq!(now[0].version, "5");
}
