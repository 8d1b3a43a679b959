//! The narrow interfaces the engine needs from its storage: [`Store`] for
//! durable run state, [`ResultsSink`] for the published results layout,
//! [`Outbox`] for results waiting for their sink to answer again,
//! [`RunQueue`] for accepted runs waiting for (or held by) a worker.
//! Implementations live in their own crates (sled, local folder, S3).

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use sentinel_api::{IndexPage, RunDoc, RunId, RunSummary, StageDoc, StageName};

use crate::lease::{Lease, Owner};
pub use crate::log::LogBody;

/// A failure of the store or the sink, with what it was doing.
#[derive(Debug, thiserror::Error)]
#[error("{context}: {message}")]
pub struct StorageError {
    pub context: String,
    pub message: String,
}

impl StorageError {
    /// An error with context.
    pub fn new(context: impl Into<String>, err: impl std::fmt::Display) -> Self {
        Self {
            context: context.into(),
            message: err.to_string(),
        }
    }
}

/// One status change, kept as the run's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub at: DateTime<Utc>,
    /// The stage, or none for the run itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<StageName>,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Durable run state. Writes that acknowledge something (a run accepted, a
/// run finished) are durable when they return; stage updates may be batched.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Saves a run document; `durable` waits until it is on disk.
    async fn put_run(&self, run: &RunDoc, durable: bool) -> Result<(), StorageError>;
    /// Saves a stage document.
    async fn put_stage(&self, stage: &StageDoc) -> Result<(), StorageError>;
    /// Appends to the run's history.
    async fn append_event(&self, run: &RunId, event: &Event) -> Result<(), StorageError>;
    async fn get_run(&self, id: &RunId) -> Result<Option<RunDoc>, StorageError>;
    async fn get_stages(&self, id: &RunId) -> Result<Vec<StageDoc>, StorageError>;
    async fn get_events(&self, id: &RunId) -> Result<Vec<Event>, StorageError>;
    /// Runs, newest first.
    async fn list_runs(&self, limit: usize) -> Result<Vec<RunDoc>, StorageError>;
    /// Takes or renews a lease (durable).
    async fn put_lease(&self, lease: &Lease) -> Result<(), StorageError>;
    /// Releases a lease; durable with the next durable write.
    async fn remove_lease(&self, run: &RunId) -> Result<(), StorageError>;
    async fn leases(&self) -> Result<Vec<Lease>, StorageError>;
}

/// Where results are published, in the layout of `results-layout.md`.
/// The engine calls it in the prescribed order: a stage's log and artifacts,
/// then its document, then `run.json`, then the index.
#[async_trait]
pub trait ResultsSink: Send + Sync + std::fmt::Debug {
    /// Publishes a stage's log (from its file or from memory); returns its key.
    async fn put_log(
        &self,
        run: &RunId,
        stage: &StageName,
        log: &LogBody,
    ) -> Result<String, StorageError>;
    /// Zips and publishes a folder of artifacts; returns the key, or `None`
    /// when the folder is empty.
    async fn put_artifacts(
        &self,
        run: &RunId,
        stage: &StageName,
        dir: &Path,
    ) -> Result<Option<String>, StorageError>;
    async fn put_stage(&self, doc: &StageDoc) -> Result<(), StorageError>;
    async fn put_run(&self, doc: &RunDoc) -> Result<(), StorageError>;
    /// Inserts or replaces a run in the paged index.
    async fn update_index(&self, summary: &RunSummary) -> Result<(), StorageError>;
    async fn get_run(&self, run: &RunId) -> Result<Option<RunDoc>, StorageError>;
    async fn get_stage(
        &self,
        run: &RunId,
        stage: &StageName,
    ) -> Result<Option<StageDoc>, StorageError>;
    async fn get_log(
        &self,
        run: &RunId,
        stage: &StageName,
    ) -> Result<Option<Vec<u8>>, StorageError>;
    async fn get_index_page(&self, page: u32) -> Result<Option<IndexPage>, StorageError>;
    /// A human-readable location of the results (a folder or a URL).
    fn location(&self) -> String;
}

/// One result waiting to be published; files live in the outbox's spool
/// folder until they are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Pending {
    Log {
        run: RunId,
        stage: StageName,
        file: PathBuf,
    },
    Artifacts {
        run: RunId,
        stage: StageName,
        dir: PathBuf,
    },
    Stage(Box<StageDoc>),
    Run(Box<RunDoc>),
    Index(Box<RunSummary>),
}

/// A durable first-in first-out queue of results not yet published.
#[async_trait]
pub trait Outbox: Send + Sync + std::fmt::Debug {
    /// Appends an item; durable when it returns.
    async fn push(&self, item: &Pending) -> Result<(), StorageError>;
    /// The oldest item and its sequence number.
    async fn front(&self) -> Result<Option<(u64, Pending)>, StorageError>;
    /// Removes the item `seq` (once published).
    async fn remove(&self, seq: u64) -> Result<(), StorageError>;
    /// How many items wait.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A run accepted and not finished: what to run, which attempt it is, and
/// the worker holding it, if any.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueEntry {
    pub run_id: RunId,
    /// The pipeline's name as far as it is known when the run is accepted.
    pub pipeline: String,
    pub trigger: sentinel_api::Trigger,
    /// What the server needs to start the run (repository, ref, inputs);
    /// opaque to the queue.
    pub request: serde_json::Value,
    /// 1 for a run's first attempt.
    pub attempt: u32,
    pub enqueued: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<Claim>,
}

/// A worker's hold on a queued run, renewed while it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub owner: Owner,
    pub until: DateTime<Utc>,
}

/// The durable queue of accepted runs, first in first out. Every change but
/// a renewal (a heartbeat, on disk within the store's flush interval) is
/// durable when it returns: a trigger is acknowledged only after
/// [`RunQueue::enqueue`], and a run starts only after its claim is on disk,
/// so a crash never makes a run vanish or run twice unnoticed.
#[async_trait]
pub trait RunQueue: Send + Sync + std::fmt::Debug {
    /// Accepts a run.
    async fn enqueue(&self, entry: &QueueEntry) -> Result<(), StorageError>;
    /// Claims the oldest waiting run for `owner` until `until`; two workers
    /// never get the same run.
    async fn claim(
        &self,
        owner: &Owner,
        until: DateTime<Utc>,
    ) -> Result<Option<QueueEntry>, StorageError>;
    /// Extends `owner`'s claim; false when the run is no longer its own.
    async fn renew(
        &self,
        run: &RunId,
        owner: &Owner,
        until: DateTime<Utc>,
    ) -> Result<bool, StorageError>;
    /// Removes a run no worker has claimed yet (it was cancelled while
    /// waiting); `None` when it is not waiting (claimed, or not queued).
    async fn withdraw(&self, run: &RunId) -> Result<Option<QueueEntry>, StorageError>;
    /// Removes a finished run.
    async fn finish(&self, run: &RunId) -> Result<(), StorageError>;
    /// Removes and returns the runs whose worker is gone: its process died
    /// (`dead`) or its claim ran out before `now`. The caller records them
    /// `interrupted` and may queue a new attempt.
    async fn take_abandoned(
        &self,
        now: DateTime<Utc>,
        dead: &(dyn for<'o> Fn(&'o Owner) -> bool + Sync),
    ) -> Result<Vec<QueueEntry>, StorageError>;
    /// Runs waiting for a worker (not claimed).
    async fn waiting(&self) -> Result<usize, StorageError>;
    /// A queued (or claimed) run's entry.
    async fn get(&self, run: &RunId) -> Result<Option<QueueEntry>, StorageError>;
}
