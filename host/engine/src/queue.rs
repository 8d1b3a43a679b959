//! Runs from the durable queue. A [`Worker`] claims the oldest waiting run
//! (at most `runs` at once), keeps its claim alive while the run goes, and
//! removes it from the queue once the run is final — or, paused at its
//! approval gates, hands it to its [`Hold`]. At start-up,
//! [`Worker::reclaim`] takes back runs whose worker died: they end
//! `interrupted` and, while attempts remain, are queued again as a new run
//! (a run that had paused is held instead).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use sentinel_api::{RunDoc, RunId, RunStatus, RunSummary, SCHEMA_VERSION};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::docs::new_run_id;
use crate::error::ResolveError;
use crate::lease::Owner;
use crate::ports::{QueueEntry, RunQueue, StorageError};
use crate::run::{Engine, Progress, ProgressFn, RunRequest, Signals};
use crate::transition::{RunEvent, run_transition};

/// Turns a queued run into what the engine runs (fetching the repository,
/// reading its pipeline); an `Err` is why the run failed to start.
pub type Resolve = Arc<
    dyn Fn(
            QueueEntry,
        )
            -> std::pin::Pin<Box<dyn Future<Output = Result<RunRequest, ResolveError>> + Send>>
        + Send
        + Sync,
>;

/// Receives each run's progress, with the run's id.
pub type RunProgress = Arc<dyn Fn(&RunId, Progress) + Send + Sync>;

/// Holds a run paused at its approval gates until they are answered (the
/// server records what each gate waits for and takes the run out of the
/// queue, in one transaction) — or, with [`HoldOp::Cancel`], cancels a run
/// held so (it was cancelled while it paused). `Ok(true)`: the run was
/// queued again (a gate answered meanwhile).
pub type Hold = Arc<
    dyn Fn(
            QueueEntry,
            HoldOp,
        ) -> std::pin::Pin<Box<dyn Future<Output = Result<bool, String>> + Send>>
        + Send
        + Sync,
>;

/// What a [`Hold`] is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldOp {
    Hold,
    Cancel,
}

/// What [`Worker::cancel`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancelled {
    /// The run was going: its stages are being stopped.
    Running,
    /// The run was still waiting: it left the queue, recorded `cancelled`.
    Withdrawn,
    /// This worker neither runs it nor has it waiting.
    NotHere,
}

/// Settings of a worker.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Most runs at once.
    pub runs: usize,
    /// Attempts of a run whose worker died (1: never queued again).
    pub max_attempts: u32,
    /// How long a claim lasts without a heartbeat.
    pub claim_for: Duration,
    /// Below this room on the state folder's disk, no run is started (they
    /// wait in the queue).
    pub disk: Option<crate::disk::DiskReserve>,
}

/// Runs queued runs with one engine.
pub struct Worker {
    pub engine: Engine,
    pub queue: Arc<dyn RunQueue>,
    pub owner: Owner,
    pub config: WorkerConfig,
    resolve: Resolve,
    progress: RunProgress,
    wake: Notify,
    /// The signals of the runs going now, to cancel them.
    signals: Mutex<BTreeMap<RunId, Signals>>,
    /// Where a paused run goes (none: it stays paused, out of the queue).
    hold: std::sync::OnceLock<Hold>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("owner", &self.owner)
            .field("config", &self.config)
            .finish()
    }
}

impl Worker {
    pub fn new(
        engine: Engine,
        queue: Arc<dyn RunQueue>,
        config: WorkerConfig,
        resolve: Resolve,
        progress: RunProgress,
    ) -> Arc<Self> {
        Arc::new(Self {
            engine,
            queue,
            owner: Owner::current(),
            config,
            resolve,
            progress,
            wake: Notify::new(),
            signals: Mutex::default(),
            hold: std::sync::OnceLock::new(),
        })
    }

    /// Sets where runs paused at their approval gates go (once).
    pub fn on_hold(&self, hold: Hold) {
        let _ = self.hold.set(hold);
    }

    /// Hands paused run `entry` to the hold; true when that took it out of
    /// the queue (or queued it again). A hold that fails is reported: the
    /// run stays paused with nothing to answer.
    async fn hold_paused(&self, entry: &QueueEntry, op: HoldOp) -> bool {
        let Some(hold) = self.hold.get() else {
            tracing::warn!(run = %entry.run_id, "the run waits for an approval nobody here can give");
            return false;
        };
        match hold(entry.clone(), op).await {
            Ok(again) => {
                if again {
                    self.notify();
                }
                true
            }
            Err(e) => {
                tracing::error!(run = %entry.run_id, "cannot hold the run for its approval: {e}");
                false
            }
        }
    }

    /// Says a run was queued (the worker also looks now and then).
    pub fn notify(&self) {
        self.wake.notify_one();
    }

    /// Cancels a run: one going (or being prepared) is stopped; one still
    /// waiting leaves the queue and is recorded `cancelled`. A run whose
    /// document is already final is not cancelled, even while the worker is
    /// still releasing it: what the caller can read must agree with the answer.
    pub async fn cancel(&self, run: &RunId) -> Result<Cancelled, StorageError> {
        self.cancel_because(run, None).await
    }

    /// [`Worker::cancel`], saying why (the run's reason).
    pub async fn cancel_because(
        &self,
        run: &RunId,
        why: Option<String>,
    ) -> Result<Cancelled, StorageError> {
        if let Some(s) = self.signals.lock().ok().and_then(|s| s.get(run).cloned()) {
            let ended = self
                .engine
                .store
                .get_run(run)
                .await?
                .is_some_and(|r| r.status.is_final());
            if ended {
                return Ok(Cancelled::NotHere);
            }
            match why {
                Some(w) => s.cancel_because(w),
                None => s.cancel.cancel(),
            }
            return Ok(Cancelled::Running);
        }
        match self.queue.withdraw(run).await? {
            Some(entry) => {
                let why = why.unwrap_or_else(|| "cancelled before it started".into());
                record_unstarted(&self.engine, &entry, RunStatus::Cancelled, &why).await?;
                self.report_finished(&entry.run_id).await;
                Ok(Cancelled::Withdrawn)
            }
            None => Ok(Cancelled::NotHere),
        }
    }

    /// Records a run that ended without running, and reports it finished
    /// (so what waits for its end — a checkout to remove, a metric — hears
    /// of it as of any other run's).
    async fn end_unstarted(&self, entry: &QueueEntry, status: RunStatus, reason: &str) {
        let id = &entry.run_id;
        if let Err(e) = record_unstarted(&self.engine, entry, status, reason).await {
            tracing::error!("run {id}: cannot record that it did not start: {e}");
        }
        self.report_finished(id).await;
    }

    /// Reports a run that did not go through the engine as finished, with
    /// the status it was recorded with.
    async fn report_finished(&self, id: &RunId) {
        if let Ok(Some(run)) = self.engine.store.get_run(id).await {
            let done = Progress::RunFinished {
                run_id: id.clone(),
                status: run.status,
            };
            (self.progress)(id, done);
        }
    }

    /// Cancels every run going.
    pub fn cancel_all(&self) {
        if let Ok(s) = self.signals.lock() {
            for signals in s.values() {
                signals.cancel.cancel();
            }
        }
    }

    /// How many runs this worker has going.
    pub fn running(&self) -> usize {
        self.signals.lock().map(|s| s.len()).unwrap_or(0)
    }

    /// Takes back the runs of workers that died or stopped renewing their
    /// claim: each ends `interrupted` (with a document even when it never
    /// started) and, while attempts remain, is queued again as a new run.
    /// Returns the new entries.
    pub async fn reclaim(&self) -> Result<Vec<QueueEntry>, StorageError> {
        self.engine
            .recover()
            .await
            .report(|line| tracing::warn!("{line}"));
        let taken = self
            .queue
            .take_abandoned(Utc::now(), &|o: &Owner| !o.is_alive())
            .await?;
        let mut again = Vec::new();
        for e in taken {
            let why = "the sentinel process running it died";
            // Never started (no document) or left unfinished: interrupted.
            let status = self
                .engine
                .store
                .get_run(&e.run_id)
                .await?
                .map(|r| r.status);
            // Paused at its gates before it was held: held now.
            if status == Some(RunStatus::WaitingApproval) {
                self.hold_paused(&e, HoldOp::Hold).await;
                continue;
            }
            let ended = status.filter(|s| s.is_final());
            if ended.is_none() {
                record_unstarted(&self.engine, &e, RunStatus::Interrupted, why).await?;
            }
            // A run that ended before its server died (between its end and
            // its queue entry's removal) is not run again.
            let interrupted = ended.is_none_or(|s| s == RunStatus::Interrupted);
            if interrupted && e.attempt < self.config.max_attempts {
                let next = QueueEntry {
                    run_id: new_run_id(),
                    attempt: e.attempt + 1,
                    enqueued: Utc::now(),
                    claim: None,
                    ..e
                };
                self.queue.enqueue(&next).await?;
                (self.progress)(
                    &next.run_id,
                    Progress::RunRequeued {
                        run_id: next.run_id.clone(),
                        previous: e.run_id.clone(),
                    },
                );
                again.push(next);
            }
        }
        Ok(again)
    }

    /// Runs queued runs until `stop` is cancelled, then waits for the runs
    /// going to end.
    pub async fn serve(self: Arc<Self>, stop: CancellationToken) {
        let mut running = JoinSet::new();
        let mut short = false;
        loop {
            // Short of room: runs wait in the queue (said once, and again
            // when room returns).
            let now_short = self.config.disk.as_ref().and_then(|d| d.short());
            match (&now_short, short) {
                (Some(why), false) => tracing::warn!("{why}; queued runs wait"),
                (None, true) => {
                    tracing::info!("the state folder's disk has room again: queued runs start")
                }
                _ => {}
            }
            short = now_short.is_some();
            while !short && running.len() < self.config.runs.max(1) {
                let until = Utc::now() + self.config.claim_for;
                match self.queue.claim(&self.owner, until).await {
                    Ok(Some(entry)) => {
                        running.spawn(self.clone().run_one(entry));
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::error!("cannot claim a queued run: {e}");
                        break;
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                Some(_) = running.join_next(), if !running.is_empty() => {}
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        while running.join_next().await.is_some() {}
    }

    async fn run_one(self: Arc<Self>, entry: QueueEntry) {
        let heartbeat = {
            let (queue, owner, run) =
                (self.queue.clone(), self.owner.clone(), entry.run_id.clone());
            let every = self.config.claim_for / 3;
            let claim_for = self.config.claim_for;
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    match queue.renew(&run, &owner, Utc::now() + claim_for).await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::error!("run {run}: its claim was taken back");
                            return;
                        }
                        Err(e) => tracing::warn!("run {run}: cannot renew its claim: {e}"),
                    }
                }
            })
        };
        let id = entry.run_id.clone();
        // Cancellable from its claim on, while it is being prepared too.
        let signals = Signals::default();
        if let Ok(mut s) = self.signals.lock() {
            s.insert(id.clone(), signals.clone());
        }
        let mut paused = false;
        let failed = match (self.resolve)(entry.clone()).await {
            Err(reason) => Some((RunStatus::Failed, reason.to_string())),
            Ok(_) if signals.cancel.is_cancelled() => Some((
                RunStatus::Cancelled,
                "cancelled before it started".to_string(),
            )),
            Ok(mut req) => {
                req.run_id = Some(id.clone());
                let progress: ProgressFn = {
                    let (all, id) = (self.progress.clone(), id.clone());
                    Arc::new(move |p: Progress| all(&id, p))
                };
                match self.engine.run(req, progress, signals.clone()).await {
                    Ok(doc) => {
                        paused = doc.status == RunStatus::WaitingApproval;
                        None
                    }
                    Err(e) => Some((RunStatus::Failed, e.to_string())),
                }
            }
        };
        heartbeat.abort();
        // A paused run's hold takes it out of the queue itself; a cancel
        // that came while it paused (its signals are still here) cancels
        // it once held — one that comes later finds it held.
        if paused {
            let held = self.hold_paused(&entry, HoldOp::Hold).await;
            if let Ok(mut s) = self.signals.lock() {
                s.remove(&id);
            }
            if held && signals_cancelled(&signals) {
                self.hold_paused(&entry, HoldOp::Cancel).await;
            }
            if held {
                return;
            }
        }
        if let Ok(mut s) = self.signals.lock() {
            s.remove(&id);
        }
        if let Some((status, reason)) = failed {
            self.end_unstarted(&entry, status, &reason).await;
        }
        if let Err(e) = self.queue.finish(&id).await {
            tracing::error!("run {id}: cannot remove it from the queue: {e}");
        }
    }
}

fn signals_cancelled(s: &Signals) -> bool {
    s.cancel.is_cancelled() || s.abort.is_cancelled()
}

/// Records a queued run that ends without running (or whose runner died
/// before it was final): its document with no stages, stored and published.
async fn record_unstarted(
    engine: &Engine,
    e: &QueueEntry,
    status: RunStatus,
    reason: &str,
) -> Result<(), StorageError> {
    let existing = engine.store.get_run(&e.run_id).await?;
    let now = Utc::now();
    let mut run = existing.unwrap_or_else(|| RunDoc {
        schema: SCHEMA_VERSION,
        id: e.run_id.clone(),
        pipeline: e.pipeline.clone(),
        status: RunStatus::Queued,
        reason: None,
        trigger: e.trigger.clone(),
        git: None,
        created: e.enqueued,
        started: None,
        finished: None,
        duration_ms: None,
        stages: Vec::new(),
        sentinel: env!("CARGO_PKG_VERSION").to_string(),
        from_run: None,
        deploy: None,
        upstream: None,
        pull_request: None,
    });
    if run.status.is_final() && run.finished.is_some() {
        // Ended already (its runner recorded it): one final state only.
        return Ok(());
    }
    // Through the one transition function, like every status change.
    let event = match status {
        RunStatus::Interrupted => RunEvent::Interrupt,
        other => RunEvent::Finish(other),
    };
    match run_transition(run.status, event) {
        Some(to) => run.status = to,
        None => {
            tracing::error!("run {}: cannot go from {} to {status}", run.id, run.status);
            return Ok(());
        }
    }
    run.reason = Some(reason.to_string());
    run.finished = Some(now);
    let e = crate::docs::event(None, status.as_str(), run.reason.clone());
    engine.store.end_run(&run, &e).await?;
    engine.sink.put_run(&run).await?;
    engine.sink.update_index(&RunSummary::of(&run)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{FakeExecutor, MemSink, MemStore};
    use crate::ports::Store;

    fn entry(id: &RunId) -> QueueEntry {
        QueueEntry {
            run_id: id.clone(),
            pipeline: "p".into(),
            trigger: sentinel_api::Trigger {
                kind: sentinel_api::TriggerKind::Api,
                by: None,
            },
            request: serde_json::Value::Null,
            attempt: 1,
            enqueued: Utc::now(),
            claim: None,
        }
    }

    #[tokio::test]
    async fn an_unstarted_run_changes_status_through_the_transition_function() {
        let store = Arc::new(MemStore::default());
        let engine = Engine {
            exec: Arc::new(FakeExecutor::default()),
            store: store.clone(),
            sink: Arc::new(MemSink::default()),
            config: crate::EngineConfig {
                jobs: 1,
                state_dir: std::env::temp_dir(),
                keep_workspace: false,
                keep_files: 0,
            },
        };
        let id: RunId = "01JDX3K6Q2T8W9V5M4N3P2R1S0".parse().unwrap();
        record_unstarted(&engine, &entry(&id), RunStatus::Cancelled, "cancelled")
            .await
            .unwrap();
        let run = store.get_run(&id).await.unwrap().unwrap();
        assert_eq!(run.status, RunStatus::Cancelled);

        // A run already final (but not marked finished) is never moved to
        // another final state: the transition refuses it.
        let other: RunId = "01JDX3K6Q2T8W9V5M4N3P2R1S1".parse().unwrap();
        let mut done = run.clone();
        done.id = other.clone();
        done.status = RunStatus::Succeeded;
        done.finished = None;
        store.put_run(&done, true).await.unwrap();
        record_unstarted(&engine, &entry(&other), RunStatus::Failed, "nope")
            .await
            .unwrap();
        let after = store.get_run(&other).await.unwrap().unwrap();
        assert_eq!(after.status, RunStatus::Succeeded);
    }
}
