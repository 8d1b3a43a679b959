//! A results sink that never fails a run because its sink is away: each
//! result goes straight through while the sink answers; when a write fails
//! it is kept — with a copy of its files in a spool folder — in a durable
//! [`Outbox`], and so is everything after it (the write order holds). A
//! background task sends the waiting results, oldest first, once the sink
//! answers again, and removes each only after it was written.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sentinel_api::{IndexPage, RunDoc, RunId, RunSummary, StageDoc, StageName};
use tokio::sync::{Mutex, Notify};

use crate::log::LogBody;
use crate::ports::{Outbox, Pending, ResultsSink, StorageError};

/// The longest wait between two attempts while the sink is away.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A sink with a durable outbox in front of it.
#[derive(Debug)]
pub struct OutboxSink {
    inner: Arc<dyn ResultsSink>,
    outbox: Arc<dyn Outbox>,
    spool: PathBuf,
    /// One writer at a time, so results reach the sink in order.
    turn: Mutex<()>,
    wake: Arc<Notify>,
}

fn err(context: impl Into<String>, e: impl std::fmt::Display) -> StorageError {
    StorageError::new(context, e)
}

impl OutboxSink {
    /// Wraps `inner`; files of waiting results are kept under `spool`. Starts
    /// sending what an earlier process left waiting.
    pub fn start(
        inner: Arc<dyn ResultsSink>,
        outbox: Arc<dyn Outbox>,
        spool: PathBuf,
    ) -> Arc<Self> {
        let sink = Arc::new(Self {
            inner,
            outbox,
            spool,
            turn: Mutex::new(()),
            wake: Arc::new(Notify::new()),
        });
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

    /// Results waiting for the sink.
    pub fn waiting(&self) -> usize {
        self.outbox.len()
    }

    /// Sends waiting results, oldest first, until none is left or one fails.
    async fn drain(&self) -> Result<(), StorageError> {
        let _turn = self.turn.lock().await;
        while let Some((seq, item)) = self.outbox.front().await? {
            self.send(&item).await?;
            self.outbox.remove(seq).await?;
            remove_spooled(&item);
        }
        Ok(())
    }

    async fn send(&self, item: &Pending) -> Result<(), StorageError> {
        match item {
            Pending::Log { run, stage, file } => self
                .inner
                .put_log(run, stage, &LogBody::File(file.clone()))
                .await
                .map(drop),
            Pending::Artifacts { run, stage, dir } => {
                self.inner.put_artifacts(run, stage, dir).await.map(drop)
            }
            Pending::Stage(doc) => self.inner.put_stage(doc).await,
            Pending::Run(doc) => self.inner.put_run(doc).await,
            Pending::Index(s) => self.inner.update_index(s).await,
        }
    }

    /// Sends `item` now when nothing waits before it and the sink answers;
    /// otherwise keeps it (durably) for the background task.
    async fn submit(&self, item: Pending) -> Result<(), StorageError> {
        let turn = self.turn.lock().await;
        if self.outbox.is_empty() {
            match self.send(&item).await {
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
            Pending::Log { run, stage, file } => {
                let to = target.join("log");
                tokio::task::spawn_blocking(move || {
                    std::fs::create_dir_all(&target)?;
                    std::fs::copy(&file, &to).map(|_| to)
                })
                .await
                .map_err(|e| err("spool a log", e))?
                .map(|file| Pending::Log { run, stage, file })
                .map_err(|e| err("spool a log", e))?
            }
            Pending::Artifacts {
                run,
                stage,
                dir: src,
            } => {
                let to = target.join("artifacts");
                tokio::task::spawn_blocking(move || {
                    crate::workspace::copy_source(&src, &to, &[]).map(|_| to)
                })
                .await
                .map_err(|e| err("spool artifacts", e))?
                .map(|dir| Pending::Artifacts { run, stage, dir })
                .map_err(|e| err("spool artifacts", e))?
            }
            other => other,
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
        log: &LogBody,
    ) -> Result<String, StorageError> {
        let turn = self.turn.lock().await;
        if self.outbox.is_empty() {
            match self.inner.put_log(run, stage, log).await {
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
            file,
        };
        match log {
            LogBody::Memory(_) => self.outbox.push(&item).await?,
            LogBody::File(_) => self.keep(item).await?,
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

    async fn get_run(&self, run: &RunId) -> Result<Option<RunDoc>, StorageError> {
        self.inner.get_run(run).await
    }

    async fn get_stage(
        &self,
        run: &RunId,
        stage: &StageName,
    ) -> Result<Option<StageDoc>, StorageError> {
        self.inner.get_stage(run, stage).await
    }

    async fn get_log(
        &self,
        run: &RunId,
        stage: &StageName,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        self.inner.get_log(run, stage).await
    }

    async fn get_index_page(&self, page: u32) -> Result<Option<IndexPage>, StorageError> {
        self.inner.get_index_page(page).await
    }

    fn location(&self) -> String {
        self.inner.location()
    }
}
