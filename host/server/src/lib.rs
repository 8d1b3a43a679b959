//! The HTTP API of `sentinel serve` (axum), versioned under `/api/v1`. The
//! router is built by [`router`], so tests drive it without a socket.
//! Public without a token: `/health`, `/badge/*` and `/hooks/*` (which their
//! signature protects); reads are public only with `public_read`; every
//! other endpoint needs a bearer token whose scope covers it, within the
//! token's rate limit. Errors are JSON `{"error": "…"}` with the right
//! status: 400, 401, 403, 404, 409, 413, 429.

mod admin;
mod auth;
pub mod autocancel;
mod badge;
pub mod clock;
pub mod deploys;
mod error;
pub mod filters;
mod hooks;
pub mod live;
mod logs;
pub mod metrics;
pub mod openapi;
pub mod request_id;
mod routes;
mod runs;
pub mod schedules;
pub mod upstream;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use axum::Router;
use sentinel_api::RunId;
use sentinel_engine::ports::StorageError;
use sentinel_engine::queue::{Cancelled, Worker};
use sentinel_store::SledStore;
use sentinel_store::secrets::SecretsKey;
use serde::{Deserialize, Serialize};

pub use auth::{Caller, SESSION_COOKIE};
pub use deploys::{Deploys, EnvironmentConfig, Watcher, WatcherConfig};
pub use error::ApiError;
pub use hooks::signature as github_signature;
pub use routes::{Access, ROUTES, Route};
pub use runs::{DeployRequest, RunSpec};

/// A repository the server may run: triggers name it, never a URL or path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoConfig {
    /// Where to fetch it (any URL git can reach, or a path).
    pub url: String,
    /// Its GitHub name (`owner/name`), to match push webhooks by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub github: Option<String>,
    /// The pipeline file in it (any dialect); when absent, the first of
    /// every dialect's usual names found in the checkout (`sentinel.yml`,
    /// `dockercise.yml`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<String>,
    /// Several named pipelines, each with its file (instead of `pipeline`):
    /// a run names one; a push runs each.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pipelines: BTreeMap<String, PipelineConfig>,
    /// Its one pipeline runs when another pipeline's run ends so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<upstream::After>,
    /// Which events start its one pipeline (default: every event).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on: Option<filters::On>,
    /// Its default branch (default `main`): pushes there are not
    /// auto-cancelled unless asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_branch: Option<String>,
    /// A newer push's run cancels older ones of its pipeline and branch
    /// (default: on for other branches than the default one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_cancel: Option<bool>,
    /// A pull request's run builds its head merged onto its base branch
    /// (default: its head as it is).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub merge_pull_requests: bool,
}

/// A named pipeline of a repository (`[repos.NAME.pipelines.PIPELINE]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Its file in the repository (any dialect).
    pub file: String,
    /// It runs when another pipeline's run ends so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<upstream::After>,
    /// Which events start it (default: every event).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on: Option<filters::On>,
    /// As the repository's `auto_cancel`, for this pipeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_cancel: Option<bool>,
}

impl RepoConfig {
    /// The filters of pipeline `name` (none: the repository's one pipeline).
    pub fn on_of(&self, name: Option<&str>) -> Option<&filters::On> {
        match name {
            Some(n) => self.pipelines.get(n).and_then(|p| p.on.as_ref()),
            None => self.on.as_ref(),
        }
    }

    /// The file of pipeline `name` (none: the repository's one pipeline).
    pub fn file_of(&self, name: Option<&str>) -> Option<&str> {
        match name {
            Some(n) => self.pipelines.get(n).map(|p| p.file.as_str()),
            None => self.pipeline.as_deref(),
        }
    }
}

/// Checks that `pipeline` names a pipeline of repository `repo` — or, for
/// a repository with one pipeline, that none is named.
pub fn check_pipeline(
    repos: &BTreeMap<String, RepoConfig>,
    repo: &str,
    pipeline: Option<&str>,
) -> Result<(), String> {
    let Some(r) = repos.get(repo) else {
        return Err(format!(
            "repo `{repo}` is not in [repos] (it has: {})",
            repos.keys().cloned().collect::<Vec<_>>().join(", ")
        ));
    };
    let names = || r.pipelines.keys().cloned().collect::<Vec<_>>().join(", ");
    match pipeline {
        None if r.pipelines.is_empty() => Ok(()),
        None => Err(format!(
            "repository `{repo}` has several pipelines ({}): name one",
            names()
        )),
        Some(p) if r.pipelines.contains_key(p) => Ok(()),
        Some(p) if r.pipelines.is_empty() => Err(format!(
            "repository `{repo}` has no named pipelines, so no pipeline `{p}`"
        )),
        Some(p) => Err(format!(
            "repository `{repo}` has no pipeline `{p}` (it has: {})",
            names()
        )),
    }
}

/// Checks that `pipeline` of `repo` (see [`check_pipeline`]) takes events
/// of `kind`.
pub fn check_event(
    repos: &BTreeMap<String, RepoConfig>,
    repo: &str,
    pipeline: Option<&str>,
    kind: filters::Event,
) -> Result<(), String> {
    check_pipeline(repos, repo, pipeline)?;
    match repos.get(repo).and_then(|r| r.on_of(pipeline)) {
        Some(on) => on
            .takes(kind)
            .map_err(|e| format!("pipeline `{}`: {e}", pipeline.unwrap_or(repo))),
        None => Ok(()),
    }
}

/// Checks the repositories' named pipelines: names of letters, digits,
/// `.`, `-` and `_`, unique across the server (each has its own runs list
/// and badge), files inside the repository, not both `pipeline` and
/// `pipelines` — and their `after` links.
pub fn check_repos(repos: &BTreeMap<String, RepoConfig>) -> Result<(), String> {
    let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
    for (repo, r) in repos {
        if let Some(on) = &r.on {
            on.check().map_err(|e| format!("[repos.{repo}.on] {e}"))?;
        }
        for (name, p) in &r.pipelines {
            if let Some(on) = &p.on {
                on.check()
                    .map_err(|e| format!("[repos.{repo}.pipelines.{name}.on] {e}"))?;
            }
        }
        if r.pipeline.is_some() && !r.pipelines.is_empty() {
            return Err(format!(
                "[repos.{repo}]: give `pipeline` (one pipeline) or `pipelines` (several), not both"
            ));
        }
        for (name, p) in &r.pipelines {
            let ok = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
            if !ok {
                return Err(format!(
                    "[repos.{repo}.pipelines.{name}]: the name may hold letters, digits, `.`, `-` and `_`"
                ));
            }
            let path = std::path::Path::new(&p.file);
            if p.file.is_empty()
                || path.is_absolute()
                || path
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                return Err(format!(
                    "[repos.{repo}.pipelines.{name}]: file `{}` must be a path inside the repository",
                    p.file
                ));
            }
            if let Some(other) = seen.insert(name, repo) {
                return Err(format!(
                    "pipeline `{name}` is named in [repos.{other}] and [repos.{repo}]: a pipeline's name is its runs list and badge, so names are unique"
                ));
            }
        }
    }
    upstream::check(repos)
}

/// Requests a token may make, as a token bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Sustained requests per second.
    pub per_second: u32,
    /// Requests allowed in a burst.
    pub burst: u32,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            per_second: 50,
            burst: 200,
        }
    }
}

/// What the API needs from the server's configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Reads (runs, stages, logs, results) without a token.
    #[serde(default)]
    pub public_read: bool,
    /// The repositories triggers may name.
    #[serde(default)]
    pub repos: BTreeMap<String, RepoConfig>,
    /// The largest request body accepted, in bytes.
    #[serde(default = "default_body_limit")]
    pub body_limit: usize,
    /// The largest webhook body accepted, in bytes (GitHub sends up to
    /// 25 MB: a push of many commits).
    #[serde(default = "default_hook_body_limit")]
    pub hook_body_limit: usize,
    /// Requests per token.
    #[serde(default)]
    pub rate_limit: RateLimit,
}

fn default_body_limit() -> usize {
    1 << 20
}

fn default_hook_body_limit() -> usize {
    25 << 20
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            public_read: false,
            repos: BTreeMap::new(),
            body_limit: default_body_limit(),
            hook_body_limit: default_hook_body_limit(),
            rate_limit: RateLimit::default(),
        }
    }
}

/// What the API asks of whatever runs the queued runs.
#[async_trait]
pub trait RunControl: Send + Sync {
    /// A run was queued.
    fn queued(&self);
    /// Cancels a run (going or waiting).
    async fn cancel(&self, run: &RunId) -> Result<Cancelled, StorageError>;
    /// Cancels a run, saying why (its reason).
    async fn cancel_because(&self, run: &RunId, why: String) -> Result<Cancelled, StorageError> {
        let _ = why;
        self.cancel(run).await
    }
}

#[async_trait]
impl RunControl for Worker {
    fn queued(&self) {
        self.notify();
    }
    async fn cancel(&self, run: &RunId) -> Result<Cancelled, StorageError> {
        Worker::cancel(self, run).await
    }
    async fn cancel_because(&self, run: &RunId, why: String) -> Result<Cancelled, StorageError> {
        Worker::cancel_because(self, run, Some(why)).await
    }
}

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub store: SledStore,
    pub config: ApiConfig,
    pub control: Arc<dyn RunControl>,
    /// Live logs and stage events of the runs going.
    pub live: Arc<live::LiveHub>,
    pub metrics: Arc<metrics::Metrics>,
    /// The secret that signs GitHub webhooks (none: `/hooks/github` refuses all).
    pub github_secret: Option<Arc<[u8]>>,
    /// The room kept free on the state folder's disk (none: not checked).
    pub disk: Option<sentinel_engine::disk::DiskReserve>,
    /// The key run secrets are sealed with (none: secrets cannot be set).
    pub secrets_key: Option<Arc<SecretsKey>>,
    /// The local results folder: logs are read from it and it is served
    /// read-only under `/results/`.
    pub results_dir: Option<PathBuf>,
    /// The built results web app, served at `/` (public: it holds no data).
    pub web_dir: Option<PathBuf>,
    /// Deploy watchers and environments (none by default).
    pub deploys: Arc<deploys::Deploys>,
    /// Schedules (none by default).
    pub schedules: schedules::Schedules,
    /// The steps the server knows (bundled, pulled), listed when asked.
    pub steps: StepsSource,
    limiter: Arc<auth::Limiter>,
}

/// Lists the steps a server knows (it reads files: called off the async
/// threads).
pub type StepsSource = Arc<dyn Fn() -> sentinel_api::StepsDoc + Send + Sync>;

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("config", &self.config)
            .field("results_dir", &self.results_dir)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// State with no webhook secret, no secrets key and no results folder.
    pub fn new(store: SledStore, config: ApiConfig, control: Arc<dyn RunControl>) -> Self {
        let limiter = Arc::new(auth::Limiter::new(config.rate_limit));
        Self {
            store,
            config,
            control,
            live: Arc::default(),
            metrics: Arc::default(),
            github_secret: None,
            disk: None,
            secrets_key: None,
            results_dir: None,
            web_dir: None,
            deploys: Arc::default(),
            schedules: Arc::default(),
            steps: Arc::new(sentinel_api::StepsDoc::default),
            limiter,
        }
    }
}

/// The API's router.
pub fn router(state: AppState) -> Router {
    routes::router(Arc::new(state))
}
