//! Recovery after a crash, on the engine's ports: every run left open is
//! found however old, and each is recovered on its own — one that cannot
//! be is reported, the others are marked `interrupted`, and a new run
//! still runs.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use sentinel_api::{RunDoc, RunId, RunStatus, StageDoc, StageName};
use sentinel_engine::fake::{FakeExecutor, MemSink, MemStore, run_doc};
use sentinel_engine::lease::Lease;
use sentinel_engine::ports::{Event, KeptOutputs, StorageError, Store};
use sentinel_engine::{Engine, EngineConfig, RunRequest, Signals};

/// A store whose stage documents of one run cannot be read.
#[derive(Debug, Default)]
struct Damaged {
    inner: MemStore,
    broken: Option<RunId>,
}

#[async_trait]
impl Store for Damaged {
    async fn put_run(&self, run: &RunDoc, durable: bool) -> Result<(), StorageError> {
        self.inner.put_run(run, durable).await
    }
    async fn put_stage(&self, stage: &StageDoc) -> Result<(), StorageError> {
        self.inner.put_stage(stage).await
    }
    async fn end_run(&self, run: &RunDoc, event: &Event) -> Result<(), StorageError> {
        self.inner.end_run(run, event).await
    }
    async fn append_event(&self, run: &RunId, event: &Event) -> Result<(), StorageError> {
        self.inner.append_event(run, event).await
    }
    async fn get_run(&self, id: &RunId) -> Result<Option<RunDoc>, StorageError> {
        self.inner.get_run(id).await
    }
    async fn get_stages(&self, id: &RunId) -> Result<Vec<StageDoc>, StorageError> {
        if self.broken.as_ref() == Some(id) {
            return Err(StorageError::permanent("get stages", "damaged value"));
        }
        self.inner.get_stages(id).await
    }
    async fn get_events(&self, id: &RunId) -> Result<Vec<Event>, StorageError> {
        self.inner.get_events(id).await
    }
    async fn list_runs(&self, limit: usize) -> Result<Vec<RunDoc>, StorageError> {
        self.inner.list_runs(limit).await
    }
    async fn open_runs(&self) -> Result<Vec<RunDoc>, StorageError> {
        self.inner.open_runs().await
    }
    async fn keep_outputs(
        &self,
        run: &RunId,
        stage: &StageName,
        kept: &KeptOutputs,
    ) -> Result<(), StorageError> {
        self.inner.keep_outputs(run, stage, kept).await
    }
    async fn kept_outputs(
        &self,
        run: &RunId,
        stage: &StageName,
    ) -> Result<Option<KeptOutputs>, StorageError> {
        self.inner.kept_outputs(run, stage).await
    }
    async fn put_lease(&self, lease: &Lease) -> Result<(), StorageError> {
        self.inner.put_lease(lease).await
    }
    async fn remove_lease(&self, run: &RunId) -> Result<(), StorageError> {
        self.inner.remove_lease(run).await
    }
    async fn leases(&self) -> Result<Vec<Lease>, StorageError> {
        self.inner.leases().await
    }
    async fn list_runs_before(
        &self,
        before: Option<&sentinel_api::RunId>,
        limit: usize,
    ) -> Result<Vec<RunDoc>, StorageError> {
        self.inner.list_runs_before(before, limit).await
    }
    async fn delete_run(&self, id: &sentinel_api::RunId) -> Result<(), StorageError> {
        self.inner.delete_run(id).await
    }
}

fn running(id: &RunId) -> RunDoc {
    RunDoc {
        started: Some(Utc::now()),
        ..run_doc(id, RunStatus::Running)
    }
}

fn id(n: u32) -> RunId {
    format!("01JDX3K6Q2T8W9V5M4N3P{n:05}").parse().unwrap()
}

#[tokio::test]
async fn each_open_run_is_recovered_on_its_own_however_old() {
    let broken = id(2);
    let store = Arc::new(Damaged {
        broken: Some(broken.clone()),
        ..Damaged::default()
    });
    // The oldest open run, behind more than a thousand newer finished ones.
    store.put_run(&running(&id(1)), true).await.unwrap();
    store.put_run(&running(&broken), true).await.unwrap();
    for n in 10..1200 {
        let mut done = running(&id(n));
        done.status = RunStatus::Succeeded;
        store.put_run(&done, false).await.unwrap();
    }
    let state = tempfile::tempdir().unwrap();
    let sink = Arc::new(MemSink::default());
    let engine = Engine {
        exec: Arc::new(FakeExecutor::default()),
        store: store.clone(),
        sink: sink.clone(),
        config: EngineConfig {
            jobs: 1,
            state_dir: state.path().to_path_buf(),
            keep_workspace: false,
            keep_files: EngineConfig::KEEP_FILES,
        },
    };
    let recovery = engine.recover().await;
    assert_eq!(recovery.recovered, vec![id(1)], "{recovery:?}");
    assert_eq!(recovery.failed.len(), 1);
    assert_eq!(recovery.failed[0].0, broken);
    let old = store.get_run(&id(1)).await.unwrap().unwrap();
    assert_eq!(old.status, RunStatus::Interrupted);
    let mut lines = Vec::new();
    recovery.report(|l| lines.push(l));
    assert!(
        lines
            .iter()
            .any(|l| l.contains(broken.as_str()) && l.contains("cannot")),
        "{lines:?}"
    );

    // New runs are never blocked by the one that could not be recovered.
    let plan = sentinel_pipeline::parse_str(
        "version: 1\nbox: fake\nstages:\n  a: {run: echo fine}\n",
        "sentinel.yml",
        "p",
    )
    .unwrap();
    let src = tempfile::tempdir().unwrap();
    let doc = engine
        .run(
            RunRequest::local(plan, src.path().to_path_buf()),
            Arc::new(|_| {}),
            Signals::default(),
        )
        .await
        .unwrap();
    assert_eq!(doc.status, RunStatus::Succeeded);
}
