//! The run's bookkeeping: every stage's state, the transitions applied to
//! it, the store's history, and publishing in the results layout's order
//! (a stage's log and artifacts, its document, `run.json`, the index).
//! Every document and log passes a final secret sweep before it leaves.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::Utc;
use sentinel_api::{
    FailureKind, GitContext, ResolvedInputs, RunDoc, RunId, RunStatus, RunSummary, StageName,
    StageStatus, Trigger,
};
use sentinel_pipeline::{Action, Plan};
use sha2::Digest;

use crate::docs::{apply_run_event, apply_stage_event, event, new_run_doc, run_entries};
use crate::masker::SecretSet;
use crate::ports::{ResultsSink, Store};
use crate::run::{Progress, ProgressFn};
use crate::stage::StageResult;
pub use crate::stage_state::StageState;
use crate::stage_state::duration_ms;
use crate::transition::{RunEvent, StageEvent};
use crate::workspace::RunDirs;

/// Keeps a run's state and publishes it.
#[derive(Debug)]
pub struct Recorder {
    store: Arc<dyn Store>,
    secrets: Arc<SecretSet>,
    pub run_id: RunId,
    pub plan: Arc<Plan>,
    pub run: RunDoc,
    stages: Vec<StageState>,
    index: BTreeMap<StageName, usize>,
    dirs: RunDirs,
    publisher: crate::publish::Publisher,
    /// `out/<stage>` files being written; settled before the next stage starts.
    outs: tokio::task::JoinSet<()>,
}

impl Recorder {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<dyn Store>,
        sink: Arc<dyn ResultsSink>,
        secrets: Arc<SecretSet>,
        run_id: RunId,
        plan: Arc<Plan>,
        trigger: Trigger,
        git: Option<GitContext>,
        dirs: RunDirs,
    ) -> Self {
        let stages: Vec<StageState> = plan
            .stages
            .iter()
            .map(|s| {
                let (image, script_sha256, step) = match &s.action {
                    Action::Container { image, script } => (
                        Some(image.clone()),
                        Some(hex::encode(sha2::Sha256::digest(script.as_bytes()))),
                        None,
                    ),
                    Action::Step { step, resolved, .. } => {
                        (None, None, Some(format!("{step} ({})", resolved.digest)))
                    }
                };
                StageState {
                    name: s.name.clone(),
                    kind: s.kind(),
                    when: s.when.as_str().to_string(),
                    needs: s.needs.clone(),
                    sensitive: s.sensitive,
                    status: StageStatus::Queued,
                    reason: None,
                    failure: None,
                    exit_code: None,
                    started: None,
                    finished: None,
                    output: None,
                    outputs: BTreeMap::new(),
                    log: None,
                    log_bytes: 0,
                    log_cut: 0,
                    artifacts: None,
                    inputs: ResolvedInputs {
                        image,
                        image_id: None,
                        step,
                        script_sha256,
                        env: BTreeMap::new(),
                        settings: BTreeMap::new(),
                        volumes: s.volumes.clone(),
                        limits: s.limits.describe(),
                    },
                    log_body: None,
                    private: None,
                }
            })
            .collect();
        let index = stages
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.clone(), i))
            .collect();
        let run = new_run_doc(run_id.clone(), &plan, trigger, git, run_entries(&stages));
        let publisher = crate::publish::Publisher::start(sink);
        Self {
            store,
            secrets,
            run_id,
            plan,
            run,
            stages,
            index,
            dirs,
            publisher,
            outs: tokio::task::JoinSet::new(),
        }
    }

    /// Waits until every finished stage's `out/<stage>` file is written (a
    /// stage about to start may read them).
    pub async fn settle_outputs(&mut self) {
        while self.outs.join_next().await.is_some() {}
    }

    /// The current run document.
    pub fn run_doc(&self) -> RunDoc {
        let mut run = self.run.clone();
        run.stages = run_entries(&self.stages);
        run
    }

    pub fn state(&self, name: &StageName) -> &StageState {
        &self.stages[self.index[name]]
    }

    fn state_mut(&mut self, name: &StageName) -> &mut StageState {
        let i = self.index[name];
        &mut self.stages[i]
    }

    /// The current secret set (grows as sensitive stages finish).
    pub fn secrets(&self) -> Arc<SecretSet> {
        self.secrets.clone()
    }

    /// True when a transitive dependency of `name` failed.
    pub fn upstream_failed(&self, name: &StageName) -> bool {
        let mut seen = std::collections::BTreeSet::new();
        let mut todo: Vec<&StageName> = self.state(name).needs.iter().collect();
        while let Some(n) = todo.pop() {
            if !seen.insert(n) {
                continue;
            }
            let s = self.state(n);
            if s.status.is_failure() {
                return true;
            }
            todo.extend(s.needs.iter());
        }
        false
    }

    /// Outputs of the stages that succeeded.
    pub fn outputs(&self) -> BTreeMap<StageName, (String, BTreeMap<String, String>)> {
        self.stages
            .iter()
            .filter(|s| s.status == StageStatus::Succeeded)
            .map(|s| {
                (
                    s.name.clone(),
                    (s.output.clone().unwrap_or_default(), s.outputs.clone()),
                )
            })
            .collect()
    }

    /// Stages whose output is secret.
    pub fn sensitive(&self) -> Vec<StageName> {
        self.stages
            .iter()
            .filter(|s| s.sensitive)
            .map(|s| s.name.clone())
            .collect()
    }

    /// `succeeded`, `failed` or `cancelled`: the run so far.
    pub fn status_so_far(&self, cancelled: bool) -> &'static str {
        if cancelled {
            "cancelled"
        } else if self.stages.iter().any(|s| s.status.is_failure()) {
            "failed"
        } else {
            "succeeded"
        }
    }

    /// Stages that failed so far, comma-separated.
    pub fn failed_stages(&self) -> String {
        let failed: Vec<&str> = self
            .stages
            .iter()
            .filter(|s| s.status.is_failure())
            .map(|s| s.name.as_str())
            .collect();
        failed.join(",")
    }

    /// The first failed stage, as a reason for the run.
    pub fn first_failure(&self) -> Option<String> {
        let failed: Vec<&StageState> = self
            .stages
            .iter()
            .filter(|s| s.status.is_failure())
            .collect();
        let first = failed.first()?;
        let more = match failed.len() {
            1 => String::new(),
            n => format!(" (and {} more)", n - 1),
        };
        Some(format!(
            "stage `{}` {}: {}{more}",
            first.name,
            first.status,
            first.reason.clone().unwrap_or_default()
        ))
    }

    pub fn set_reason(&mut self, reason: Option<String>) {
        self.run.reason = reason.map(|r| self.secrets.mask_str(&r));
    }

    /// Adds values to mask from now on (a step's secret settings).
    pub fn add_secrets(&mut self, values: &[String]) {
        let values: Vec<&[u8]> = values
            .iter()
            .map(|v| v.as_bytes())
            .filter(|v| v.len() >= crate::masker::MIN_SECRET_LEN)
            .collect();
        if values.is_empty() {
            return;
        }
        match self.secrets.with(values) {
            Ok(set) => self.secrets = Arc::new(set),
            Err(e) => tracing::error!("cannot mask a secret setting: {e}"),
        }
    }

    /// Records a step's settings (secrets as references).
    pub fn set_settings(&mut self, name: &StageName, settings: BTreeMap<String, String>) {
        let masked = settings
            .into_iter()
            .map(|(k, v)| (k, self.secrets.mask_str(&v)))
            .collect();
        self.state_mut(name).inputs.settings = masked;
    }

    pub fn set_inputs(&mut self, name: &StageName, env: BTreeMap<String, String>) {
        let masked = env
            .into_iter()
            .map(|(k, v)| (k, self.secrets.mask_str(&v)))
            .collect();
        self.state_mut(name).inputs.env = masked;
    }

    /// Applies a run transition and makes it durable.
    pub async fn run_event(&mut self, ev: RunEvent, reason: Option<String>) {
        apply_run_event(&mut self.run, ev);
        if ev == RunEvent::Start {
            self.run.started = Some(Utc::now());
        }
        let e = event(None, self.run.status.as_str(), reason);
        if let Err(err) = self.store.append_event(&self.run_id, &e).await {
            tracing::warn!("cannot record an event: {err}");
        }
        // The index shows the run's status too: refresh it when the run starts.
        self.publish_run(true).await;
    }

    /// Applies a stage transition, records and publishes it.
    pub async fn stage_event(
        &mut self,
        name: &StageName,
        ev: StageEvent,
        reason: Option<String>,
        progress: &ProgressFn,
    ) {
        let now = Utc::now();
        let state = self.state_mut(name);
        if !apply_stage_event(state, ev) {
            return;
        }
        match ev {
            StageEvent::Start => state.started = Some(now),
            StageEvent::Schedule => {}
            _ => {
                state.finished = Some(now);
                state.reason = reason.clone();
                state.failure = match ev {
                    StageEvent::Cancel => Some(FailureKind::Cancelled),
                    StageEvent::Skip
                        if state
                            .reason
                            .as_deref()
                            .is_some_and(|r| r.starts_with("dependency")) =>
                    {
                        Some(FailureKind::DependencyFailed)
                    }
                    _ => None,
                };
            }
        }
        let status = state.status;
        let duration = duration_ms(state.started, state.finished);
        self.after_stage_change(name, status, reason, duration, progress)
            .await;
    }

    /// Moves every queued stage to `pending`, then publishes once (not once
    /// per stage: with many stages that would be quadratic).
    pub async fn schedule_all(&mut self, progress: &ProgressFn) {
        for i in 0..self.stages.len() {
            let state = &mut self.stages[i];
            if !apply_stage_event(state, StageEvent::Schedule) {
                continue;
            }
            let name = state.name.clone();
            let e = event(Some(&name), state.status.as_str(), None);
            if let Err(err) = self.store.append_event(&self.run_id, &e).await {
                tracing::warn!("cannot record an event: {err}");
            }
            progress(Progress::Stage {
                name,
                status: StageStatus::Pending,
                reason: None,
                duration_ms: None,
            });
        }
        self.publish_all(false).await;
    }

    /// Fails a started stage without running it (its environment could not be built).
    pub async fn finish_stage_early(
        &mut self,
        name: &StageName,
        reason: String,
        progress: &ProgressFn,
    ) {
        let now = Utc::now();
        let state = self.state_mut(name);
        if state.status == StageStatus::Pending {
            apply_stage_event(state, StageEvent::Start);
            state.started = Some(now);
        }
        if !apply_stage_event(state, StageEvent::Finish(StageStatus::Failed)) {
            return;
        }
        state.finished = Some(now);
        state.failure = Some(FailureKind::StartError);
        state.reason = Some(reason.clone());
        let duration = duration_ms(state.started, state.finished);
        self.after_stage_change(name, StageStatus::Failed, Some(reason), duration, progress)
            .await;
    }

    /// Records a finished stage: outputs, `out/<stage>`, secrets from a
    /// sensitive stage, then publishes its log, artifacts and document.
    pub async fn finish_stage(&mut self, mut r: StageResult, progress: &ProgressFn) {
        let sensitive = self.state(&r.name).sensitive;
        if sensitive && r.status == StageStatus::Succeeded {
            // Every value taken from a sensitive stage is itself a secret.
            let values: Vec<&[u8]> = std::iter::once(r.output.as_bytes())
                .chain(r.outputs.values().map(|v| v.as_bytes()))
                .chain(r.output.lines().map(str::as_bytes))
                .filter(|v| v.len() >= crate::masker::MIN_SECRET_LEN)
                .collect();
            match self.secrets.with(values) {
                Ok(set) => self.secrets = Arc::new(set),
                Err(e) => tracing::error!("cannot mask a sensitive output: {e}"),
            }
        }
        if !sensitive && r.status == StageStatus::Succeeded {
            // Written off the stage's path; settled before any stage starts.
            let path = self.dirs.workspace.join("out").join(r.name.as_str());
            let masked = self.secrets.mask_str(&r.output);
            self.outs.spawn_blocking(move || {
                if let Err(e) = std::fs::write(&path, masked) {
                    tracing::warn!("cannot write {}: {e}", path.display());
                }
            });
        }
        let state = self.state_mut(&r.name);
        if !apply_stage_event(state, StageEvent::Finish(r.status)) {
            return;
        }
        state.finished = Some(r.finished);
        state.started = Some(r.started);
        state.reason = r.reason.clone();
        state.failure = r.failure;
        state.exit_code = r.exit_code;
        state.log_bytes = r.log.bytes;
        state.log_cut = r.log.cut;
        state.inputs.image_id = r.image_id.clone();
        state.output = Some(r.output);
        state.outputs = r.outputs;
        state.log_body = r.log.body.take();
        state.private = Some(r.private.clone());
        let duration = duration_ms(state.started, state.finished);
        self.after_stage_change(&r.name, r.status, r.reason, duration, progress)
            .await;
        // Its artifacts are taken: an empty step folder may serve the next step.
        if r.reusable {
            self.dirs.reuse_step_private(r.private);
        }
    }

    async fn after_stage_change(
        &mut self,
        name: &StageName,
        status: StageStatus,
        reason: Option<String>,
        duration_ms: Option<u64>,
        progress: &ProgressFn,
    ) {
        let reason = reason.map(|r| self.secrets.mask_str(&r));
        let e = event(Some(name), status.as_str(), reason.clone());
        if let Err(err) = self.store.append_event(&self.run_id, &e).await {
            tracing::warn!("cannot record an event: {err}");
        }
        if status.is_final() {
            self.publish_files(name).await;
        }
        self.publish_stage(name).await;
        self.publish_run(false).await;
        progress(Progress::Stage {
            name: name.clone(),
            status,
            reason,
            duration_ms,
        });
        if status.is_final() {
            // After the stage's final event: readers learn it ended first.
            let done = Progress::Published { name: name.clone() };
            self.publisher.announce(done, progress.clone());
        }
    }

    /// Hands a finished stage's log and artifacts to the publisher; their
    /// keys are known now, so the stage document can name them.
    async fn publish_files(&mut self, name: &StageName) {
        let private = self.state(name).private.clone();
        let artifacts = private
            .unwrap_or_else(|| self.dirs.private(name))
            .join("artifacts");
        let log = self.state_mut(name).log_body.take();
        let has_log = log.is_some();
        let has_artifacts = crate::workspace::holds_files(&artifacts);
        let state = self.state_mut(name);
        state.log = has_log.then(|| format!("{name}.log"));
        state.artifacts = has_artifacts.then(|| format!("{name}.zip"));
        if let Some(log) = log {
            self.publisher
                .log(&self.run_id, name, log, self.secrets.clone());
        }
        if has_artifacts {
            self.publisher.artifacts(&self.run_id, name, artifacts);
        }
    }

    /// Stores a stage's document; publishes it once the stage is final (while
    /// it waits or runs, `run.json` carries its status).
    async fn publish_stage(&self, name: &StageName) {
        let doc = self.state(name).doc(&self.run_id, &self.secrets);
        if let Err(e) = self.store.put_stage(&doc).await {
            tracing::warn!("cannot store stage `{name}`: {e}");
        }
        if doc.status.is_final() && self.swept(&doc, &format!("the document of `{name}`")) {
            self.publisher.stage(doc);
        }
    }

    /// True when the document holds no secret (the final sweep).
    fn swept<T: serde::Serialize>(&self, doc: &T, what: &str) -> bool {
        let bytes = serde_json::to_vec(doc).unwrap_or_default();
        let ok = !self.secrets.leaks(&bytes);
        if !ok {
            tracing::error!("refusing to publish {what}: it still holds a secret");
        }
        ok
    }

    /// Publishes `run.json` (swept by the publisher, once per coalesced
    /// write); on run-level changes (`index`) also stores it and updates the
    /// index. Stage changes live in the stage documents, which recovery reads.
    async fn publish_run(&self, index: bool) {
        let doc = self.run_doc();
        if index && let Err(e) = self.store.put_run(&doc, false).await {
            tracing::warn!("cannot store the run: {e}");
        }
        let summary = index.then(|| RunSummary::of(&doc));
        self.publisher.run(doc, self.secrets.clone());
        if let Some(s) = summary {
            self.publisher.index(s);
        }
    }

    /// Publishes every stage, `run.json` and (optionally) the index.
    pub async fn publish_all(&mut self, index: bool) {
        for s in self.plan.clone().stages.iter() {
            self.publish_stage(&s.name).await;
        }
        self.publish_run(index).await;
    }

    /// Ends the run: final status, published and durable.
    pub async fn finish(&mut self, status: RunStatus) {
        self.settle_outputs().await;
        if self.run.status == RunStatus::Queued
            && status != RunStatus::Failed
            && status != RunStatus::Cancelled
        {
            apply_run_event(&mut self.run, RunEvent::Start);
        }
        apply_run_event(&mut self.run, RunEvent::Finish(status));
        self.run.finished = Some(Utc::now());
        self.run.duration_ms = duration_ms(
            self.run.started.or(Some(self.run.created)),
            self.run.finished,
        );
        let e = event(None, self.run.status.as_str(), self.run.reason.clone());
        if let Err(err) = self.store.append_event(&self.run_id, &e).await {
            tracing::warn!("cannot record an event: {err}");
        }
        self.publish_run(true).await;
        self.publisher.flush().await;
        if let Err(e) = self.store.put_run(&self.run_doc(), true).await {
            tracing::error!("cannot store the finished run: {e}");
        }
    }
}
