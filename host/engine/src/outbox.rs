//! A results sink that never fails a run because its sink is away: each
//! result goes straight through while the sink answers; when a write fails
//! it is kept — with a copy of its files in a spool folder — in a durable
//! [`Outbox`], and so is everything after it (the write order holds). A
//! background task sends the waiting results, oldest first, once the sink
//! answers again, and removes each only after it was written.
//!
//! A sink that is away (a transient failure) is waited for as long as it
//! takes. A result the sink refuses for good (a permanent failure, three
//! times) is parked — kept, counted in the metrics, logged, retriable with
//! `sentinel outbox retry` — and so is every later result of the same run
//! (its order holds); other runs' results go on.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sentinel_api::{RunDoc, RunId, RunSummary, StageDoc, StageName};
use tokio::sync::{Mutex, Notify};

use crate::log::LogBody;
use crate::ports::{Outbox, Pending, ResultsSink, StorageError};

/// The longest wait between two attempts while the sink is away.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Permanent failures of one result before it is parked.
pub const MAX_REFUSALS: u32 = 3;

/// A sink with a durable outbox in front of it.
#[derive(Debug)]
pub struct OutboxSink {
    /// `None`: results only wait (a command that records without sending;
    /// the next process with the sink sends them).
    inner: Option<Arc<dyn ResultsSink>>,
    outbox: Arc<dyn Outbox>,
    spool: PathBuf,
    /// One writer at a time, so results reach the sink in order; holds the
    /// refusals of the front result and the runs with parked results.
    turn: Mutex<Turn>,
    wake: Arc<Notify>,
}

#[derive(Debug, Default)]
struct Turn {
    refusals: BTreeMap<u64, u32>,
    parked_runs: BTreeSet<RunId>,
}

fn err(context: impl Into<String>, e: impl std::fmt::Display) -> StorageError {
    StorageError::permanent(context, e.to_string())
}

impl OutboxSink {
    /// Wraps `inner`; files of waiting results are kept under `spool`. Starts
    /// sending what an earlier process left waiting.
    pub async fn start(
        inner: Arc<dyn ResultsSink>,
        outbox: Arc<dyn Outbox>,
        spool: PathBuf,
    ) -> Arc<Self> {
        let sink = Self::make(Some(inner), outbox, spool).await;
        let weak = Arc::downgrade(&sink);
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(250);
            loop {
                let Some(sink) = weak.upgrade() else { return };
                match sink.drain().await {
                    Ok(()) => {
                        backoff = Duration::from_millis(250);
                        let wake = sink.wake.clone();
                        drop(sink);
                        // Checked now and then too, in case a wake-up was missed.
                        let _ = tokio::time::timeout(MAX_BACKOFF, wake.notified()).await;
                    }
                    Err(e) => {
                        tracing::warn!(
                            "results wait in the outbox ({} queued): {e}",
                            sink.outbox.len()
                        );
                        drop(sink);
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
        });
        sink
    }

    /// An outbox that only keeps results, for a process that records
    /// without the sink (a read command recovering a dead run): the next
    /// process that has the sink sends them.
    pub async fn deferred(outbox: Arc<dyn Outbox>, spool: PathBuf) -> Arc<Self> {
        Self::make(None, outbox, spool).await
    }

    async fn make(
        inner: Option<Arc<dyn ResultsSink>>,
        outbox: Arc<dyn Outbox>,
        spool: PathBuf,
    ) -> Arc<Self> {
        let parked_runs = match outbox.parked().await {
            Ok(p) => p.iter().map(|p| p.item.run().clone()).collect(),
            Err(e) => {
                tracing::warn!("cannot read the parked results: {e}");
                BTreeSet::new()
            }
        };
        Arc::new(Self {
            inner,
            outbox,
            spool,
            turn: Mutex::new(Turn {
                refusals: BTreeMap::new(),
                parked_runs,
            }),
            wake: Arc::new(Notify::new()),
        })
    }

    /// Results waiting for the sink.
    pub fn waiting(&self) -> usize {
        self.outbox.len()
    }

    /// Results the sink refused for good.
    pub fn parked(&self) -> usize {
        self.outbox.parked_len()
    }

    /// Sends waiting results, oldest first, until none is left or one fails
    /// for a reason that may pass.
    async fn drain(&self) -> Result<(), StorageError> {
        let mut turn = self.turn.lock().await;
        let Some(inner) = &self.inner else {
            return Ok(());
        };
        while let Some((seq, item)) = self.outbox.front().await? {
            if turn.parked_runs.contains(item.run()) {
                // Its run's earlier results are parked: it waits with them.
                self.outbox
                    .park(seq, "an earlier result of its run was refused")
                    .await?;
                continue;
            }
            match send(inner.as_ref(), &item).await {
                Ok(()) => {
                    turn.refusals.remove(&seq);
                    self.outbox.remove(seq).await?;
                    remove_spooled(&item);
                }
                Err(e) if e.is_transient() => return Err(e),
                Err(e) => {
                    let n = turn.refusals.entry(seq).or_insert(0);
                    *n += 1;
                    if *n < MAX_REFUSALS {
                        return Err(e);
                    }
                    turn.refusals.remove(&seq);
                    tracing::error!(
                        run = %item.run(),
                        "the results sink refused {} {MAX_REFUSALS} times; it is parked (`sentinel outbox retry` sends it again): {e}",
                        item.describe()
                    );
                    self.outbox.park(seq, &e.to_string()).await?;
                    turn.parked_runs.insert(item.run().clone());
                }
            }
        }
        Ok(())
    }

    /// Puts every parked result back in the queue and wakes the sender.
    pub async fn retry_parked(&self) -> Result<usize, StorageError> {
        let mut turn = self.turn.lock().await;
        let n = self.outbox.unpark_all().await?;
        turn.parked_runs.clear();
        drop(turn);
        self.wake.notify_one();
        Ok(n)
    }

    /// Waits until nothing waits (or `within` passes); true when done.
    pub async fn settle(&self, within: Duration) -> bool {
        let until = tokio::time::Instant::now() + within;
        while !self.outbox.is_empty() {
            self.wake.notify_one();
            if tokio::time::Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        true
    }
}

async fn send(inner: &dyn ResultsSink, item: &Pending) -> Result<(), StorageError> {
    match item {
        Pending::Log {
            run,
            stage,
            attempt,
            file,
        } => inner
            .put_log(run, stage, *attempt, &LogBody::File(file.clone()))
            .await
            .map(drop),
        Pending::Artifacts { run, stage, dir } => {
            inner.put_artifacts(run, stage, dir).await.map(drop)
        }
        Pending::Stage(doc) => inner.put_stage(doc).await,
        Pending::Run(doc) => inner.put_run(doc).await,
        Pending::Index(s) => inner.update_index(s).await,
        Pending::Unindex(id) => inner.remove_from_index(id).await,
    }
}

impl OutboxSink {
    /// Sends `item` now when nothing waits before it and the sink answers;
    /// otherwise keeps it (durably) for the background task.
    async fn submit(&self, item: Pending) -> Result<(), StorageError> {
        let turn = self.turn.lock().await;
        if turn.parked_runs.contains(item.run()) {
            let item = self.spool_files(item).await?;
            self.outbox
                .park_new(&item, "an earlier result of its run was refused")
                .await?;
            return Ok(());
        }
        if let Some(inner) = &self.inner
            && self.outbox.is_empty()
        {
            match send(inner.as_ref(), &item).await {
                Ok(()) => return Ok(()),
                Err(e) => self.note_failure(&e),
            }
        }
        self.keep(item).await?;
        drop(turn);
        self.wake.notify_one();
        Ok(())
    }

    fn note_failure(&self, e: &StorageError) {
        tracing::warn!("the results sink failed; results wait in the outbox: {e}");
    }

    /// Spools an item's files and appends it to the outbox (under `turn`).
    async fn keep(&self, item: Pending) -> Result<(), StorageError> {
        let item = self.spool_files(item).await?;
        self.outbox.push(&item).await
    }

    /// A new folder in the spool for one item's files.
    fn spool_dir(&self) -> PathBuf {
        self.spool.join(ulid::Ulid::new().to_string())
    }

    /// Copies an item's files into the spool folder (the run folder they
    /// come from is removed when the run ends).
    async fn spool_files(&self, item: Pending) -> Result<Pending, StorageError> {
        let target = self.spool_dir();
        Ok(match item {
            Pending::Log {
                run,
                stage,
                attempt,
                file,
            } => {
                let to = target.join("log");
                tokio::task::spawn_blocking(move || {
                    std::fs::create_dir_all(&target)?;
                    std::fs::copy(&file, &to).map(|_| to)
                })
                .await
                .map_err(|e| err("spool a log", e))?
                .map(|file| Pending::Log {
                    run,
                    stage,
                    attempt,
                    file,
                })
                .map_err(|e| StorageError::io("spool a log", e))?
            }
            Pending::Artifacts {
                run,
                stage,
                dir: src,
            } => {
                let to = target.join("artifacts");
                tokio::task::spawn_blocking(move || {
                    crate::workspace::copy_tree(&src, &to, "").map(|_| to)
                })
                .await
                .map_err(|e| err("spool artifacts", e))?
                .map(|dir| Pending::Artifacts { run, stage, dir })
                .map_err(|e| StorageError::io("spool artifacts", e))?
            }
            other => other,
        })
    }

    fn reader(&self) -> Result<&Arc<dyn ResultsSink>, StorageError> {
        self.inner.as_ref().ok_or_else(|| {
            StorageError::permanent("read results", "this outbox only keeps results for later")
        })
    }
}

/// Removes an item's spooled files once it is published.
fn remove_spooled(item: &Pending) {
    let path: &Path = match item {
        Pending::Log { file, .. } => file,
        Pending::Artifacts { dir, .. } => dir,
        _ => return,
    };
    if let Some(parent) = path.parent() {
        let _ = std::fs::remove_dir_all(parent);
    }
}

#[async_trait]
impl ResultsSink for OutboxSink {
    async fn put_log(
        &self,
        run: &RunId,
        stage: &StageName,
        attempt: Option<u32>,
        log: &LogBody,
    ) -> Result<String, StorageError> {
        let turn = self.turn.lock().await;
        if let Some(inner) = &self.inner
            && self.outbox.is_empty()
            && !turn.parked_runs.contains(run)
        {
            match inner.put_log(run, stage, attempt, log).await {
                Ok(key) => return Ok(key),
                Err(e) => self.note_failure(&e),
            }
        }
        let file = match log {
            LogBody::File(f) => f.clone(),
            LogBody::Memory(bytes) => {
                // Written to a file first: a waiting log survives a restart.
                let dir = self.spool_dir();
                let file = dir.join("log");
                let (f, b) = (file.clone(), bytes.clone());
                tokio::task::spawn_blocking(move || {
                    std::fs::create_dir_all(&dir)?;
                    std::fs::write(&f, b)
                })
                .await
                .map_err(|e| err("spool a log", e))?
                .map_err(|e| err("spool a log", e))?;
                file
            }
        };
        let item = Pending::Log {
            run: run.clone(),
            stage: stage.clone(),
            attempt,
            file,
        };
        let item = match log {
            LogBody::Memory(_) => item,
            LogBody::File(_) => self.spool_files(item).await?,
        };
        if turn.parked_runs.contains(run) {
            self.outbox
                .park_new(&item, "an earlier result of its run was refused")
                .await?;
        } else {
            self.outbox.push(&item).await?;
        }
        drop(turn);
        self.wake.notify_one();
        Ok(format!("{stage}.log"))
    }

    async fn put_artifacts(
        &self,
        run: &RunId,
        stage: &StageName,
        dir: &Path,
    ) -> Result<Option<String>, StorageError> {
        if !crate::workspace::holds_files(dir) {
            return Ok(None);
        }
        self.submit(Pending::Artifacts {
            run: run.clone(),
            stage: stage.clone(),
            dir: dir.to_path_buf(),
        })
        .await?;
        Ok(Some(format!("{stage}.zip")))
    }

    async fn put_stage(&self, doc: &StageDoc) -> Result<(), StorageError> {
        self.submit(Pending::Stage(Box::new(doc.clone()))).await
    }

    async fn put_run(&self, doc: &RunDoc) -> Result<(), StorageError> {
        self.submit(Pending::Run(Box::new(doc.clone()))).await
    }

    async fn update_index(&self, summary: &RunSummary) -> Result<(), StorageError> {
        self.submit(Pending::Index(Box::new(summary.clone()))).await
    }

    async fn remove_from_index(&self, run: &RunId) -> Result<(), StorageError> {
        self.submit(Pending::Unindex(run.clone())).await
    }

    /// At once when nothing waits (else one by one through the outbox).
    async fn remove_many_from_index(&self, runs: &[RunId]) -> Result<(), StorageError> {
        let turn = self.turn.lock().await;
        if let Some(inner) = &self.inner
            && self.outbox.is_empty()
            && !runs.iter().any(|r| turn.parked_runs.contains(r))
        {
            match inner.remove_many_from_index(runs).await {
                Ok(()) => return Ok(()),
                Err(e) => self.note_failure(&e),
            }
        }
        drop(turn);
        for run in runs {
            self.remove_from_index(run).await?;
        }
        Ok(())
    }

    /// Removed at once, and only while nothing waits: a result still in
    /// the outbox would bring the run's files back once sent.
    async fn remove_run(&self, run: &RunId) -> Result<u64, StorageError> {
        let turn = self.turn.lock().await;
        let inner = self.reader()?;
        if !self.outbox.is_empty() || turn.parked_runs.contains(run) {
            return Err(StorageError::transient(
                format!("remove run {run}"),
                "results still wait in the outbox; the run is removed once they are sent",
            ));
        }
        // An ended run gets nothing more to send: other removals need not wait.
        drop(turn);
        inner.remove_run(run).await
    }

    async fn get_run(&self, run: &RunId) -> Result<Option<RunDoc>, StorageError> {
        self.reader()?.get_run(run).await
    }

    async fn get_stage(
        &self,
        run: &RunId,
        stage: &StageName,
    ) -> Result<Option<StageDoc>, StorageError> {
        self.reader()?.get_stage(run, stage).await
    }

    async fn get_log(
        &self,
        run: &RunId,
        stage: &StageName,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        self.reader()?.get_log(run, stage).await
    }

    async fn get_artifacts(
        &self,
        run: &RunId,
        stage: &StageName,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        self.reader()?.get_artifacts(run, stage).await
    }

    async fn list_index(&self, limit: usize) -> Result<Vec<RunSummary>, StorageError> {
        self.reader()?.list_index(limit).await
    }

    fn location(&self) -> String {
        match &self.inner {
            Some(i) => i.location(),
            None => "the outbox (sent by the next process that has the sink)".into(),
        }
    }
}
