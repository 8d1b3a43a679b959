//! The routes: one table ([`ROUTES`]) says each endpoint's method, path,
//! who may call it and what it does — the router, the OpenAPI document
//! and the tests all read it.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use serde_json::{Value, json};
use tower::ServiceExt as _;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::services::ServeDir;

use sentinel_store::tokens::Scope;

use crate::runs::St;
use crate::{ApiError, AppState, admin, badge, hooks, logs, runs};

/// Who may call an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (a webhook checks its signature itself).
    Public,
    /// A token of at least this scope (reads: anyone with `public_read`).
    Token(Scope),
}

/// One endpoint.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub access: Access,
    pub summary: &'static str,
}

const fn r(
    method: &'static str,
    path: &'static str,
    access: Access,
    summary: &'static str,
) -> Route {
    Route {
        method,
        path,
        access,
        summary,
    }
}

const READ: Access = Access::Token(Scope::Read);
const TRIGGER: Access = Access::Token(Scope::Trigger);
const ADMIN: Access = Access::Token(Scope::Admin);

/// Every endpoint of the server.
pub const ROUTES: &[Route] = &[
    r(
        "GET",
        "/health",
        Access::Public,
        "Liveness: `{\"status\":\"ok\"}`",
    ),
    r(
        "GET",
        "/info",
        READ,
        "Version and configuration (no secrets)",
    ),
    r("GET", "/metrics", READ, "Prometheus metrics"),
    r(
        "GET",
        "/badge/{pipeline}",
        Access::Public,
        "Status badge of a pipeline's newest run (`/badge/<pipeline>.svg`)",
    ),
    r(
        "POST",
        "/hooks/github",
        Access::Public,
        "GitHub push webhook (HMAC-SHA256 signed)",
    ),
    r(
        "GET",
        "/results/{path}",
        READ,
        "The results folder, read-only (embedded default)",
    ),
    r("GET", "/api/v1/openapi.json", READ, "This document"),
    r(
        "GET",
        "/api/v1/runs",
        READ,
        "Runs, newest first; `?limit=` (≤ 500) and `?before=<id>` page; the first page also names the runs not started yet (`queued`)",
    ),
    r(
        "POST",
        "/api/v1/runs",
        TRIGGER,
        "Queue a run of a configured repository: `{\"repo\": …, \"ref\": …}`",
    ),
    r(
        "GET",
        "/api/v1/runs/{id}",
        READ,
        "A run and its stages (a queued run too)",
    ),
    r(
        "POST",
        "/api/v1/runs/{id}/cancel",
        TRIGGER,
        "Cancel a run, going or waiting",
    ),
    r(
        "POST",
        "/api/v1/runs/{id}/rerun",
        TRIGGER,
        "Run it again (same commit); `{\"from\": stage}` re-runs from a failed stage",
    ),
    r(
        "GET",
        "/api/v1/runs/{id}/events",
        READ,
        "Server-Sent Events: a snapshot, then stage and run events",
    ),
    r(
        "GET",
        "/api/v1/runs/{id}/stages/{stage}/log",
        READ,
        "A stage's log, text (so far, while it runs)",
    ),
    r(
        "GET",
        "/api/v1/runs/{id}/stages/{stage}/log/stream",
        READ,
        "Server-Sent Events: a stage's log lines as they come, then `end`",
    ),
    r(
        "POST",
        "/api/v1/session",
        READ,
        "Set the session cookie from the bearer token (reads only; for EventSource)",
    ),
    r(
        "DELETE",
        "/api/v1/session",
        Access::Public,
        "Clear the session cookie",
    ),
    r("GET", "/api/v1/tokens", ADMIN, "API tokens (no secrets)"),
    r(
        "POST",
        "/api/v1/tokens",
        ADMIN,
        "Create a token: `{\"name\": …, \"scope\": read|trigger|admin}`; shown once",
    ),
    r("DELETE", "/api/v1/tokens/{id}", ADMIN, "Revoke a token"),
    r(
        "GET",
        "/api/v1/secrets",
        ADMIN,
        "Names of the stored run secrets",
    ),
    r(
        "PUT",
        "/api/v1/secrets/{name}",
        ADMIN,
        "Set a run secret: `{\"value\": …}` (stored encrypted)",
    ),
    r(
        "DELETE",
        "/api/v1/secrets/{name}",
        ADMIN,
        "Remove a run secret",
    ),
];

pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.config.body_limit;
    // Webhooks have a limit of their own (the signature is checked over
    // the whole body, so it must be read first).
    let hook_limit = state.config.hook_body_limit;
    let hooks = Router::new()
        .route("/hooks/github", post(hooks::github))
        .layer(DefaultBodyLimit::max(hook_limit))
        .layer(RequestBodyLimitLayer::new(hook_limit));
    Router::new()
        .route("/config.json", get(web_config))
        .route("/health", get(health))
        .route("/info", get(info))
        .route("/metrics", get(metrics))
        .route("/badge/{pipeline}", get(badge::badge))
        .route("/results/{*path}", get(results))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/runs", get(runs::list_runs).post(runs::trigger))
        .route("/api/v1/runs/{id}", get(runs::show_run))
        .route("/api/v1/runs/{id}/cancel", post(runs::cancel))
        .route("/api/v1/runs/{id}/rerun", post(runs::rerun))
        .route("/api/v1/runs/{id}/events", get(logs::run_events))
        .route("/api/v1/runs/{id}/stages/{stage}/log", get(logs::log))
        .route(
            "/api/v1/runs/{id}/stages/{stage}/log/stream",
            get(logs::log_stream),
        )
        .route(
            "/api/v1/session",
            post(admin::open_session).delete(admin::close_session),
        )
        .route(
            "/api/v1/tokens",
            get(admin::list_tokens).post(admin::create_token),
        )
        .route("/api/v1/tokens/{id}", delete(admin::revoke_token))
        .route("/api/v1/secrets", get(admin::list_secrets))
        .route(
            "/api/v1/secrets/{name}",
            put(admin::put_secret).delete(admin::delete_secret),
        )
        .fallback(web_app)
        .layer(RequestBodyLimitLayer::new(limit))
        .merge(hooks)
        .with_state(state)
}

async fn web_config() -> Json<Value> {
    Json(json!({ "mode": "live", "results": "/results/", "api": "/api/v1" }))
}

/// The web app's files for any other GET; 404 JSON otherwise.
async fn web_app(State(s): St, req: Request<Body>) -> Response {
    let path = req.uri().path();
    let api = path.starts_with("/api/") || path.starts_with("/results/");
    let read = req.method() == axum::http::Method::GET || req.method() == axum::http::Method::HEAD;
    match &s.web_dir {
        Some(dir) if read && !api => match ServeDir::new(dir).oneshot(req).await {
            Ok(res) if res.status() != StatusCode::NOT_FOUND => res.map(Body::new),
            _ => ApiError::not_found("no such file").into_response(),
        },
        _ => ApiError::not_found("no such endpoint").into_response(),
    }
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
        "results": s.results_dir.as_ref().map(|_| "/results/"),
        "webhooks": { "github": s.github_secret.is_some() },
        "secrets": s.secrets_key.is_some(),
    })))
}

async fn metrics(State(s): St, headers: HeaderMap) -> Result<Response, ApiError> {
    s.authorize(&headers, Scope::Read)?;
    let running = s.live.running();
    let text = s
        .metrics
        .render(&s.store, running)
        .await
        .map_err(ApiError::internal)?;
    let mut res = text.into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    Ok(res)
}

async fn openapi(State(s): St, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    s.authorize(&headers, Scope::Read)?;
    Ok(Json(crate::openapi::document()))
}

/// The results folder, read-only, for a reader.
async fn results(
    State(s): St,
    headers: HeaderMap,
    Path(path): Path<String>,
    req: Request<Body>,
) -> Result<Response, ApiError> {
    s.authorize(&headers, Scope::Read)?;
    let Some(dir) = &s.results_dir else {
        return Err(ApiError::not_found(
            "this server publishes its results to a bucket, not under /results/",
        ));
    };
    // ServeDir sees the path below /results/.
    let uri = format!("/{path}");
    let mut inner = Request::builder()
        .method(req.method())
        .uri(uri)
        .body(Body::empty())
        .map_err(ApiError::internal)?;
    *inner.headers_mut() = req.headers().clone();
    let res = ServeDir::new(dir)
        .oneshot(inner)
        .await
        .map_err(ApiError::internal)?;
    if res.status() == StatusCode::NOT_FOUND {
        return Err(ApiError::not_found(format!("no results file {path}")));
    }
    Ok(res.map(Body::new))
}
