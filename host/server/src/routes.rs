//! The endpoints: `/health`, `/info`, and under `/api/v1` the runs (list,
//! show, trigger). Each handler checks the caller's scope first.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};
use tower_http::limit::RequestBodyLimitLayer;

use sentinel_api::{RunId, Trigger, TriggerKind};
use sentinel_engine::docs::new_run_id;
use sentinel_engine::ports::{QueueEntry, RunQueue, Store};
use sentinel_store::tokens::Scope;

use crate::{ApiError, AppState};

type St = State<Arc<AppState>>;

pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.config.body_limit;
    Router::new()
        .route("/health", get(health))
        .route("/info", get(info))
        .route("/api/v1/runs", get(list_runs).post(trigger))
        .route("/api/v1/runs/{id}", get(show_run))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .layer(RequestBodyLimitLayer::new(limit))
        .with_state(state)
}

async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

async fn info(State(s): St, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    s.authorize(&headers, Scope::Read)?;
    Ok(Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "api": "v1",
        "public_read": s.config.public_read,
        "repos": s.config.repos.keys().collect::<Vec<_>>(),
    })))
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    #[serde(default = "default_limit")]
    limit: usize,
}

fn default_limit() -> usize {
    50
}

async fn list_runs(
    State(s): St,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    s.authorize(&headers, Scope::Read)?;
    let runs = s
        .store
        .list_runs(q.limit.clamp(1, 500))
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(json!({ "runs": runs })))
}

async fn show_run(
    State(s): St,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    s.authorize(&headers, Scope::Read)?;
    let id: RunId = id
        .parse()
        .map_err(|e| ApiError::bad_request(format!("{e}")))?;
    let Some(run) = s.store.get_run(&id).await.map_err(ApiError::internal)? else {
        // Accepted but not started: the queue knows it.
        return match RunQueue::get(&s.store, &id)
            .await
            .map_err(ApiError::internal)?
        {
            Some(e) => Ok(Json(json!({
                "run": {
                    "id": e.run_id,
                    "status": "queued",
                    "attempt": e.attempt,
                    "created": e.enqueued,
                    "trigger": e.trigger,
                },
                "stages": [],
            }))),
            None => Err(ApiError::not_found(format!("no run {id}"))),
        };
    };
    let stages = s.store.get_stages(&id).await.map_err(ApiError::internal)?;
    Ok(Json(json!({ "run": run, "stages": stages })))
}

/// `POST /api/v1/runs`: a run of a configured repository at a ref.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TriggerRequest {
    /// A repository named in the server's configuration.
    repo: String,
    /// A branch, tag or commit.
    #[serde(rename = "ref", default = "default_ref")]
    git_ref: String,
}

fn default_ref() -> String {
    "HEAD".into()
}

async fn trigger(
    State(s): St,
    headers: HeaderMap,
    body: Result<Json<TriggerRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    s.authorize(&headers, Scope::Trigger)?;
    let Json(req) = body?;
    if !s.config.repos.contains_key(&req.repo) {
        return Err(ApiError::bad_request(format!(
            "unknown repository `{}`: the server runs only the repositories in its configuration ({})",
            req.repo,
            s.config
                .repos
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let entry = QueueEntry {
        run_id: new_run_id(),
        pipeline: req.repo.clone(),
        trigger: Trigger {
            kind: TriggerKind::Api,
            by: None,
        },
        request: json!({ "repo": req.repo, "ref": req.git_ref }),
        attempt: 1,
        enqueued: Utc::now(),
        claim: None,
    };
    // Acknowledged only once the queue has it on disk.
    s.store.enqueue(&entry).await.map_err(ApiError::internal)?;
    (s.on_queued)();
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "id": entry.run_id, "status": "queued" })),
    ))
}
