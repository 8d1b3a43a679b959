//! Promotion of a succeeded run to an environment (`POST
//! /api/v1/runs/{id}/promote`, trigger scope): the environment's deploy
//! pipeline runs with the run's published files and outputs in `deploy/`.
//! An environment that asks for approval holds the deploy — no run, no
//! container, no worker slot — until a token with the `deploy` scope
//! approves or rejects it (`POST /api/v1/deployments/{id}/approve|reject`),
//! or its wait times out; the answer and the queue entry are one
//! transaction. Promoting a run older than the one deployed now is a
//! rollback, allowed only when asked for, and recorded as one.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};

use sentinel_api::{
    Approval, DeployFacts, DeploySource, DeploymentDoc, DeploymentStatus, RunStatus, Trigger,
    TriggerKind,
};
use sentinel_engine::ports::Store as _;
use sentinel_store::tokens::Scope;

use crate::runs::{DeployRequest, RunSpec, St, parse_run_id};
use crate::{ApiError, AppState};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PromoteRequest {
    /// The environment.
    to: String,
    /// Promoting a run older than the one deployed there now.
    #[serde(default)]
    rollback: bool,
}

/// `POST /api/v1/runs/{id}/promote`.
pub(crate) async fn promote(
    State(s): St,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<PromoteRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let caller = s.authorize(&headers, Scope::Trigger)?;
    let Json(req) = body?;
    let from = parse_run_id(&id)?;
    let env = s.deploys.environments.get(&req.to).ok_or_else(|| {
        ApiError::not_found(format!(
            "no environment `{}` (this server has: {})",
            req.to,
            s.deploys
                .environments
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })?;
    let run = s
        .store
        .get_run(&from)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found(format!("no run {from}")))?;
    if run.pull_request.as_ref().is_some_and(|p| p.fork) {
        return Err(ApiError::conflict(format!(
            "run {from} built a pull request from a fork: it is never deployed"
        )));
    }
    if run.status != RunStatus::Succeeded {
        return Err(ApiError::conflict(format!(
            "run {from} {}: only a succeeded run is promoted",
            run.status
        )));
    }
    let app = run.pipeline.clone();
    // The newest deployments there first take their runs' outcomes (a run
    // that just ended may not be recorded in its deployment yet).
    s.store
        .deployments(Some(&app), Some(&req.to), 20)
        .await
        .map_err(ApiError::internal)?;
    // The run deployed there now, when a promotion put it there.
    let now = s
        .store
        .current(Some(&app), Some(&req.to))
        .map_err(ApiError::internal)?
        .into_iter()
        .find_map(|d| match d.source {
            DeploySource::Promotion { from_run, .. } => Some(from_run),
            _ => None,
        });
    let older = now.as_ref().is_some_and(|n| n > &from);
    match (older, req.rollback) {
        (true, false) => {
            return Err(ApiError::conflict(format!(
                "run {from} is older than run {}, deployed to {} now: pass \"rollback\": true to roll back",
                now.map(|n| n.to_string()).unwrap_or_default(),
                req.to
            )));
        }
        (false, true) => {
            return Err(ApiError::bad_request(format!(
                "run {from} is not older than what {} has now: it is no rollback",
                req.to
            )));
        }
        _ => {}
    }
    let version = super::version_of(&run);
    // A committed image, when a job of the run made one.
    let mut image = None;
    for st in s
        .store
        .get_stages(&from)
        .await
        .map_err(ApiError::internal)?
    {
        if let Some(i) = st.outputs.get("image") {
            image = Some(i.clone());
        }
    }
    let facts = DeployFacts {
        app: app.clone(),
        version: version.clone(),
        environment: req.to.clone(),
        image_version: image.unwrap_or_else(|| version.clone()),
        instances: 1,
        domain: env.domain.clone(),
    };
    let mut doc = DeploymentDoc::requested(
        ulid::Ulid::new().to_string(),
        &app,
        &req.to,
        &version,
        DeploySource::Promotion {
            from_run: from.clone(),
            rollback: older,
        },
    );
    doc.facts = Some(facts.clone());
    let spec = RunSpec::deploy(
        &env.repo,
        env.pipeline.as_deref(),
        &env.git_ref,
        DeployRequest {
            facts,
            deployment: doc.id.clone(),
            payload: None,
            from_run: Some(from),
        },
    );
    let by = caller.name().unwrap_or_else(|| "anonymous".into());
    let entry = s.entry(
        &spec,
        Trigger {
            kind: TriggerKind::Deploy,
            by: Some(format!("promotion by {by}")),
        },
    );
    let doc = s
        .store
        .request_deployment(&doc, &entry, env.approval)
        .await
        .map_err(ApiError::internal)?;
    if doc.run.is_some() {
        s.metrics.accepted(&entry.run_id, entry.enqueued);
        s.control.queued();
    }
    s.deploys.changed.touch();
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "deployment": doc.id, "status": doc.status, "run": doc.run })),
    ))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Answer {
    reason: Option<String>,
}

/// `POST /api/v1/deployments/{id}/approve`.
pub(crate) async fn approve(
    State(s): St,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let caller = s.authorize(&headers, Scope::Deploy)?;
    s.answer(&id, true, caller.name(), None, false).await
}

/// `POST /api/v1/deployments/{id}/reject` (`{"reason": …}` optional).
pub(crate) async fn reject(
    State(s): St,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let caller = s.authorize(&headers, Scope::Deploy)?;
    let answer: Answer = if body.iter().all(u8::is_ascii_whitespace) {
        Answer::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("not a rejection: {e}")))?
    };
    s.answer(&id, false, caller.name(), answer.reason, false)
        .await
}

impl AppState {
    /// Approves or rejects deployment `id` for `by`.
    async fn answer(
        &self,
        id: &str,
        approved: bool,
        by: Option<String>,
        reason: Option<String>,
        cancel: bool,
    ) -> Result<Json<Value>, ApiError> {
        let approval = Approval {
            approved,
            by: by.unwrap_or_else(|| "anonymous".into()),
            at: Utc::now(),
            reason: reason.or_else(|| (!approved).then(|| "rejected".to_string())),
        };
        match self
            .store
            .answer_approval(id, approval, cancel)
            .await
            .map_err(ApiError::internal)?
        {
            Ok(doc) => {
                if let Some(run) = &doc.run {
                    self.metrics.accepted(run, Utc::now());
                    self.control.queued();
                }
                self.deploys.changed.touch();
                tracing::info!(deployment = %doc.id, status = %doc.status, "deployment answered");
                Ok(Json(json!(doc)))
            }
            Err(DeploymentStatus::Unknown) => {
                Err(ApiError::not_found(format!("no deployment {id}")))
            }
            Err(status) => Err(ApiError::conflict(format!(
                "deployment {id} is {status}: it waits for no approval"
            ))),
        }
    }
}

/// Rejects every deployment that has waited for an approval longer than
/// its environment allows, as of `now`; how many.
pub async fn expire_due(state: &AppState, now: chrono::DateTime<Utc>) -> usize {
    let waiting = match state.store.waiting_approval() {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!("cannot read the deployments waiting for approval: {e}");
            return 0;
        }
    };
    let mut ended = 0;
    for d in waiting {
        let hours = state
            .deploys
            .environments
            .get(&d.environment)
            .map_or(24, |e| e.approval_timeout_hours);
        if now - d.requested < chrono::Duration::hours(hours as i64) {
            continue;
        }
        let why = format!("no approval within {hours} h");
        match state
            .answer(&d.id, false, Some("sentinel".into()), Some(why), false)
            .await
        {
            Ok(_) => ended += 1,
            Err(e) => tracing::warn!(deployment = %d.id, "cannot end its wait: {}", e.message),
        }
    }
    ended
}

/// Ends the waits that timed out, once a minute, until `stop`.
pub async fn expire_waits(state: AppState, stop: tokio_util::sync::CancellationToken) {
    loop {
        expire_due(&state, Utc::now()).await;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
        }
    }
}
