//! Runs after another pipeline (`after = { pipeline = "build", … }` on a
//! repository or a named pipeline in the server's config): when a run of
//! the upstream pipeline ends with one of the given statuses on the given
//! branch, a run of the downstream pipeline is queued — once per upstream
//! run (an idempotency key), at the upstream's commit when both are in one
//! repository — recording which run started it; its stages read that run's
//! outputs as `${upstream.stages.X.outputs.KEY}`. Links that loop are
//! refused when the configuration is loaded. Each ended run is marked once
//! its links are seen to; a server starting looks again at the unmarked
//! runs that ended in the day before, so a link a stop interrupted still
//! starts its run (and a link added later does not reach back further).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use sentinel_api::{RunDoc, RunStatus, Trigger, TriggerKind};
use sentinel_engine::ports::Store as _;

use crate::runs::RunSpec;
use crate::{AppState, RepoConfig};

/// `after = { … }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct After {
    /// The upstream: a named pipeline, or a repository with one pipeline.
    pub pipeline: String,
    /// The statuses of its run that start this one.
    #[serde(default = "succeeded")]
    pub status: Vec<RunStatus>,
    /// Only its runs on this branch (none: any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// What this pipeline runs when it is in another repository (its
    /// branch, tag or commit; default `HEAD`). In the same repository it
    /// runs the upstream run's commit.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
}

fn succeeded() -> Vec<RunStatus> {
    vec![RunStatus::Succeeded]
}

/// A pipeline as queue entries name it: its name, or its repository's for
/// a repository's one pipeline.
fn key(repo: &str, pipeline: Option<&str>) -> String {
    pipeline.unwrap_or(repo).to_string()
}

/// Every `after` link: (downstream repository, downstream pipeline, link).
fn links(repos: &BTreeMap<String, RepoConfig>) -> Vec<(String, Option<String>, &After)> {
    let mut out = Vec::new();
    for (repo, r) in repos {
        if let Some(a) = &r.after {
            out.push((repo.clone(), None, a));
        }
        for (name, p) in &r.pipelines {
            if let Some(a) = &p.after {
                out.push((repo.clone(), Some(name.clone()), a));
            }
        }
    }
    out
}

/// Checks every link: its upstream exists, its statuses are final ones,
/// and no pipeline comes after itself, however far round.
pub fn check(repos: &BTreeMap<String, RepoConfig>) -> Result<(), String> {
    let mut known = BTreeSet::new();
    for (repo, r) in repos {
        if r.pipelines.is_empty() {
            known.insert(repo.clone());
        }
        known.extend(r.pipelines.keys().cloned());
    }
    let mut edges: BTreeMap<String, String> = BTreeMap::new();
    for (repo, pipeline, a) in links(repos) {
        let me = key(&repo, pipeline.as_deref());
        let at = match &pipeline {
            Some(p) => format!("[repos.{repo}.pipelines.{p}] after"),
            None => format!("[repos.{repo}] after"),
        };
        if !known.contains(&a.pipeline) {
            return Err(format!(
                "{at}: no pipeline `{}` (a named pipeline, or a repository with one pipeline: {})",
                a.pipeline,
                known.iter().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        if a.status.is_empty() || a.status.iter().any(|s| !s.is_final()) {
            return Err(format!(
                "{at}: status must list how a run ended: succeeded, failed, cancelled or interrupted"
            ));
        }
        crate::check_event(
            repos,
            &repo,
            pipeline.as_deref(),
            crate::filters::Event::Upstream,
        )
        .map_err(|e| format!("{at}: {e}"))?;
        edges.insert(me, a.pipeline.clone());
    }
    // Each pipeline has at most one upstream: follow the chain.
    for start in edges.keys() {
        let mut seen = vec![start.clone()];
        let mut at = start;
        while let Some(next) = edges.get(at) {
            if next == start {
                seen.push(next.clone());
                return Err(format!(
                    "pipelines that run after each other in a loop: {}",
                    seen.join(" after ")
                ));
            }
            if seen.contains(next) {
                break;
            }
            seen.push(next.clone());
            at = next;
        }
    }
    Ok(())
}

/// Queues the runs that come after run `run` (final), each once.
pub async fn after_run(state: &AppState, run: &RunDoc) -> Result<(), String> {
    if !run.status.is_final() {
        return Ok(());
    }
    let Some(entry) = state.store.request_of(&run.id).map_err(|e| e.to_string())? else {
        return Ok(());
    };
    let up: RunSpec = match serde_json::from_value(entry.request) {
        Ok(s) => s,
        Err(_) => return Ok(()),
    };
    let from = key(&up.repo, up.pipeline.as_deref());
    let branch = run.git.as_ref().and_then(|g| g.branch.clone());
    let commit = run.git.as_ref().and_then(|g| g.commit.clone());
    for (repo, pipeline, a) in links(&state.config.repos) {
        if a.pipeline != from
            || !a.status.contains(&run.status)
            || a.branch
                .as_ref()
                .is_some_and(|b| Some(b) != branch.as_ref())
        {
            continue;
        }
        let same_repo = repo == up.repo;
        let spec = RunSpec {
            repo: repo.clone(),
            pipeline: pipeline.clone(),
            git_ref: match (same_repo, &commit) {
                (true, Some(c)) => c.clone(),
                _ => a.git_ref.clone().unwrap_or_else(|| "HEAD".into()),
            },
            branch: if same_repo { branch.clone() } else { None },
            upstream: Some(run.id.clone()),
            ..RunSpec::default()
        };
        let e = state.entry(
            &spec,
            Trigger {
                kind: TriggerKind::Upstream,
                by: Some(format!("run {} of {from} ({})", run.id, run.status)),
            },
        );
        let idem = format!("upstream:{}:{}", run.id, key(&repo, pipeline.as_deref()));
        let (id, fresh) = state
            .store
            .enqueue_once(&idem, &e)
            .await
            .map_err(|e| e.to_string())?;
        if fresh {
            state.metrics.accepted(&id, e.enqueued);
            state.control.queued();
            tracing::info!(upstream = %run.id, run = %id, pipeline = %e.pipeline, "run after its upstream queued");
        }
    }
    state
        .store
        .mark_done(&done_key(run), &run.id)
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

fn done_key(run: &RunDoc) -> String {
    format!("after:{}", run.id)
}

/// At start: the links of the newest `scan` runs that ended in the day
/// before and are not marked done (each link queues its run once).
pub async fn catch_up(state: &AppState, scan: usize) {
    if links(&state.config.repos).is_empty() {
        return;
    }
    let runs = match state.store.list_runs(scan).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("cannot look at the newest runs for their downstream pipelines: {e}");
            return;
        }
    };
    let since = chrono::Utc::now() - chrono::Duration::days(1);
    for run in runs
        .iter()
        .filter(|r| r.status.is_final() && r.finished.is_some_and(|f| f > since))
    {
        if state.store.is_done(&done_key(run)).unwrap_or(false) {
            continue;
        }
        if let Err(e) = after_run(state, run).await {
            tracing::warn!(run = %run.id, "cannot queue what runs after it: {e}");
        }
    }
}
