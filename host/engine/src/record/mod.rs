//! The run's bookkeeping: every stage's state, the transitions applied to
//! it, the store's history, and publishing in the results layout's order
//! (a stage's log and artifacts, its document, `run.json`, the index).
//! Every document and log passes a final secret sweep before it is stored
//! or leaves, and the sweep fails closed. Each succeeded stage's outputs are
//! kept, sealed, for a re-run.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::Utc;
use sentinel_api::{
    FailureKind, GitContext, ResolvedInputs, RunDoc, RunId, RunStatus, RunSummary, StageName,
    StageStatus, Trigger, keys,
};
use sentinel_pipeline::Plan;
use sha2::Digest;

use crate::docs::{apply_run_event, apply_stage_event, event, new_run_doc, run_entries};
use crate::masker::{SecretSet, sensitive_values};
use crate::ports::{KeptOutputs, ResultsSink, Store};
use crate::run::{Progress, ProgressFn};
use crate::stage::StageResult;
pub use crate::stage_state::StageState;
use crate::stage_state::duration_ms;
use crate::transition::{RunEvent, StageEvent};
use crate::workspace::FileSet;

mod gates;

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
    publisher: crate::publish::Publisher,
    /// What `out/<stage>` holds for each finished stage (masked, or raw for
    /// a sensitive stage), for the stages that start after it.
    outs: Vec<(StageName, Arc<Vec<u8>>)>,
    /// When `run.json` last went to the publisher for a stage's change, and
    /// whether a later change still waits (see [`Recorder::run_doc_due`]).
    run_doc_sent: Option<tokio::time::Instant>,
    run_doc_stale: bool,
}

/// Stage changes reach `run.json` at most this often (the whole document is
/// built for each: per change, a 1,000-stage run built a million entries).
const RUN_DOC_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

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
    ) -> Self {
        let stages: Vec<StageState> = plan
            .stages
            .iter()
            .map(|s| {
                let from = s.action.provenance();
                let image = from.image.map(str::to_string);
                let script_sha256 = from
                    .script
                    .map(|t| hex::encode(sha2::Sha256::digest(t.as_bytes())));
                let step = from.step;
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
                        volumes: s.volumes.iter().map(|v| v.stage.clone()).collect(),
                        limits: s.limits.describe(),
                    },
                    log_body: None,
                    artifacts_dir: None,
                    files: None,
                    warnings: Vec::new(),
                    steps: Vec::new(),
                    cache: None,
                    approval: None,
                    attempts: Vec::new(),
                    attempt_logs: Vec::new(),
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
            publisher,
            outs: Vec::new(),
            run_doc_sent: None,
            run_doc_stale: false,
        }
    }

    /// Records the run this one started from.
    pub fn set_from_run(&mut self, from: Option<RunId>) {
        self.run.from_run = from;
    }

    /// Records the run of another pipeline that started this one.
    pub fn set_upstream(&mut self, upstream: Option<RunId>) {
        self.run.upstream = upstream;
    }

    /// Records what the run deploys.
    pub fn set_deploy(&mut self, deploy: Option<sentinel_api::DeployFacts>) {
        self.run.deploy = deploy;
    }

    /// The `out/<stage>` files of the stages finished so far.
    pub fn outs(&self) -> Vec<(StageName, Arc<Vec<u8>>)> {
        self.outs.clone()
    }

    /// The files a finished stage created or changed, when they are kept.
    pub fn files_of(&self, name: &StageName) -> Option<FileSet> {
        self.state(name).files.clone()
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

    /// The position of a stage of the plan (its place in `plan.stages`).
    pub fn position(&self, name: &StageName) -> usize {
        self.index[name]
    }

    /// The status of the stage at `position`.
    pub fn status_at(&self, position: usize) -> StageStatus {
        self.stages[position].status
    }

    /// When a stage's change that `run.json` does not show yet is due to be
    /// published ([`Recorder::publish_run_due`]).
    pub fn run_doc_due(&self) -> Option<tokio::time::Instant> {
        self.run_doc_stale.then(|| {
            self.run_doc_sent
                .map_or_else(tokio::time::Instant::now, |t| t + RUN_DOC_EVERY)
        })
    }

    /// Publishes `run.json` when a stage's change still waits for it.
    pub async fn publish_run_due(&mut self) {
        if self.run_doc_stale {
            self.publish_run(false).await;
        }
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

    /// Adds a warning to a stage's document.
    pub fn warn(&mut self, name: &StageName, warning: String) {
        if self.index.contains_key(name) {
            self.state_mut(name).warnings.push(warning);
        }
    }

    pub fn set_reason(&mut self, reason: Option<String>) {
        self.run.reason = reason.map(|r| self.secrets.mask_str(&r));
    }

    /// Adds values to mask from now on (a step's secret settings, which the
    /// environment refused when too short to mask).
    pub fn add_secrets(&mut self, values: &[String]) -> Result<(), crate::masker::MaskError> {
        let values: Vec<&[u8]> = values
            .iter()
            .map(|v| v.as_bytes())
            .filter(|v| !v.is_empty())
            .collect();
        if !values.is_empty() {
            self.secrets = Arc::new(self.secrets.with(values)?);
        }
        Ok(())
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
        // A paused run going on keeps the time it first started.
        if ev == RunEvent::Start && self.run.started.is_none() {
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
            StageEvent::Wait | StageEvent::Resume => state.reason = reason.clone(),
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
            // A paused run's stages that ended stay as they are.
            if state.status != StageStatus::Queued
                || !apply_stage_event(state, StageEvent::Schedule)
            {
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
        self.fail_unrun(name, reason, FailureKind::StartError, progress)
            .await;
    }

    /// Fails a stage that did not run, for `failure`.
    async fn fail_unrun(
        &mut self,
        name: &StageName,
        reason: String,
        failure: FailureKind,
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
        state.failure = Some(failure);
        state.reason = Some(reason.clone());
        let duration = duration_ms(state.started, state.finished);
        self.after_stage_change(name, StageStatus::Failed, Some(reason), duration, progress)
            .await;
    }

    /// Records a finished stage: secrets from a sensitive stage, its
    /// `out/<stage>`, its outputs kept (sealed) for a re-run, then publishes
    /// its log, artifacts and document.
    pub async fn finish_stage(&mut self, mut r: StageResult, progress: &ProgressFn) {
        if r.status == StageStatus::Succeeded {
            self.take_outputs(&r.name, &r.output, &r.outputs);
            let kept = KeptOutputs {
                output: r.output.clone(),
                outputs: r.outputs.clone(),
            };
            if let Err(e) = self.store.keep_outputs(&self.run_id, &r.name, &kept).await {
                tracing::warn!("cannot keep the outputs of `{}` for a re-run: {e}", r.name);
            }
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
        state.artifacts_dir = r.artifacts.take();
        state.files = r.files.take();
        state.warnings.append(&mut r.warnings);
        state.steps = std::mem::take(&mut r.steps);
        state.cache = r.cache.take();
        for a in std::mem::take(&mut r.attempts) {
            if let Some(log) = a.log {
                state.attempt_logs.push((a.doc.attempt, log));
            }
            state.attempts.push(a.doc);
        }
        let duration = duration_ms(state.started, state.finished);
        self.after_stage_change(&r.name, r.status, r.reason, duration, progress)
            .await;
    }

    /// What a succeeded stage's outputs mean for the stages after it: a
    /// sensitive stage's values become secrets, and its `out/<stage>` file
    /// holds its output (its own value for a sensitive stage, which is
    /// never published; any other masked).
    fn take_outputs(&mut self, name: &StageName, output: &str, outputs: &BTreeMap<String, String>) {
        let sensitive = self.state(name).sensitive;
        if sensitive {
            // Every value taken from a sensitive stage is itself a secret.
            let values = sensitive_values(output, outputs.values());
            match self.secrets.with(values.iter().map(Vec::as_slice)) {
                Ok(set) => self.secrets = Arc::new(set),
                Err(e) => tracing::error!("cannot mask a sensitive output: {e}"),
            }
        }
        let out = if sensitive {
            output.to_string()
        } else {
            self.secrets.mask_str(output)
        };
        self.outs.push((name.clone(), Arc::new(out.into_bytes())));
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
        let state = self.state_mut(name);
        let log = state.log_body.take();
        let artifacts = state.artifacts_dir.take();
        state.log = log.is_some().then(|| keys::log_name(name, None));
        state.artifacts = artifacts.is_some().then(|| format!("{name}.zip"));
        let earlier = std::mem::take(&mut state.attempt_logs);
        for (n, _) in &earlier {
            if let Some(a) = state.attempts.iter_mut().find(|a| a.attempt == *n) {
                a.log = Some(keys::log_name(name, Some(*n)));
            }
        }
        if let Some(last) = state.attempts.last_mut() {
            last.log = state.log.clone();
        }
        for (n, body) in earlier {
            self.publisher
                .log(&self.run_id, name, Some(n), body, self.secrets.clone());
        }
        if let Some(log) = log {
            self.publisher
                .log(&self.run_id, name, None, log, self.secrets.clone());
        }
        if let Some(dir) = artifacts {
            self.publisher.artifacts(&self.run_id, name, dir);
        }
    }

    /// Stores a stage's document — swept first, so no reader of the store
    /// sees a secret either — and publishes it once the stage is final
    /// (while it waits or runs, `run.json` carries its status). A document
    /// that fails the sweep is replaced by one that withholds everything
    /// but its status, saying so.
    async fn publish_stage(&self, name: &StageName) {
        let mut doc = self.state(name).doc(&self.run_id, &self.secrets);
        if !self.secrets.sweeps(&doc) {
            tracing::error!("the document of `{name}` still holds a secret: it is withheld");
            doc = withheld(doc);
        }
        if let Err(e) = self.store.put_stage(&doc).await {
            tracing::warn!("cannot store stage `{name}`: {e}");
        }
        if doc.status.is_final() {
            self.publisher.stage(doc);
        }
    }

    /// Publishes `run.json` (swept by the publisher, once per coalesced
    /// write); on run-level changes (`index`) also stores it and updates the
    /// index. Stage changes live in the stage documents, which recovery reads.
    /// A stage's change (`index` false) is published at most every
    /// [`RUN_DOC_EVERY`]; the scheduler publishes a waiting one when due.
    async fn publish_run(&mut self, index: bool) {
        let now = tokio::time::Instant::now();
        if !index && self.run_doc_sent.is_some_and(|t| now < t + RUN_DOC_EVERY) {
            self.run_doc_stale = true;
            return;
        }
        self.run_doc_sent = Some(now);
        self.run_doc_stale = false;
        self.publish_run_doc(index, index).await;
    }

    /// [`Recorder::publish_run`], storing the document only when `store`.
    async fn publish_run_doc(&self, store: bool, index: bool) {
        let doc = self.run_doc();
        if store && let Err(e) = self.store.put_run(&doc, false).await {
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
        // Published (document and index) but not stored yet: the store
        // learns of the end only with its event, below.
        self.publish_run_doc(false, true).await;
        self.publisher.flush().await;
        // The end and its event together: a crash before this leaves an
        // open run that recovery ends once, as `interrupted` (and publishes
        // again).
        if let Err(err) = self.store.end_run(&self.run_doc(), &e).await {
            tracing::error!("cannot store the finished run: {err}");
        }
    }
}

/// A stage document with everything but its identity and status removed,
/// for one that failed the secret sweep.
fn withheld(doc: sentinel_api::StageDoc) -> sentinel_api::StageDoc {
    sentinel_api::StageDoc {
        reason: None,
        output: None,
        outputs: BTreeMap::new(),
        log: None,
        artifacts: None,
        inputs: ResolvedInputs::default(),
        warnings: vec!["this document held a secret: everything but its status is withheld".into()],
        attempts: Vec::new(),
        ..doc
    }
}
