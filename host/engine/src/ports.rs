//! The narrow interfaces the engine needs from its storage: [`Store`] for
//! durable run state, [`ResultsSink`] for the published results layout,
//! [`Outbox`] for results waiting for their sink to answer again,
//! [`RunQueue`] for accepted runs waiting for (or held by) a worker.
//! Implementations live in their own crates (sled, local folder, S3). Every
//! failure is a [`StorageError`] that says whether trying again may help.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use sentinel_api::{RunDoc, RunId, RunSummary, StageDoc, StageName};

pub use crate::error::{ErrorKind, StorageError};
use crate::lease::{Lease, Owner};
pub use crate::log::LogBody;

/// A stage's outputs as they were (raw), kept sealed for a re-run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptOutputs {
    /// Its trimmed stdout.
    pub output: String,
    /// Its named outputs.
    pub outputs: std::collections::BTreeMap<String, String>,
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
    /// Saves a run's final document and appends its final event, both or
    /// neither, durably: a crash between the two cannot leave a run that
    /// ended in its history but is still open (and so would end twice).
    async fn end_run(&self, run: &RunDoc, event: &Event) -> Result<(), StorageError>;
    async fn get_run(&self, id: &RunId) -> Result<Option<RunDoc>, StorageError>;
    async fn get_stages(&self, id: &RunId) -> Result<Vec<StageDoc>, StorageError>;
    async fn get_events(&self, id: &RunId) -> Result<Vec<Event>, StorageError>;
    /// Runs, newest first.
    async fn list_runs(&self, limit: usize) -> Result<Vec<RunDoc>, StorageError>;
    /// Every run not in a final state, however old.
    async fn open_runs(&self) -> Result<Vec<RunDoc>, StorageError>;
    /// Keeps a stage's raw outputs for a re-run, sealed at rest like secrets.
    async fn keep_outputs(
        &self,
        run: &RunId,
        stage: &StageName,
        kept: &KeptOutputs,
    ) -> Result<(), StorageError>;
    /// A stage's kept outputs; `None` when they are not kept (any more).
    async fn kept_outputs(
        &self,
        run: &RunId,
        stage: &StageName,
    ) -> Result<Option<KeptOutputs>, StorageError>;
    /// Takes or renews a lease (durable).
    async fn put_lease(&self, lease: &Lease) -> Result<(), StorageError>;
    /// Releases a lease; durable with the next durable write.
    async fn remove_lease(&self, run: &RunId) -> Result<(), StorageError>;
    async fn leases(&self) -> Result<Vec<Lease>, StorageError>;
    /// Runs older than `before` (all when `None`), newest first, at most
    /// `limit`: a page of [`Store::list_runs`].
    async fn list_runs_before(
        &self,
        before: Option<&RunId>,
        limit: usize,
    ) -> Result<Vec<RunDoc>, StorageError>;
    /// Forgets everything of a run (retention): its document, stages,
    /// history, kept outputs, request and lease. Removing a run that is not
    /// there is no error.
    async fn delete_run(&self, id: &RunId) -> Result<(), StorageError>;
}

/// Where results are published, in the layout of `results-layout.md`.
/// The engine calls it in the prescribed order: a stage's log and artifacts,
/// then its document, then `run.json`, then the index.
#[async_trait]
pub trait ResultsSink: Send + Sync + std::fmt::Debug {
    /// Publishes a stage's log (from its file or from memory), or an
    /// earlier attempt's (`attempt`, see `keys::log_name`); returns its key.
    async fn put_log(
        &self,
        run: &RunId,
        stage: &StageName,
        attempt: Option<u32>,
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
    /// Inserts or replaces a run in the index; touches a bounded number of
    /// objects, however many runs the index holds.
    async fn update_index(&self, summary: &RunSummary) -> Result<(), StorageError>;
    /// Removes a run from the index (retention); bounded like an update.
    async fn remove_from_index(&self, run: &RunId) -> Result<(), StorageError>;
    /// Removes many runs from the index at once (retention's batches).
    async fn remove_many_from_index(&self, runs: &[RunId]) -> Result<(), StorageError> {
        for run in runs {
            self.remove_from_index(run).await?;
        }
        Ok(())
    }
    /// Removes a run's published files (`run/<id>/`: documents, logs,
    /// artifacts) — retention, after [`ResultsSink::remove_from_index`];
    /// returns how many objects went. Removing what is not there is no error.
    async fn remove_run(&self, run: &RunId) -> Result<u64, StorageError>;
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
    /// A stage's artifacts zip, as published.
    async fn get_artifacts(
        &self,
        run: &RunId,
        stage: &StageName,
    ) -> Result<Option<Vec<u8>>, StorageError>;
    /// Runs of the index, newest first, at most `limit` (reading only the
    /// pages it needs).
    async fn list_index(&self, limit: usize) -> Result<Vec<RunSummary>, StorageError>;
    /// A human-readable location of the results (a folder or a URL).
    fn location(&self) -> String;
}

/// Where cache entries and their index live: a folder of this machine or a
/// private S3 prefix. Names are relative (`<project>/index.json`,
/// `<project>/<entry>.tar`); the cache's policy lives in [`crate::cache`].
#[async_trait]
pub trait CacheBackend: Send + Sync + std::fmt::Debug {
    /// A small object (an index), or `None` when there is none.
    async fn read(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError>;
    /// Writes a small object, replacing it.
    async fn write(&self, name: &str, bytes: &[u8]) -> Result<(), StorageError>;
    /// Copies an entry into the file `to`; `false` when it is not there.
    async fn download(&self, name: &str, to: &Path) -> Result<bool, StorageError>;
    /// Stores the file `from` as an entry.
    async fn upload(&self, name: &str, from: &Path) -> Result<(), StorageError>;
    /// Removes an object; removing what is not there is no error.
    async fn delete(&self, name: &str) -> Result<(), StorageError>;
    /// Where it is, for messages.
    fn location(&self) -> String;
}

/// One result waiting to be published; files live in the outbox's spool
/// folder until they are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Pending {
    Log {
        run: RunId,
        stage: StageName,
        /// An earlier attempt's log (`None`: the stage's own).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        attempt: Option<u32>,
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
    Unindex(RunId),
}

impl Pending {
    /// The run the result belongs to.
    pub fn run(&self) -> &RunId {
        match self {
            Self::Log { run, .. } | Self::Artifacts { run, .. } | Self::Unindex(run) => run,
            Self::Stage(d) => &d.run_id,
            Self::Run(d) => &d.id,
            Self::Index(s) => &s.id,
        }
    }

    /// What it is, for messages (`the log of build`).
    pub fn describe(&self) -> String {
        match self {
            Self::Log { stage, .. } => format!("the log of `{stage}`"),
            Self::Artifacts { stage, .. } => format!("the artifacts of `{stage}`"),
            Self::Stage(d) => format!("the document of `{}`", d.name),
            Self::Run(_) => "run.json".into(),
            Self::Index(_) => "its index entry".into(),
            Self::Unindex(_) => "its removal from the index".into(),
        }
    }
}

/// A result the outbox gave up on: the sink refused it for good.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Parked {
    pub item: Pending,
    /// Why the sink refused it.
    pub reason: String,
    pub at: DateTime<Utc>,
}

/// A durable first-in first-out queue of results not yet published, and
/// the results it gave up on (parked, kept until retried).
#[async_trait]
pub trait Outbox: Send + Sync + std::fmt::Debug {
    /// Appends an item; durable when it returns.
    async fn push(&self, item: &Pending) -> Result<(), StorageError>;
    /// The oldest item and its sequence number.
    async fn front(&self) -> Result<Option<(u64, Pending)>, StorageError>;
    /// Removes the item `seq` (once published).
    async fn remove(&self, seq: u64) -> Result<(), StorageError>;
    /// Moves the item `seq` to the parked results (durable).
    async fn park(&self, seq: u64, reason: &str) -> Result<(), StorageError>;
    /// Parks an item that never waited (its run has parked results, so it
    /// must not overtake them).
    async fn park_new(&self, item: &Pending, reason: &str) -> Result<(), StorageError>;
    /// The parked results, oldest first.
    async fn parked(&self) -> Result<Vec<Parked>, StorageError>;
    /// Puts every parked result back in the queue, in order; returns how many.
    async fn unpark_all(&self) -> Result<usize, StorageError>;
    /// How many items wait (cheap: no scan).
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// How many results are parked (cheap: no scan).
    fn parked_len(&self) -> usize;
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
