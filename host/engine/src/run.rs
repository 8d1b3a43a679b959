//! The scheduler: runs a plan's stages as a DAG, at most `jobs` at a time,
//! records every transition in the store, publishes documents in the
//! results layout's order, and always ends with the run final, its
//! resources removed and its lease released — on success, failure and cancel.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use chrono::Utc;
use sentinel_api::{GitContext, RunDoc, RunId, RunStatus, StageName, StageStatus, Trigger};
use sentinel_pipeline::{Plan, Ref};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::env::{EnvInputs, resolve, stage_env};
use crate::exec::{Executor, RunContext};
use crate::lease::{Lease, Owner};
use crate::log::LiveLog;
use crate::masker::SecretSet;
use crate::ports::{ResultsSink, Store};
use crate::record::Recorder;
use crate::stage::{StageResult, StageRun, run_stage};
use crate::transition::{Decision, RunEvent, StageEvent, decide, run_outcome};
use crate::workspace::{RunDirs, copy_source, default_user, hand_over};

/// A service and its resolved environment.
type ServiceWithEnv = (sentinel_pipeline::ServicePlan, Vec<(String, String)>);

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Most stages running at once.
    pub jobs: usize,
    /// Where run folders (workspace copies, live logs) live.
    pub state_dir: PathBuf,
    /// Keep the run's workspace copy after the run.
    pub keep_workspace: bool,
}

/// A request to run a plan.
#[derive(Debug, Clone)]
pub struct RunRequest {
    pub plan: Plan,
    /// The folder copied into the run's workspace.
    pub source: PathBuf,
    /// Top-level names in `source` not copied (the state folder, say).
    pub skip: Vec<String>,
    pub trigger: Trigger,
    pub git: Option<GitContext>,
    /// The environment Sentinel runs in, for `NAME: ~` variables.
    pub host_env: BTreeMap<String, String>,
    /// Secret values by name.
    pub secrets: BTreeMap<String, String>,
    /// The run's id when it was given at acceptance (a queued run); a new
    /// one otherwise.
    pub run_id: Option<RunId>,
    /// Stages not run again but taken from an earlier run (a re-run from a
    /// failed stage): each is recorded succeeded with its earlier outputs.
    pub reuse: BTreeMap<StageName, Reused>,
}

/// A stage's result taken from an earlier run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reused {
    /// The run it comes from.
    pub run: RunId,
    /// Its trimmed stdout (`${stages.<name>.output}`, `out/<name>`).
    pub output: String,
    /// Its named outputs.
    pub outputs: BTreeMap<String, String>,
}

impl RunRequest {
    /// A request started from this machine (`sentinel run`), with no git
    /// context, host variables or secrets; set those fields as needed.
    pub fn local(plan: Plan, source: PathBuf) -> Self {
        Self {
            plan,
            source,
            skip: Vec::new(),
            trigger: Trigger {
                kind: sentinel_api::TriggerKind::Local,
                by: None,
            },
            git: None,
            host_env: BTreeMap::new(),
            secrets: BTreeMap::new(),
            run_id: None,
            reuse: BTreeMap::new(),
        }
    }
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
}

impl Engine {
    /// Checks what a run needs from the host, before anything is created.
    fn preflight(req: &RunRequest) -> Result<Arc<SecretSet>, PreflightError> {
        let plan = &req.plan;
        for (name, v) in &plan.env {
            if matches!(v, sentinel_pipeline::EnvValue::FromHost)
                && !req.host_env.contains_key(name)
            {
                return Err(PreflightError::Missing(format!(
                    "environment variable `{name}` is not set (the pipeline's `env:` takes it from the environment sentinel runs in)"
                )));
            }
        }
        let used = plan
            .stages
            .iter()
            .flat_map(|s| s.templates())
            .chain(plan.services.iter().flat_map(|s| s.env.values()))
            .flat_map(|t| t.refs())
            .filter_map(|r| match r {
                Ref::Secret(n) => Some(n.clone()),
                _ => None,
            });
        for name in used {
            if !req.secrets.contains_key(&name) {
                return Err(PreflightError::Missing(format!(
                    "secret `{name}` is not set (export {name}=… in the environment sentinel runs in)"
                )));
            }
        }
        let mut set = SecretSet::new();
        for name in &plan.secrets {
            if let Some(v) = req.secrets.get(name) {
                set = set
                    .with([v.as_bytes()])
                    .map_err(|source| PreflightError::Secret {
                        name: name.clone(),
                        source,
                    })?;
            }
        }
        Ok(Arc::new(set))
    }

    /// Runs a plan to its end and returns the final run document.
    pub async fn run(
        &self,
        req: RunRequest,
        progress: ProgressFn,
        signals: Signals,
    ) -> Result<RunDoc, PreflightError> {
        let secrets = Self::preflight(&req)?;
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
            dirs.clone(),
        );

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

        let heartbeat = {
            let store = self.store.clone();
            let lease = Lease {
                run_id: run_id.clone(),
                owner: owner.clone(),
                heartbeat: Utc::now(),
            };
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
                loop {
                    tick.tick().await;
                    let lease = Lease {
                        heartbeat: Utc::now(),
                        ..lease.clone()
                    };
                    if let Err(e) = store.put_lease(&lease).await {
                        tracing::warn!("cannot renew the run's lease: {e}");
                    }
                }
            })
        };

        let status = self
            .drive(&req, &mut rec, &owner, &dirs, &progress, &signals)
            .await;

        self.exec.end_run(&run_id).await;
        heartbeat.abort();
        // Released before the final, durable write, which makes both durable.
        if let Err(e) = self.store.remove_lease(&run_id).await {
            tracing::warn!("cannot release the run's lease: {e}");
        }
        rec.finish(status).await;
        if !self.config.keep_workspace {
            let root = dirs.root.clone();
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(root)).await;
        }
        progress(Progress::RunFinished {
            run_id: run_id.clone(),
            status: rec.run.status,
        });
        Ok(rec.run_doc())
    }

    /// Prepares the run and schedules its stages; returns the run's final
    /// status (and the reason, via the recorder).
    async fn drive(
        &self,
        req: &RunRequest,
        rec: &mut Recorder,
        owner: &Owner,
        dirs: &RunDirs,
        progress: &ProgressFn,
        signals: &Signals,
    ) -> RunStatus {
        let plan = rec.plan.clone();
        let user = plan
            .stages
            .first()
            .and_then(|s| s.limits.user.clone())
            .unwrap_or_else(default_user);
        rec.run_event(RunEvent::Start, None).await;
        rec.schedule_all(progress).await;

        // The workspace: a copy of the source, owned by the stages' user.
        let (source, ws, skip, u) = (
            req.source.clone(),
            dirs.workspace.clone(),
            req.skip.clone(),
            user.clone(),
        );
        let logs = dirs.logs.clone();
        let copied = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&logs)?;
            let skip: Vec<&str> = skip.iter().map(String::as_str).collect();
            copy_source(&source, &ws, &skip)?;
            std::fs::create_dir_all(ws.join("out"))?;
            hand_over(&ws, &u)
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r);
        let start_error = match copied {
            Err(e) => Some(format!("cannot prepare the workspace: {e}")),
            Ok(()) => {
                let services = match self.service_env(req, rec) {
                    Ok(s) => s,
                    Err(e) => return self.fail_all(rec, e, progress).await,
                };
                let ctx = RunContext {
                    run_id: rec.run_id.clone(),
                    owner: owner.clone(),
                    services,
                };
                tokio::select! {
                    r = self.exec.start_run(&ctx) => r.err().map(|e| e.0),
                    _ = signals.cancel.cancelled() => Some("cancelled while starting services".into()),
                }
            }
        };
        if let Some(e) = start_error {
            return self
                .fail_all(rec, format!("the run could not start: {e}"), progress)
                .await;
        }

        let mut running = JoinSet::new();
        let mut tokens: BTreeMap<StageName, (CancellationToken, bool)> = BTreeMap::new();
        let mut cancelled = false;
        let mut aborted = false;
        loop {
            // Decide every pending stage whose dependencies are final.
            let mut changed = false;
            for s in plan.stages.iter() {
                if rec.state(&s.name).status != StageStatus::Pending {
                    continue;
                }
                let deps: Vec<(&str, StageStatus)> = s
                    .needs
                    .iter()
                    .map(|n| (n.as_str(), rec.state(n).status))
                    .collect();
                let upstream_failed = rec.upstream_failed(&s.name);
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
                        if let Some(prev) = req.reuse.get(&s.name) {
                            rec.stage_event(&s.name, StageEvent::Start, None, progress)
                                .await;
                            let now = Utc::now();
                            let result = StageResult {
                                name: s.name.clone(),
                                status: StageStatus::Succeeded,
                                reason: Some(format!("reused from run {}", prev.run)),
                                failure: None,
                                exit_code: None,
                                started: now,
                                finished: now,
                                output: prev.output.clone(),
                                outputs: prev.outputs.clone(),
                                log: Default::default(),
                                image_id: None,
                                private: dirs.private(&s.name),
                                reusable: false,
                            };
                            rec.finish_stage(result, progress).await;
                            continue;
                        }
                        // What earlier stages left in `out/` is there before it starts.
                        rec.settle_outputs().await;
                        let env = {
                            let outputs = rec.outputs();
                            let sensitive = rec.sensitive();
                            let run_status = rec.status_so_far(cancelled);
                            let inputs = EnvInputs {
                                plan: &plan,
                                run_id: &rec.run_id,
                                git: req.git.as_ref(),
                                host_env: &req.host_env,
                                secrets: &req.secrets,
                                outputs: &outputs,
                                sensitive: &sensitive,
                                run_status,
                                failed_stages: rec.failed_stages(),
                            };
                            stage_env(&inputs, s)
                        };
                        rec.stage_event(&s.name, StageEvent::Start, None, progress)
                            .await;
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
                        rec.add_secrets(&env.secret_values);
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
                            env: env.vars,
                            user: s.limits.user.clone().unwrap_or_else(|| user.clone()),
                            secrets: rec.secrets(),
                            http: env.http.clone(),
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
            if changed {
                continue;
            }
            if running.is_empty() {
                break;
            }
            tokio::select! {
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
            RunStatus::Cancelled => Some("the run was cancelled".to_string()),
            RunStatus::Failed => rec.first_failure(),
            _ => None,
        });
        status
    }

    fn service_env(&self, req: &RunRequest, rec: &Recorder) -> Result<Vec<ServiceWithEnv>, String> {
        let empty = BTreeMap::new();
        let inputs = EnvInputs {
            plan: &req.plan,
            run_id: &rec.run_id,
            git: req.git.as_ref(),
            host_env: &req.host_env,
            secrets: &req.secrets,
            outputs: &empty,
            sensitive: &[],
            run_status: "running",
            failed_stages: String::new(),
        };
        req.plan
            .services
            .iter()
            .map(|svc| {
                let vars = svc
                    .env
                    .iter()
                    .map(|(k, t)| t.render(|r| resolve(&inputs, r)).map(|v| (k.clone(), v)))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("service `{}`: {e}", svc.name))?;
                Ok((svc.clone(), vars))
            })
            .collect()
    }

    /// Ends a run that could not start: every stage is skipped with the reason.
    async fn fail_all(
        &self,
        rec: &mut Recorder,
        reason: String,
        progress: &ProgressFn,
    ) -> RunStatus {
        for s in rec.plan.clone().stages.iter() {
            rec.stage_event(&s.name, StageEvent::Skip, Some(reason.clone()), progress)
                .await;
        }
        rec.set_reason(Some(reason));
        RunStatus::Failed
    }

    /// Marks runs whose owner died `interrupted`, publishes that, and removes
    /// their resources. Returns the runs it recovered.
    pub async fn recover(&self) -> Result<Vec<RunId>, crate::ports::StorageError> {
        crate::recover::recover(self).await
    }
}
