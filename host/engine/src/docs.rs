//! Building and changing a run's documents: new run ids and run documents,
//! transitions applied with logging (never a panic), and history events.

use chrono::Utc;
use sentinel_api::{
    GitContext, RunDoc, RunId, RunStageEntry, RunStatus, SCHEMA_VERSION, StageName, Trigger,
};
use sentinel_pipeline::Plan;

use crate::ports::Event;
use crate::record::StageState;
use crate::transition::{RunEvent, StageEvent, run_transition, transition};

/// A new run id (a ULID: ids sort by time).
pub fn new_run_id() -> RunId {
    ulid::Ulid::new()
        .to_string()
        .parse()
        .expect("a ULID is a valid run id")
}

/// Builds the run document from a store's stages (used by recovery too).
pub(crate) fn run_entries(plan_order: &[StageState]) -> Vec<RunStageEntry> {
    plan_order.iter().map(StageState::entry).collect()
}

/// A new run document.
pub(crate) fn new_run_doc(
    run_id: RunId,
    plan: &Plan,
    trigger: Trigger,
    git: Option<GitContext>,
    stages: Vec<RunStageEntry>,
) -> RunDoc {
    RunDoc {
        schema: SCHEMA_VERSION,
        id: run_id,
        pipeline: plan.name.clone(),
        status: RunStatus::Queued,
        reason: None,
        trigger,
        git,
        created: Utc::now(),
        started: None,
        finished: None,
        duration_ms: None,
        stages,
        sentinel: env!("CARGO_PKG_VERSION").to_string(),
        from_run: None,
        deploy: None,
        upstream: None,
        pull_request: None,
    }
}

/// Applies a run transition, logging (never panicking on) an invalid one.
pub(crate) fn apply_run_event(run: &mut RunDoc, ev: RunEvent) {
    match run_transition(run.status, ev) {
        Some(to) => run.status = to,
        None => tracing::error!("invalid run transition from {} on {ev:?}", run.status),
    }
}

/// Applies a stage transition, logging (never panicking on) an invalid one.
pub(crate) fn apply_stage_event(state: &mut StageState, ev: StageEvent) -> bool {
    match transition(state.status, ev) {
        Ok(to) => {
            state.status = to;
            true
        }
        Err(e) => {
            tracing::error!("{e}");
            false
        }
    }
}

/// An event for the store's history.
pub(crate) fn event(stage: Option<&StageName>, status: &str, reason: Option<String>) -> Event {
    Event {
        at: Utc::now(),
        stage: stage.cloned(),
        status: status.to_string(),
        reason,
    }
}
