//! The scheduler: runs a plan's stages as a DAG, at most `jobs` at a time,
//! records every transition in the store, publishes documents in the
//! results layout's order, and always ends with the run final, its
//! resources and workspace removed and its lease released — on success,
//! failure and cancel. It reaches the workspace only through the
//! executor's handle and the stages' jobs and reports.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use chrono::Utc;
use sentinel_api::{RunDoc, RunId, RunStatus, StageName, StageStatus};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::exec::{Executor, RunContext, Source, Workspace};
use crate::gate::{Gate, Stuck};
use crate::lease::{Lease, Owner};
use crate::log::LiveLog;
use crate::ports::{ResultsSink, Store};
use crate::prepare::{
    cache_of, capture_of, env_of, inputs_of, kept_dir, preflight, registry_auth, restored,
    service_env, to_warm,
};
use crate::record::Recorder;
pub use crate::request::{Reused, RunRequest, Upstream};
use crate::stage::{StageResult, StageRun, run_stage};
use crate::transition::{Decision, RunEvent, StageEvent, decide, run_outcome};
use crate::workspace::{FileSet, RunDirs, default_user, runs_dir};

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Most stages running at once.
    pub jobs: usize,
    /// Where run folders (workspace copies, live logs) live.
    pub state_dir: PathBuf,
    /// Keep the run's workspace copy after the run.
    pub keep_workspace: bool,
    /// How many runs keep the files their stages created, for re-runs
    /// (the newest; 0 keeps none).
    pub keep_files: usize,
}

impl EngineConfig {
    /// How many runs keep their stages' files by default.
    pub const KEEP_FILES: usize = 20;
}

/// What the engine reports as a run goes.
#[derive(Debug, Clone)]
pub enum Progress {
    RunStarted {
        run_id: RunId,
        stages: Vec<StageName>,
    },
    Stage {
        name: StageName,
        status: StageStatus,
        reason: Option<String>,
        duration_ms: Option<u64>,
    },
    /// Masked log bytes of a running stage.
    Log {
        name: StageName,
        bytes: Vec<u8>,
    },
    /// A final stage's log, artifacts and document are written to the
    /// results (or were refused by the secret sweep): from now on its log is
    /// read from there. Follows the stage's final `Stage` event.
    Published {
        name: StageName,
    },
    RunFinished {
        run_id: RunId,
        status: RunStatus,
    },
    /// A run whose server died is queued again as a new run (`run_id`, a
    /// new attempt of `previous`).
    RunRequeued {
        run_id: RunId,
        previous: RunId,
    },
}

/// Receives progress events.
pub type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;

/// Why a run could not start. Nothing has run when this is returned.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error("{0}")]
    Missing(String),
    #[error("secret `{name}`: {source}")]
    Secret {
        name: String,
        #[source]
        source: crate::masker::MaskError,
    },
    #[error("{0}")]
    Storage(#[from] crate::ports::StorageError),
}

/// Runs plans.
#[derive(Debug, Clone)]
pub struct Engine {
    pub exec: Arc<dyn Executor>,
    pub store: Arc<dyn Store>,
    pub sink: Arc<dyn ResultsSink>,
    pub config: EngineConfig,
}

/// The signals a run listens to.
#[derive(Debug, Clone, Default)]
pub struct Signals {
    /// Stop running stages; still run `always` stages.
    pub cancel: CancellationToken,
    /// Stop everything, `always` stages too.
    pub abort: CancellationToken,
    /// Why it was cancelled, when the canceller said (the run's reason).
    why: Arc<std::sync::Mutex<Option<String>>>,
}

impl Signals {
    /// Cancels, saying why (the first reason given stands).
    pub fn cancel_because(&self, why: String) {
        if let Ok(mut w) = self.why.lock()
            && w.is_none()
        {
            *w = Some(why);
        }
        self.cancel.cancel();
    }

    /// Why it was cancelled, when the canceller said.
    pub fn why(&self) -> Option<String> {
        self.why.lock().ok().and_then(|w| w.clone())
    }
}

impl Engine {
    /// Runs a plan to its end and returns the final run document.
    pub async fn run(
        &self,
        req: RunRequest,
        progress: ProgressFn,
        signals: Signals,
    ) -> Result<RunDoc, PreflightError> {
        let secrets = preflight(&req)?;
        let run_id: RunId = match &req.run_id {
            Some(id) => id.clone(),
            None => crate::docs::new_run_id(),
        };
        let owner = Owner::current();
        let dirs = RunDirs::new(&self.config.state_dir, &run_id);
        let plan = Arc::new(req.plan.clone());
        let mut rec = Recorder::new(
            self.store.clone(),
            self.sink.clone(),
            secrets,
            run_id.clone(),
            plan.clone(),
            req.trigger.clone(),
            req.git.clone(),
        );
        rec.set_from_run(req.from_run.clone());
        rec.set_deploy(req.deploy.clone());
        rec.set_upstream(req.upstream.as_ref().map(|u| u.run.clone()));
        rec.run.pull_request = req.pull_request.clone();
        if let Some(r) = &req.resume {
            rec.resume(r, &req.reuse);
        }

        // Accepted: durable before anything runs; the lease's durable write makes the run durable too.
        self.store.put_run(&rec.run_doc(), false).await?;
        self.store
            .put_lease(&Lease {
                run_id: run_id.clone(),
                owner: owner.clone(),
                heartbeat: Utc::now(),
            })
            .await?;
        rec.publish_all(true).await;
        progress(Progress::RunStarted {
            run_id: run_id.clone(),
            stages: plan.stages.iter().map(|s| s.name.clone()).collect(),
        });

        let heartbeat = crate::lease::keep_alive(
            self.store.clone(),
            Lease {
                run_id: run_id.clone(),
                owner: owner.clone(),
                heartbeat: Utc::now(),
            },
        );

        let mut workspace = None;
        let status = self
            .drive(
                &req,
                &mut rec,
                &owner,
                &dirs,
                &progress,
                &signals,
                &mut workspace,
            )
            .await;

        self.exec.end_run(&run_id).await;
        heartbeat.abort();
        let paused = status == RunStatus::WaitingApproval;
        // Paused on disk while it still holds its lease: recovery leaves a
        // paused run alone.
        if paused {
            rec.pause().await;
        }
        // Released before the final, durable write, which makes both durable.
        if let Err(e) = self.store.remove_lease(&run_id).await {
            tracing::warn!("cannot release the run's lease: {e}");
        }
        if !paused {
            rec.finish(status).await;
        }
        if !self.config.keep_workspace {
            if let Some(ws) = &workspace {
                ws.remove().await;
            }
            let root = dirs.root.clone();
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(root)).await;
        }
        // The files of a paused run's stages wait with it.
        crate::prepare::prune_kept_sparing(self.store.as_ref(), &self.config).await;
        progress(Progress::RunFinished {
            run_id: run_id.clone(),
            status: rec.run.status,
        });
        Ok(rec.run_doc())
    }

    /// Prepares the run and schedules its stages; returns the run's final
    /// status (and the reason, via the recorder). The workspace, once made,
    /// is left in `workspace` for the caller to remove.
    #[allow(clippy::too_many_arguments)]
    async fn drive(
        &self,
        req: &RunRequest,
        rec: &mut Recorder,
        owner: &Owner,
        dirs: &RunDirs,
        progress: &ProgressFn,
        signals: &Signals,
        workspace: &mut Option<Arc<dyn Workspace>>,
    ) -> RunStatus {
        let plan = rec.plan.clone();
        let user = plan
            .stages
            .first()
            .and_then(|s| s.limits.user.clone())
            .unwrap_or_else(default_user);
        rec.run_event(RunEvent::Start, None).await;
        rec.schedule_all(progress).await;
        for (name, why) in &req.not_reused {
            rec.warn(name, format!("run again, not reused: {why}"));
        }

        let services = match service_env(req, &rec.run_id) {
            Ok(s) => s,
            Err(e) => return self.fail_all(rec, e.to_string(), progress, signals).await,
        };
        let registries = match registry_auth(req, &rec.run_id).and_then(|r| {
            let values: Vec<String> = r.iter().map(|a| a.password.clone()).collect();
            rec.add_secrets(&values)
                .map(|()| r)
                .map_err(|e| format!("a registry password: {e}"))
        }) {
            Ok(r) => r,
            Err(e) => return self.fail_all(rec, e, progress, signals).await,
        };
        let ctx = RunContext {
            run_id: rec.run_id.clone(),
            owner: owner.clone(),
            runs_dir: runs_dir(&self.config.state_dir),
            services,
            registries,
        };
        // The workspace: a copy of the source (and a re-run's kept files),
        // owned by the stages' user, made by the executor.
        let source = Source {
            dir: req.source.clone(),
            skip: req.skip.clone(),
            git: plan.workspace.git,
            dirs: plan.workspace.dirs.clone(),
            restore: restored(&plan, &req.reuse),
            user: user.clone(),
        };
        let logs = dirs.logs.clone();
        let made = match tokio::fs::create_dir_all(&logs).await {
            Err(e) => Err(format!("cannot make the run's log folder: {e}")),
            Ok(()) => tokio::select! {
                r = self.exec.prepare_workspace(&ctx, &source) => r.map_err(|e| format!("cannot prepare the workspace: {e}")),
                _ = signals.cancel.cancelled() => Err("cancelled while preparing the workspace".into()),
            },
        };
        let made = match made {
            Ok(ws) => {
                *workspace = Some(ws.clone());
                tokio::select! {
                    r = self.exec.start_run(&ctx) => r.map(|()| ws).map_err(|e| e.to_string()),
                    _ = signals.cancel.cancelled() => Err("cancelled while starting services".into()),
                }
            }
            Err(e) => Err(e),
        };
        let ws = match made {
            Ok(ws) => ws,
            Err(e) => {
                return self
                    .fail_all(
                        rec,
                        format!("the run could not start: {e}"),
                        progress,
                        signals,
                    )
                    .await;
            }
        };
        let keep = self.config.keep_files > 0;

        let mut running = JoinSet::new();
        let mut tokens: BTreeMap<StageName, (CancellationToken, bool)> = BTreeMap::new();
        // Cancelled while it waited at a gate: it goes on only to end so
        // (its `always` stages run).
        let mut cancelled = req.gates.values().any(|g| matches!(g, Gate::Cancel { .. }));
        let mut aborted = false;
        let mut warmed = std::collections::BTreeSet::new();
        let mut paused = false;
        // The user a stage's process runs as.
        let user_of = |s: &sentinel_pipeline::StagePlan| {
            s.limits.user.clone().unwrap_or_else(|| user.clone())
        };
        // Each stage's dependencies by position: a turn looks at every
        // stage, and by name that made a 1,000-stage DAG slow.
        let needs_at: Vec<Vec<usize>> = plan
            .stages
            .iter()
            .map(|s| s.needs.iter().map(|n| rec.position(n)).collect())
            .collect();
        loop {
            // Decide every pending stage whose dependencies are final.
            let mut changed = false;
            for (i, s) in plan.stages.iter().enumerate() {
                if rec.status_at(i) != StageStatus::Pending
                    || needs_at[i].iter().any(|&d| !rec.status_at(d).is_final())
                {
                    continue;
                }
                let deps: Vec<(&str, StageStatus)> = s
                    .needs
                    .iter()
                    .map(|n| (n.as_str(), rec.state(n).status))
                    .collect();
                // Walked only when it decides (an `on_failure` stage whose
                // dependencies ended): a walk per pending stage per turn
                // made a 1,000-stage DAG quadratic.
                let upstream_failed = s.when == sentinel_pipeline::When::OnFailure
                    && deps.iter().all(|(_, st)| st.is_final())
                    && rec.upstream_failed(&s.name);
                match decide(s.when, &deps, upstream_failed, cancelled) {
                    Decision::Wait => {}
                    Decision::Run if aborted => {
                        rec.stage_event(
                            &s.name,
                            StageEvent::Cancel,
                            Some("the run was aborted".into()),
                            progress,
                        )
                        .await;
                        changed = true;
                    }
                    Decision::Run => {
                        if running.len() >= self.config.jobs.max(1) {
                            continue;
                        }
                        changed = true;
                        if let Some(why) = &req.withheld
                            && let Some(secret) = crate::prepare::secret_needed(s)
                        {
                            let why = format!("{why}, and this stage needs secret `{secret}`");
                            rec.stage_event(&s.name, StageEvent::Skip, Some(why), progress)
                                .await;
                            continue;
                        }
                        if !req.reuse.contains_key(&s.name)
                            && !rec.at_gate(s, &req.gates, progress).await
                        {
                            continue;
                        }
                        if let Some(prev) = req.reuse.get(&s.name) {
                            rec.stage_event(&s.name, StageEvent::Start, None, progress)
                                .await;
                            let to = capture_of(&self.config.state_dir, &rec.run_id, s, keep);
                            let files = match (&prev.files, to) {
                                (Some(old), Some(to)) => keep_copy(old.clone(), to).await,
                                (old, _) => old.clone(),
                            };
                            let result = StageResult::reused(
                                s.name.clone(),
                                &prev.run,
                                prev.output.clone(),
                                prev.outputs.clone(),
                                files,
                            );
                            rec.finish_stage(result, progress).await;
                            continue;
                        }
                        let env = env_of(req, rec, &plan, s, cancelled);
                        rec.stage_event(&s.name, StageEvent::Start, None, progress)
                            .await;
                        let env = env.map_err(|e| e.to_string()).and_then(|env| {
                            rec.add_secrets(&env.secret_values)
                                .map(|()| env)
                                .map_err(|e| format!("a secret setting: {e}"))
                        });
                        let env = match env {
                            Ok(env) => env,
                            Err(e) => {
                                rec.finish_stage_early(
                                    &s.name,
                                    format!("cannot build the stage's environment: {e}"),
                                    progress,
                                )
                                .await;
                                continue;
                            }
                        };
                        rec.set_inputs(&s.name, env.recorded.clone());
                        rec.set_settings(&s.name, env.settings.clone());
                        let token = CancellationToken::new();
                        tokens.insert(
                            s.name.clone(),
                            (token.clone(), s.when == sentinel_pipeline::When::Always),
                        );
                        let job = StageRun {
                            plan: s.clone(),
                            run_id: rec.run_id.clone(),
                            owner: owner.clone(),
                            dirs: dirs.clone(),
                            workspace: ws.clone(),
                            env: env.vars,
                            user: user_of(s),
                            secrets: rec.secrets(),
                            http: env.http.clone(),
                            steps: env.steps,
                            build: env.build,
                            image: env.image,
                            inputs: inputs_of(rec, s),
                            capture: capture_of(&self.config.state_dir, &rec.run_id, s, keep),
                            cache: cache_of(req, rec, &plan, s),
                        };
                        let live: Option<LiveLog> = {
                            let progress = progress.clone();
                            let name = s.name.clone();
                            Some(Box::new(move |bytes: &[u8]| {
                                if !bytes.is_empty() {
                                    progress(Progress::Log {
                                        name: name.clone(),
                                        bytes: bytes.to_vec(),
                                    });
                                }
                            }))
                        };
                        running.spawn(run_stage(self.exec.clone(), job, token, live));
                    }
                    Decision::Skip(reason) => {
                        rec.stage_event(&s.name, StageEvent::Skip, Some(reason), progress)
                            .await;
                        changed = true;
                    }
                    Decision::Cancel => {
                        if let Some(Gate::Cancel { gate }) = req.gates.get(&s.name) {
                            rec.cancelled_gate(&s.name, gate.clone());
                        }
                        rec.stage_event(
                            &s.name,
                            StageEvent::Cancel,
                            Some("the run was cancelled".into()),
                            progress,
                        )
                        .await;
                        changed = true;
                    }
                }
            }
            // Get the next container stages ready while their dependencies run.
            if !cancelled {
                for (s, c) in to_warm(&plan, rec, req, &warmed, self.config.jobs.max(1) * 2) {
                    warmed.insert(s.name.clone());
                    self.exec
                        .prewarm(crate::exec::WarmStage {
                            run_id: rec.run_id.clone(),
                            stage: s.name.clone(),
                            owner: owner.clone(),
                            work: crate::exec::Work::Container(c.clone()),
                            limits: s.limits.clone(),
                            user: user_of(s),
                            workspace: ws.clone(),
                        })
                        .await;
                }
            }
            if changed {
                continue;
            }
            if running.is_empty() {
                match rec.when_stuck(cancelled, progress).await {
                    Stuck::Done => break,
                    Stuck::Pause => {
                        paused = true;
                        break;
                    }
                    Stuck::GatesClosed => continue,
                }
            }
            let due = rec.run_doc_due();
            tokio::select! {
                _ = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)), if due.is_some() => {
                    rec.publish_run_due().await;
                }
                done = running.join_next() => {
                    match done {
                        Some(Ok(result)) => {
                            tokens.remove(&result.name);
                            rec.finish_stage(result, progress).await;
                        }
                        Some(Err(e)) => tracing::error!("a stage task failed: {e}"),
                        None => {}
                    }
                }
                _ = signals.cancel.cancelled(), if !cancelled => {
                    cancelled = true;
                    for (token, always) in tokens.values() {
                        if !always {
                            token.cancel();
                        }
                    }
                }
                _ = signals.abort.cancelled(), if !aborted => {
                    cancelled = true;
                    aborted = true;
                    for (token, _) in tokens.values() {
                        token.cancel();
                    }
                }
            }
        }
        if paused {
            rec.set_reason(Some(rec.pause_reason()));
            return RunStatus::WaitingApproval;
        }
        // A stage task that panicked leaves its stage running: close it.
        for s in plan.stages.iter() {
            if !rec.state(&s.name).status.is_final() {
                rec.finish_stage_early(
                    &s.name,
                    "the stage's task ended unexpectedly".into(),
                    progress,
                )
                .await;
            }
        }
        let status = run_outcome(
            plan.stages.iter().map(|s| rec.state(&s.name).status),
            cancelled,
        );
        rec.set_reason(match status {
            RunStatus::Cancelled => Some(
                signals
                    .why()
                    .unwrap_or_else(|| "the run was cancelled".to_string()),
            ),
            RunStatus::Failed => rec.first_failure(),
            _ => None,
        });
        status
    }

    /// Ends a run that could not start: every stage is skipped with the
    /// reason — or, when the run was cancelled meanwhile, cancelled.
    async fn fail_all(
        &self,
        rec: &mut Recorder,
        reason: String,
        progress: &ProgressFn,
        signals: &Signals,
    ) -> RunStatus {
        let cancelled = signals.cancel.is_cancelled();
        let (event, reason, status) = if cancelled {
            let why = "the run was cancelled before its stages started".to_string();
            (StageEvent::Cancel, why, RunStatus::Cancelled)
        } else {
            (StageEvent::Skip, reason, RunStatus::Failed)
        };
        for s in rec.plan.clone().stages.iter() {
            rec.stage_event(&s.name, event, Some(reason.clone()), progress)
                .await;
        }
        rec.set_reason(Some(reason));
        status
    }

    /// Marks runs whose owner died `interrupted`, publishes that, and removes
    /// their resources. Each run is recovered on its own: one that cannot be
    /// is reported and the others still are.
    pub async fn recover(&self) -> crate::recover::Recovery {
        crate::recover::recover(self).await
    }

    /// Where the files of a run's stages are kept.
    pub fn kept_dir(&self, run: &RunId) -> PathBuf {
        kept_dir(&self.config.state_dir, run)
    }
}

/// Copies a reused stage's kept files into this run's, so a re-run of this
/// run finds them too.
async fn keep_copy(old: FileSet, to: PathBuf) -> Option<FileSet> {
    tokio::task::spawn_blocking(move || {
        crate::workspace::copy_tree(&old.dir, &to, "").ok()?;
        Some(FileSet { dir: to, ..old })
    })
    .await
    .ok()
    .flatten()
}
