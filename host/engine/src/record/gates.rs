//! The recorder's part in approval gates: a gate that waits, a gate
//! refused, a run that pauses, and a paused run taken up again with every
//! stage that ended as it ended.

use std::collections::BTreeMap;

use sentinel_api::{FailureKind, GateDoc, StageName, StageStatus};

use super::Recorder;
use crate::docs::{apply_run_event, event};
use crate::gate::{Gate, Resume, Stuck};
use crate::run::{ProgressFn, Reused};
use crate::transition::{RunEvent, StageEvent};

impl Recorder {
    /// Takes up a paused run: its document (created, started, trigger…)
    /// and each stage that ended, as it ended — its log and document stay
    /// where they are. A succeeded stage needs its outputs as they were
    /// (`kept`, raw); without them it runs again. Every other stage (the
    /// gates and what comes after them) starts again from `queued`.
    pub fn resume(&mut self, r: &Resume, kept: &BTreeMap<StageName, Reused>) {
        self.run = sentinel_api::RunDoc {
            stages: Vec::new(),
            ..r.run.clone()
        };
        for doc in &r.stages {
            let Some(&i) = self.index.get(&doc.name) else {
                continue;
            };
            if !doc.status.is_final() {
                continue;
            }
            let raw = match (doc.status, kept.get(&doc.name)) {
                (StageStatus::Succeeded, Some(k)) => Some(k),
                (StageStatus::Succeeded, None) => continue,
                _ => None,
            };
            let st = &mut self.stages[i];
            st.status = doc.status;
            st.reason = doc.reason.clone();
            st.failure = doc.failure;
            st.exit_code = doc.exit_code;
            st.started = doc.started;
            st.finished = doc.finished;
            st.log = doc.log.clone();
            st.log_bytes = doc.log_bytes;
            st.log_cut = doc.log_cut_bytes;
            st.artifacts = doc.artifacts.clone();
            st.inputs = doc.inputs.clone();
            st.warnings = doc.warnings.clone();
            st.steps = doc.steps.clone();
            st.cache = doc.cache.clone();
            st.approval = doc.approval.clone();
            if let Some(k) = raw {
                st.output = Some(k.output.clone());
                st.outputs = k.outputs.clone();
                st.files = k.files.clone();
                self.take_outputs(&doc.name, &k.output, &k.outputs);
            }
        }
    }

    /// A stage whose dependencies let it run, at its approval gate (if it
    /// has one): true when it runs now. A gate nobody can answer is refused;
    /// one waiting holds the stage; one the run's cancel answered lets the
    /// scheduler cancel it.
    pub async fn at_gate(
        &mut self,
        s: &sentinel_pipeline::StagePlan,
        gates: &BTreeMap<StageName, Gate>,
        progress: &ProgressFn,
    ) -> bool {
        let Some(env) = &s.approval else {
            return true;
        };
        let gate = gates
            .get(&s.name)
            .cloned()
            .unwrap_or_else(|| Gate::nobody(env));
        match gate {
            Gate::Pass { gate, note } => {
                self.pass_gate(&s.name, gate, note);
                true
            }
            Gate::Refuse { gate, reason } => {
                self.refuse_gate(&s.name, gate, reason, progress).await;
                false
            }
            Gate::Wait {
                environment,
                deployment,
            } => {
                let id = deployment.unwrap_or_else(|| ulid::Ulid::new().to_string());
                self.hold_gate(&s.name, &environment, id, progress).await;
                false
            }
            // The run is cancelled: so is the stage, by the scheduler.
            Gate::Cancel { .. } => true,
        }
    }

    /// Nothing runs and nothing can start: the run ended, or it pauses at
    /// its waiting gates — unless it failed or was cancelled meanwhile, and
    /// then its gates ask for nothing more.
    pub async fn when_stuck(&mut self, cancelled: bool, progress: &ProgressFn) -> Stuck {
        let waiting = self.waiting_gates();
        if waiting.is_empty() {
            return Stuck::Done;
        }
        let failed = self.stages.iter().any(|s| s.status.is_failure());
        if !cancelled && !failed {
            return Stuck::Pause;
        }
        let (ev, why) = if cancelled {
            (StageEvent::Cancel, "the run was cancelled")
        } else {
            (StageEvent::Skip, "the run failed before an approval came")
        };
        for name in waiting {
            self.stage_event(&name, ev, Some(why.into()), progress)
                .await;
        }
        Stuck::GatesClosed
    }

    /// Why a paused run waits: its gates and their environments.
    pub fn pause_reason(&self) -> String {
        let gates: Vec<String> = self
            .stages
            .iter()
            .filter(|s| s.status == StageStatus::WaitingApproval)
            .filter_map(|s| {
                let env = &s.approval.as_ref()?.environment;
                Some(format!("stage `{}` for `{env}`", s.name))
            })
            .collect();
        format!("waiting for an approval: {}", gates.join(", "))
    }

    /// Holds a gate: the stage waits for an approval to deploy to
    /// `environment`, which deployment `deployment` asks for.
    async fn hold_gate(
        &mut self,
        name: &StageName,
        environment: &str,
        deployment: String,
        progress: &ProgressFn,
    ) {
        let reason =
            format!("waits for an approval to deploy to `{environment}` (deployment {deployment})");
        self.state_mut(name).approval = Some(GateDoc {
            environment: environment.to_string(),
            deployment,
            answer: None,
        });
        self.stage_event(name, StageEvent::Wait, Some(reason), progress)
            .await;
    }

    /// Records a gate's answer on its stage (which then runs).
    fn pass_gate(&mut self, name: &StageName, gate: Option<GateDoc>, note: Option<String>) {
        let st = self.state_mut(name);
        st.approval = gate;
        st.warnings.extend(note);
    }

    /// Fails a gate's stage without running it: refused, or nobody can
    /// approve it here.
    async fn refuse_gate(
        &mut self,
        name: &StageName,
        gate: Option<GateDoc>,
        reason: String,
        progress: &ProgressFn,
    ) {
        self.state_mut(name).approval = gate;
        self.fail_unrun(name, reason, FailureKind::Rejected, progress)
            .await;
    }

    /// Records the answer of a gate the run's cancel ended.
    pub fn cancelled_gate(&mut self, name: &StageName, gate: GateDoc) {
        self.state_mut(name).approval = Some(gate);
    }

    /// Pauses the run at its waiting gates: `waiting_approval`, stored on
    /// disk with its event, then published.
    pub async fn pause(&mut self) {
        apply_run_event(&mut self.run, RunEvent::Wait);
        let e = event(None, self.run.status.as_str(), self.run.reason.clone());
        if let Err(err) = self.store.append_event(&self.run_id, &e).await {
            tracing::warn!("cannot record an event: {err}");
        }
        if let Err(err) = self.store.put_run(&self.run_doc(), true).await {
            tracing::error!("cannot store the paused run: {err}");
        }
        self.publish_run_doc(false, true).await;
        self.publisher.flush().await;
    }

    /// The stages whose gates wait now.
    pub fn waiting_gates(&self) -> Vec<StageName> {
        self.stages
            .iter()
            .filter(|s| s.status == StageStatus::WaitingApproval)
            .map(|s| s.name.clone())
            .collect()
    }
}
