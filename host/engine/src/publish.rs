//! Write-behind publishing: documents, logs and artifacts are handed to one
//! task that writes them to the results sink in the order they were sent
//! (so a stage's files precede its document, stage documents precede
//! `run.json`, and the index comes last), keeping the scheduler off the I/O
//! path. `run.json` is rewritten at most every 100 ms while a run goes
//! (and always before the index or a flush), so a run of many stages does
//! not rewrite it hundreds of times; since every `run.json` is built after
//! the stage documents it counts as final, it never names a final stage
//! whose document is not written yet. [`Publisher::flush`] waits until
//! everything sent is written; [`Publisher::announce`] reports a progress
//! event at that point without waiting.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sentinel_api::{RunDoc, RunId, RunSummary, StageDoc, StageName};
use tokio::sync::{mpsc, oneshot};

use crate::log::LogBody;
use crate::masker::SecretSet;
use crate::ports::ResultsSink;
use crate::run::{Progress, ProgressFn};

enum Job {
    Log(RunId, StageName, Option<u32>, LogBody, Arc<SecretSet>),
    Artifacts(RunId, StageName, PathBuf),
    Stage(Box<StageDoc>),
    Run(Box<RunDoc>, Arc<SecretSet>),
    Index(RunSummary),
    Flush(oneshot::Sender<()>),
    /// Reported once everything sent before it is written.
    Announce(Progress, ProgressFn),
}

/// The handle of the publishing task.
#[derive(Debug, Clone)]
pub struct Publisher {
    tx: mpsc::UnboundedSender<Job>,
}

impl Publisher {
    /// Starts the task writing to `sink`.
    pub fn start(sink: Arc<dyn ResultsSink>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(sink, rx));
        Self { tx }
    }

    /// Publishes a stage's log, or an earlier attempt's (swept for secrets
    /// once more first).
    pub fn log(
        &self,
        run: &RunId,
        stage: &StageName,
        attempt: Option<u32>,
        log: LogBody,
        secrets: Arc<SecretSet>,
    ) {
        let _ = self
            .tx
            .send(Job::Log(run.clone(), stage.clone(), attempt, log, secrets));
    }

    /// Zips and publishes a stage's artifacts folder.
    pub fn artifacts(&self, run: &RunId, stage: &StageName, dir: PathBuf) {
        let _ = self
            .tx
            .send(Job::Artifacts(run.clone(), stage.clone(), dir));
    }

    pub fn stage(&self, doc: StageDoc) {
        let _ = self.tx.send(Job::Stage(Box::new(doc)));
    }

    /// Publishes `run.json` after a final sweep for secrets.
    pub fn run(&self, doc: RunDoc, secrets: Arc<SecretSet>) {
        let _ = self.tx.send(Job::Run(Box::new(doc), secrets));
    }

    pub fn index(&self, summary: RunSummary) {
        let _ = self.tx.send(Job::Index(summary));
    }

    /// Reports `event` to `to` once every log, artifact and stage document
    /// sent so far is written (a coalesced `run.json` may still wait).
    pub fn announce(&self, event: Progress, to: ProgressFn) {
        let _ = self.tx.send(Job::Announce(event, to));
    }

    /// Waits until everything sent so far is written.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Job::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

/// The most often `run.json` is rewritten while a run goes (it is always
/// written before the index, and at a flush).
const RUN_DOC_INTERVAL: Duration = Duration::from_millis(100);

async fn put_run(sink: &dyn ResultsSink, doc: &RunDoc, secrets: &SecretSet) {
    if !secrets.sweeps(doc) {
        tracing::error!("refusing to publish run.json: it still holds a secret");
    } else if let Err(e) = sink.put_run(doc).await {
        tracing::warn!("cannot publish run.json: {e}");
    }
}

async fn run(sink: Arc<dyn ResultsSink>, mut rx: mpsc::UnboundedReceiver<Job>) {
    // The newest run.json not yet written, and when the last one was.
    let mut pending: Option<(RunDoc, Arc<SecretSet>)> = None;
    let mut last_run_write = Instant::now() - RUN_DOC_INTERVAL;
    loop {
        let job = if pending.is_some() {
            let due = last_run_write + RUN_DOC_INTERVAL;
            tokio::select! {
                j = rx.recv() => j,
                _ = tokio::time::sleep_until(due.into()) => {
                    if let Some((doc, secrets)) = pending.take() {
                        put_run(sink.as_ref(), &doc, &secrets).await;
                        last_run_write = Instant::now();
                    }
                    continue;
                }
            }
        } else {
            rx.recv().await
        };
        let Some(job) = job else {
            if let Some((doc, secrets)) = pending.take() {
                put_run(sink.as_ref(), &doc, &secrets).await;
            }
            return;
        };
        // The index and a flush see the pending run.json written first (the
        // index never names a run state that run.json does not show yet).
        if matches!(job, Job::Index(..) | Job::Flush(..))
            && let Some((doc, secrets)) = pending.take()
        {
            put_run(sink.as_ref(), &doc, &secrets).await;
            last_run_write = Instant::now();
        }
        match job {
            Job::Log(run, stage, attempt, log, secrets) => {
                // Swept once more with the secrets known now (a sensitive
                // stage may have finished since the stage checked its log).
                let clean = secrets.is_empty()
                    || match &log {
                        LogBody::Memory(bytes) => !secrets.leaks(bytes),
                        LogBody::File(file) => match tokio::fs::read(file).await {
                            Ok(bytes) => !secrets.leaks(&bytes),
                            Err(e) => {
                                tracing::error!(
                                    "refusing to publish the log of `{stage}`: it cannot be read: {e}"
                                );
                                false
                            }
                        },
                    };
                if !clean {
                    tracing::error!(
                        "refusing to publish the log of `{}`: it still holds a secret",
                        stage
                    );
                } else if let Err(e) = sink.put_log(&run, &stage, attempt, &log).await {
                    tracing::warn!("cannot publish the log of `{}`: {e}", stage);
                }
            }
            Job::Artifacts(run, stage, dir) => {
                if let Err(e) = sink.put_artifacts(&run, &stage, &dir).await {
                    tracing::warn!("cannot publish the artifacts of `{}`: {e}", stage);
                }
            }
            Job::Stage(doc) => {
                if let Err(e) = sink.put_stage(&doc).await {
                    tracing::warn!("cannot publish stage `{}`: {e}", doc.name);
                }
            }
            Job::Run(doc, secrets) => {
                pending = Some((*doc, secrets));
                if last_run_write.elapsed() >= RUN_DOC_INTERVAL
                    && let Some((doc, secrets)) = pending.take()
                {
                    put_run(sink.as_ref(), &doc, &secrets).await;
                    last_run_write = Instant::now();
                }
            }
            Job::Index(summary) => {
                if let Err(e) = sink.update_index(&summary).await {
                    tracing::warn!("cannot update the runs index: {e}");
                }
            }
            Job::Flush(done) => {
                let _ = done.send(());
            }
            Job::Announce(event, to) => to(event),
        }
    }
}
