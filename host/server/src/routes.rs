//! The routes: one table ([`ROUTES`]) says each endpoint's method, path,
//! who may call it, what it does and which handler serves it — the router
//! is built from it (so no endpoint exists that it does not list), and the
//! OpenAPI document and the tests read it too.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post, put};
use serde_json::{Value, json};
use tower::ServiceExt as _;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::services::ServeDir;

use sentinel_store::tokens::Scope;

use crate::runs::St;
use crate::{ApiError, AppState, admin, badge, deploys, hooks, logs, runs, schedules};

/// Who may call an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (a webhook checks its signature itself).
    Public,
    /// A token of at least this scope (reads: anyone with `public_read`).
    Token(Scope),
}

/// The handler of an endpoint, as a method router for its path.
pub type Handler = fn() -> MethodRouter<Arc<AppState>>;

/// One endpoint. A path's last parameter named `path` takes the rest of the
/// path (`/results/{path}`).
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub access: Access,
    pub summary: &'static str,
    pub handler: Handler,
}

const fn r(
    method: &'static str,
    path: &'static str,
    access: Access,
    summary: &'static str,
    handler: Handler,
) -> Route {
    Route {
        method,
        path,
        access,
        summary,
        handler,
    }
}

const READ: Access = Access::Token(Scope::Read);
const TRIGGER: Access = Access::Token(Scope::Trigger);
const DEPLOY: Access = Access::Token(Scope::Deploy);
const ADMIN: Access = Access::Token(Scope::Admin);

/// Every endpoint of the server.
pub const ROUTES: &[Route] = &[
    r(
        "GET",
        "/config.json",
        Access::Public,
        "The web app's settings when it is served live (`{\"mode\": \"live\", …}`)",
        || get(web_config),
    ),
    r(
        "GET",
        "/health",
        Access::Public,
        "Liveness: `{\"status\":\"ok\"}`",
        || get(health),
    ),
    r(
        "GET",
        "/info",
        READ,
        "Version and configuration (no secrets)",
        || get(info),
    ),
    r("GET", "/metrics", READ, "Prometheus metrics", || {
        get(metrics)
    }),
    r(
        "GET",
        "/badge/{pipeline}",
        Access::Public,
        "Status badge of a pipeline's newest run (`/badge/<pipeline>.svg`)",
        || get(badge::badge),
    ),
    r(
        "POST",
        "/hooks/github",
        Access::Public,
        "GitHub push webhook (HMAC-SHA256 signed)",
        || post(hooks::github),
    ),
    r(
        "GET",
        "/results/{path}",
        READ,
        "The results folder, read-only (embedded default)",
        || get(results),
    ),
    r("GET", "/api/v1/openapi.json", READ, "This document", || {
        get(openapi)
    }),
    r(
        "GET",
        "/api/v1/runs",
        READ,
        "Runs, newest first; `?limit=` (≤ 500) and `?before=<id>` page; the first page also names the runs not started yet (`queued`)",
        || get(runs::list_runs),
    ),
    r(
        "POST",
        "/api/v1/runs",
        TRIGGER,
        "Queue a run of a configured repository: `{\"repo\": …, \"ref\": …}`",
        || post(runs::trigger),
    ),
    r(
        "GET",
        "/api/v1/runs/{id}",
        READ,
        "A run and its stages (a queued run too)",
        || get(runs::show_run),
    ),
    r(
        "POST",
        "/api/v1/runs/{id}/cancel",
        TRIGGER,
        "Cancel a run, going or waiting",
        || post(runs::cancel),
    ),
    r(
        "POST",
        "/api/v1/runs/{id}/rerun",
        TRIGGER,
        "Run it again (same commit); `{\"from\": stage}` re-runs from a failed stage",
        || post(runs::rerun),
    ),
    r(
        "POST",
        "/api/v1/runs/{id}/keep",
        TRIGGER,
        "Keep a run whatever the retention policy says (`{\"keep\": false}` takes the mark away) → `{\"id\", \"keep\"}`",
        || post(runs::keep),
    ),
    r(
        "POST",
        "/api/v1/runs/{id}/promote",
        TRIGGER,
        "Deploy a succeeded run to an environment: `{\"to\": env, \"rollback\": false}` → `202 {\"deployment\", \"status\", \"run\"}` (`waiting_approval` when the environment asks for one)",
        || post(deploys::promote),
    ),
    r(
        "GET",
        "/api/v1/runs/{id}/events",
        READ,
        "Server-Sent Events: a snapshot, then stage and run events",
        || get(logs::run_events),
    ),
    r(
        "GET",
        "/api/v1/runs/{id}/stages/{stage}/log",
        READ,
        "A stage's log, text (so far, while it runs)",
        || get(logs::log),
    ),
    r(
        "GET",
        "/api/v1/runs/{id}/stages/{stage}/log/stream",
        READ,
        "Server-Sent Events: a stage's log lines as they come, then `end`",
        || get(logs::log_stream),
    ),
    r(
        "POST",
        "/api/v1/session",
        READ,
        "Set the session cookie from the bearer token (reads only; for EventSource)",
        || post(admin::open_session),
    ),
    r(
        "DELETE",
        "/api/v1/session",
        Access::Public,
        "Clear the session cookie",
        || delete(admin::close_session),
    ),
    r(
        "GET",
        "/api/v1/ignored",
        READ,
        "The newest events that started nothing (a push no pipeline's filters take), with the reason",
        || get(hooks::list_ignored),
    ),
    r(
        "GET",
        "/api/v1/schedules",
        READ,
        "Schedules: each one's cron, time zone, next firing and last run",
        || get(schedules::list),
    ),
    r(
        "GET",
        "/api/v1/steps",
        READ,
        "The steps the server knows (bundled and pulled): settings, hosts, workspace access, digest, source, signer",
        || get(list_steps),
    ),
    r(
        "GET",
        "/api/v1/watchers",
        READ,
        "Deploy watchers: where each looks, how often, and its last poll",
        || get(deploys::list_watchers),
    ),
    r(
        "POST",
        "/api/v1/watchers/{name}/poll",
        TRIGGER,
        "Poll a deploy watcher now; answers with what it found and did",
        || post(deploys::poll_now),
    ),
    r(
        "GET",
        "/force",
        TRIGGER,
        "Poll every deploy watcher now (the artifactory monitor's spelling)",
        || get(deploys::force),
    ),
    r(
        "GET",
        "/api/v1/deployments",
        READ,
        "What is deployed where now (`current`) and the history, newest first; `?app=`, `?environment=`, `?limit=` (≤ 1000)",
        || get(deploys::deployments),
    ),
    r(
        "GET",
        "/api/v1/deployments/{id}",
        READ,
        "One deployment",
        || get(deploys::deployment),
    ),
    r(
        "POST",
        "/api/v1/deployments/{id}/approve",
        DEPLOY,
        "Approve a deployment that waits: its run is queued",
        || post(deploys::approve),
    ),
    r(
        "POST",
        "/api/v1/deployments/{id}/reject",
        DEPLOY,
        "Reject a deployment that waits (`{\"reason\": …}` optional): nothing runs",
        || post(deploys::reject),
    ),
    r(
        "GET",
        "/api/v1/tokens",
        ADMIN,
        "API tokens (no secrets)",
        || get(admin::list_tokens),
    ),
    r(
        "POST",
        "/api/v1/tokens",
        ADMIN,
        "Create a token: `{\"name\": …, \"scope\": read|trigger|admin}`; shown once",
        || post(admin::create_token),
    ),
    r(
        "DELETE",
        "/api/v1/tokens/{id}",
        ADMIN,
        "Revoke a token",
        || delete(admin::revoke_token),
    ),
    r(
        "GET",
        "/api/v1/secrets",
        ADMIN,
        "Names of the stored run secrets",
        || get(admin::list_secrets),
    ),
    r(
        "PUT",
        "/api/v1/secrets/{name}",
        ADMIN,
        "Set a run secret: `{\"value\": …}` (stored encrypted)",
        || put(admin::put_secret),
    ),
    r(
        "DELETE",
        "/api/v1/secrets/{name}",
        ADMIN,
        "Remove a run secret",
        || delete(admin::delete_secret),
    ),
];

/// The router: every endpoint of [`ROUTES`] (and nothing else but the web
/// app's files), the webhook with a body limit of its own.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.config.body_limit;
    // Webhooks have a limit of their own (the signature is checked over
    // the whole body, so it must be read first).
    let hook_limit = state.config.hook_body_limit;
    let mut by_path: Vec<(&str, MethodRouter<Arc<AppState>>)> = Vec::new();
    for route in ROUTES {
        let handler = (route.handler)();
        match by_path.iter_mut().find(|(p, _)| *p == route.path) {
            Some((_, m)) => *m = std::mem::take(m).merge(handler),
            None => by_path.push((route.path, handler)),
        }
    }
    let (mut api, mut hooks) = (Router::new(), Router::new());
    for (path, methods) in by_path {
        let at = axum_path(path);
        if path.starts_with("/hooks/") {
            hooks = hooks.route(&at, methods);
        } else {
            api = api.route(&at, methods);
        }
    }
    let hooks = hooks
        .layer(DefaultBodyLimit::max(hook_limit))
        .layer(RequestBodyLimitLayer::new(hook_limit));
    api.fallback(web_app)
        .layer(RequestBodyLimitLayer::new(limit))
        .merge(hooks)
        .layer(axum::middleware::from_fn(crate::request_id::request_id))
        .with_state(state)
}

/// The router's form of a path: a last parameter named `path` takes the rest.
fn axum_path(path: &str) -> String {
    match path.strip_suffix("{path}") {
        Some(head) => format!("{head}{{*path}}"),
        None => path.to_string(),
    }
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
    // ServeDir sees the path below /results/, still percent-encoded (it
    // decodes and checks it itself).
    let raw = req.uri().path();
    let uri = raw.strip_prefix("/results").unwrap_or(raw);
    let mut inner = Request::builder()
        .method(req.method())
        .uri(uri)
        .body(Body::empty())
        .map_err(|e| ApiError::bad_request(format!("results path `{path}`: {e}")))?;
    *inner.headers_mut() = req.headers().clone();
    let res = ServeDir::new(dir)
        .oneshot(inner)
        .await
        .map_err(ApiError::internal)?;
    if res.status() == StatusCode::NOT_FOUND {
        return Err(ApiError::not_found(format!("no results file {path}")));
    }
    // Documents change while a run goes, and a modification time counts
    // whole seconds: nothing here is kept by a cache.
    let mut res = res.map(Body::new);
    res.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    Ok(res)
}

/// `GET /api/v1/steps`.
async fn list_steps(
    State(s): St,
    headers: HeaderMap,
) -> Result<Json<sentinel_api::StepsDoc>, ApiError> {
    s.authorize(&headers, Scope::Read)?;
    let source = s.steps.clone();
    tokio::task::spawn_blocking(move || source())
        .await
        .map(Json)
        .map_err(ApiError::internal)
}
