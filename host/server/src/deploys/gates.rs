//! Approval gates of a pipeline's stages (`approval: ENV`), on the
//! server: what each gate of a run does (from the environment's config and
//! the answers given so far), holding a run paused at its gates (each gate
//! a deployment waiting for the environment's approval, answered like a
//! promotion's), and cancelling a paused run.

use std::collections::BTreeMap;

use chrono::Utc;
use sentinel_api::{
    Approval, DeploySource, DeploymentDoc, DeploymentStatus, GateDoc, RunId, RunStatus, StageName,
    StageStatus,
};
use sentinel_engine::gate::{Gate, Resume};
use sentinel_engine::ports::{QueueEntry, Store as _};
use sentinel_store::SledStore;

use super::EnvironmentConfig;
use crate::runs::RunSpec;

/// What each approval gate (a stage and its environment) does in this
/// run: a paused run's gates (`resume`) take the answers their deployments
/// got; a gate reached for the first time asks its environment.
pub fn gates_of(
    store: &SledStore,
    environments: &BTreeMap<String, EnvironmentConfig>,
    gates: impl IntoIterator<Item = (StageName, String)>,
    resume: Option<&Resume>,
) -> Result<BTreeMap<StageName, Gate>, String> {
    let mut out = BTreeMap::new();
    for (stage, env) in gates {
        let env = &env;
        let held = resume
            .and_then(|r| r.stages.iter().find(|d| d.name == stage))
            .filter(|d| d.status == StageStatus::WaitingApproval)
            .and_then(|d| d.approval.clone())
            .filter(|g| !g.deployment.is_empty());
        let gate = match held {
            Some(g) => {
                let d = store.deployment(&g.deployment).map_err(|e| e.to_string())?;
                match (d.as_ref().map(|d| d.status), d.and_then(|d| d.approval)) {
                    (Some(DeploymentStatus::WaitingApproval), _) => Gate::Wait {
                        environment: env.clone(),
                        deployment: Some(g.deployment.clone()),
                    },
                    (Some(status), Some(answer)) => {
                        Gate::answered(&g, &answer, status == DeploymentStatus::Cancelled)
                    }
                    (status, _) => Gate::Refuse {
                        reason: format!(
                            "its deployment {} is {}, with no answer",
                            g.deployment,
                            status.unwrap_or(DeploymentStatus::Unknown)
                        ),
                        gate: Some(g),
                    },
                }
            }
            None => match environments.get(env) {
                None => Gate::Refuse {
                    gate: None,
                    reason: format!(
                        "the stage waits for an approval to deploy to `{env}`, and this server has no environment `{env}` (it has: {})",
                        names(environments)
                    ),
                },
                Some(e) if !e.approval => Gate::Pass {
                    gate: None,
                    note: Some(format!("`{env}` asks for no approval")),
                },
                Some(_) => Gate::Wait {
                    environment: env.clone(),
                    deployment: None,
                },
            },
        };
        out.insert(stage, gate);
    }
    Ok(out)
}

fn names(environments: &BTreeMap<String, EnvironmentConfig>) -> String {
    if environments.is_empty() {
        return "none".into();
    }
    environments.keys().cloned().collect::<Vec<_>>().join(", ")
}

/// Holds the run of `entry`, paused at its approval gates: each waiting
/// gate becomes a deployment waiting for its environment's approval, which
/// holds the entry that sends the run on; the run leaves the queue. True
/// when a gate was answered meanwhile, so the run was queued again at once.
pub async fn hold(store: &SledStore, entry: &QueueEntry) -> Result<bool, String> {
    let id = &entry.run_id;
    let run = store
        .get_run(id)
        .await
        .map_err(|e| e.to_string())?
        .filter(|r| r.status == RunStatus::WaitingApproval)
        .ok_or_else(|| format!("run {id} does not wait for an approval"))?;
    let version = super::version_of(&run);
    let mut gates = Vec::new();
    for (stage, g) in waiting_gates(store, id).await? {
        let mut doc = DeploymentDoc::requested(
            g.deployment.clone(),
            &run.pipeline,
            &g.environment,
            &version,
            DeploySource::Pipeline {
                run: Some(id.clone()),
                stage: Some(stage),
            },
        );
        doc.status = DeploymentStatus::WaitingApproval;
        doc.run = Some(id.clone());
        gates.push(doc);
    }
    let mut spec: RunSpec = serde_json::from_value(entry.request.clone())
        .map_err(|e| format!("run {id}'s queued request: {e}"))?;
    spec.resume = Some(id.clone());
    // The same commit when it goes on.
    if let Some(commit) = run.git.as_ref().and_then(|g| g.commit.clone()) {
        spec.git_ref = commit;
    }
    let resume = QueueEntry {
        request: serde_json::to_value(&spec).map_err(|e| e.to_string())?,
        enqueued: Utc::now(),
        claim: None,
        ..entry.clone()
    };
    store
        .hold_run(id, &gates, &resume)
        .await
        .map_err(|e| e.to_string())
}

/// Cancels run `id`, paused at its gates, for `by`: each waiting gate is
/// answered `cancelled`, which sends the run on to end `cancelled` (its
/// `always` stages still run). False when it does not wait.
pub async fn cancel_paused(store: &SledStore, id: &RunId, by: &str) -> Result<bool, String> {
    let mut any = false;
    for (_, g) in waiting_gates(store, id).await? {
        let answer = Approval {
            approved: false,
            by: by.to_string(),
            at: Utc::now(),
            reason: Some("the run was cancelled".into()),
        };
        let r = store
            .answer_approval(&g.deployment, answer, true)
            .await
            .map_err(|e| e.to_string())?;
        any |= r.is_ok();
    }
    Ok(any)
}

/// The gates of run `id` that wait, with their stages.
async fn waiting_gates(store: &SledStore, id: &RunId) -> Result<Vec<(StageName, GateDoc)>, String> {
    let stages = store.get_stages(id).await.map_err(|e| e.to_string())?;
    Ok(stages
        .into_iter()
        .filter(|st| st.status == StageStatus::WaitingApproval)
        .filter_map(|st| Some((st.name, st.approval?)))
        .collect())
}
