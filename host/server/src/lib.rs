//! The HTTP API of `sentinel serve` (axum), versioned under `/api/v1`. The
//! router is built by [`router`], so tests drive it without a socket.
//! Every endpoint but `/health` needs a bearer token whose scope covers it
//! (reads are public only with `public_read`); errors are JSON
//! `{"error": "…"}` with the right status: 400 for a bad body, 401 without
//! a valid token, 403 for a token whose scope is too small, 404, 413 for a
//! body past the limit.

mod error;
mod routes;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::http::HeaderMap;
use sentinel_store::SledStore;
use sentinel_store::tokens::Scope;
use serde::{Deserialize, Serialize};

pub use error::ApiError;

/// A repository the server may run: triggers name it, never a URL or path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoConfig {
    /// Where to fetch it (any URL git can reach, or a path).
    pub url: String,
}

/// What the API needs from the server's configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiConfig {
    /// Reads (runs, stages, logs) without a token.
    #[serde(default)]
    pub public_read: bool,
    /// The repositories triggers may name.
    #[serde(default)]
    pub repos: BTreeMap<String, RepoConfig>,
    /// The largest request body accepted, in bytes.
    #[serde(default = "default_body_limit")]
    pub body_limit: usize,
}

fn default_body_limit() -> usize {
    1 << 20
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            public_read: false,
            repos: BTreeMap::new(),
            body_limit: default_body_limit(),
        }
    }
}

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub store: SledStore,
    pub config: ApiConfig,
    /// Called after a run is queued (wakes the worker).
    pub on_queued: Arc<dyn Fn() + Send + Sync>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// Checks the caller's bearer token against the scope `need`.
    pub fn authorize(&self, headers: &HeaderMap, need: Scope) -> Result<(), ApiError> {
        if need == Scope::Read && self.config.public_read {
            return Ok(());
        }
        let token = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| ApiError::unauthorized("a bearer token is required"))?;
        let info = self
            .store
            .verify_token(token.trim())
            .map_err(ApiError::internal)?
            .ok_or_else(|| ApiError::unauthorized("the token is not valid"))?;
        if info.scope < need {
            return Err(ApiError::forbidden(format!(
                "token `{}` has scope {:?}; this needs {need:?}",
                info.id, info.scope
            )));
        }
        Ok(())
    }
}

/// The API's router.
pub fn router(state: AppState) -> Router {
    routes::router(Arc::new(state))
}
