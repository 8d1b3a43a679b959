//! Auto-cancel: a push's run cancels the older runs of its pipeline and
//! branch — waiting or going — that a newer commit made pointless; each
//! says which run superseded it. Per pipeline (`auto_cancel = true|false`
//! on a repository or a named pipeline); by default on for branches other
//! than the repository's default one (`default_branch`, `main`), off for
//! the default branch and for tags.

use sentinel_api::{RunId, RunStatus};
use sentinel_engine::ports::{QueueEntry, Store as _};
use sentinel_engine::queue::Cancelled;

use crate::AppState;
use crate::runs::RunSpec;

/// Whether a push's run of `spec` cancels the older ones.
pub fn applies(state: &AppState, spec: &RunSpec) -> bool {
    let Some(repo) = state.config.repos.get(&spec.repo) else {
        return false;
    };
    // As the pipeline, else the repository, says.
    let asked = spec
        .pipeline
        .as_ref()
        .and_then(|p| repo.pipelines.get(p))
        .and_then(|p| p.auto_cancel)
        .or(repo.auto_cancel);
    // A pull request's newer push: on by default.
    if spec.pull_request.is_some() {
        return asked.unwrap_or(true);
    }
    // A tag: off by default.
    let Some(branch) = &spec.branch else {
        return asked.unwrap_or(false);
    };
    let default = repo.default_branch.as_deref().unwrap_or("main");
    asked.unwrap_or(branch != default)
}

/// The same pipeline and branch as `spec`.
fn same(spec: &RunSpec, other: &serde_json::Value) -> bool {
    let Ok(o) = <RunSpec as serde::Deserialize>::deserialize(other) else {
        return false;
    };
    let pr = |s: &RunSpec| s.pull_request.as_ref().map(|p| p.number);
    o.repo == spec.repo
        && o.pipeline == spec.pipeline
        && o.branch == spec.branch
        && pr(&o) == pr(spec)
}

/// Cancels the runs older than `newer` of its pipeline and branch, waiting
/// or going; the runs cancelled.
pub async fn supersede(state: &AppState, newer: &QueueEntry, spec: &RunSpec) -> Vec<RunId> {
    let to = match &spec.pull_request {
        Some(pr) => format!("pull request #{}", pr.number),
        None => spec.branch.clone().unwrap_or_else(|| "its ref".into()),
    };
    let why = format!("superseded by run {} (a newer push to {to})", newer.run_id);
    let mut older: Vec<RunId> = Vec::new();
    match state.store.unstarted(usize::MAX) {
        Ok(waiting) => older.extend(
            waiting
                .into_iter()
                .filter(|e| e.run_id < newer.run_id && same(spec, &e.request))
                .map(|e| e.run_id),
        ),
        Err(e) => tracing::warn!("auto-cancel cannot read the queue: {e}"),
    }
    match state.store.open_runs().await {
        Ok(open) => {
            for run in open.into_iter().filter(|r| {
                r.id < newer.run_id && matches!(r.status, RunStatus::Queued | RunStatus::Running)
            }) {
                if let Ok(Some(e)) = state.store.request_of(&run.id)
                    && same(spec, &e.request)
                    && !older.contains(&run.id)
                {
                    older.push(run.id);
                }
            }
        }
        Err(e) => tracing::warn!("auto-cancel cannot read the open runs: {e}"),
    }
    let mut cancelled = Vec::new();
    for id in older {
        match state.control.cancel_because(&id, why.clone()).await {
            Ok(Cancelled::Running | Cancelled::Withdrawn) => {
                tracing::info!(run = %id, by = %newer.run_id, "superseded: cancelled");
                cancelled.push(id);
            }
            Ok(Cancelled::NotHere) => {}
            Err(e) => tracing::warn!(run = %id, "cannot cancel a superseded run: {e}"),
        }
    }
    cancelled
}
