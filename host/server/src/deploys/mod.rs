//! Deploy watchers and the deployments record. A watcher (server
//! configuration) lists `<app>/<version>.deploy` markers at its location
//! every `poll_seconds` — or at once on `POST /api/v1/watchers/{name}/poll`
//! and the seed's `GET /force` — and acts on each marker once: older or
//! equal versions are recorded as ignored; a newer one's payload is fetched
//! and checked completely, then a refused payload is recorded as a failed
//! deploy (nothing runs) and a good one queues a run of the watcher's
//! repository with the payload in its workspace and the deploy's facts.
//! `GET /api/v1/deployments` says what was deployed where, and by which run.
//! Environments (`[environments.NAME]`) may ask for an approval: a deploy
//! to one waits as `waiting_approval`, holding nothing, until a token with
//! the `deploy` scope approves or rejects it (or its wait times out);
//! `POST /api/v1/runs/{id}/promote` deploys a succeeded run there.

mod gates;
mod promote;
mod watch;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use sentinel_deploy::Location;
use sentinel_store::tokens::Scope;

use crate::ApiError;
use crate::runs::St;

pub use gates::{cancel_paused, gates_of, hold};
pub(crate) use promote::{approve, promote, reject};
pub use promote::{expire_due, expire_waits};
pub use watch::watch;
pub(crate) use watch::{force, list_watchers, poll_now};

/// A watcher as the server's configuration gives it (`[watchers.NAME]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatcherConfig {
    /// The repository (of `[repos]`) whose pipeline deploys.
    pub repo: String,
    /// Its pipeline, when it has several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<String>,
    /// The branch, tag or commit of it to run.
    #[serde(default = "default_ref", rename = "ref")]
    pub git_ref: String,
    /// The environment it deploys to.
    pub environment: String,
    /// The domain in the payloads' names.
    #[serde(default)]
    pub domain: String,
    /// Where the markers are: `s3://bucket/prefix` or a folder.
    pub markers: String,
    /// Where the payloads are: `s3://bucket/prefix` or a folder.
    pub payloads: String,
    /// Seconds between polls.
    #[serde(default = "default_poll")]
    pub poll_seconds: u64,
    /// The largest payload, uncompressed, in MiB.
    #[serde(default = "default_payload_mib")]
    pub max_payload_mib: u64,
    /// The S3 endpoint, region and addressing of `s3://` locations (the
    /// `[s3]` section's when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_style: Option<bool>,
}

fn default_ref() -> String {
    "HEAD".into()
}

fn default_poll() -> u64 {
    300
}

fn default_payload_mib() -> u64 {
    sentinel_deploy::payload::MAX_BYTES >> 20
}

/// A watcher with its locations.
#[derive(Debug)]
pub struct Watcher {
    pub name: String,
    pub config: WatcherConfig,
    pub markers: Arc<dyn Location>,
    pub payloads: Arc<dyn Location>,
    /// One poll of it at a time in this process (the store makes each
    /// decision once across processes and restarts).
    polling: tokio::sync::Mutex<Option<Value>>,
}

impl Watcher {
    pub fn new(
        name: &str,
        config: WatcherConfig,
        markers: Arc<dyn Location>,
        payloads: Arc<dyn Location>,
    ) -> Self {
        Self {
            name: name.to_string(),
            config,
            markers,
            payloads,
            polling: tokio::sync::Mutex::new(None),
        }
    }
}

/// The server's deploy settings: watchers, environments, and where
/// checked payloads are kept.
#[derive(Debug, Default)]
pub struct Deploys {
    /// Environments by name (none: every deploy goes without approval).
    pub environments: BTreeMap<String, EnvironmentConfig>,
    /// Watchers by name.
    pub watchers: BTreeMap<String, Arc<Watcher>>,
    /// `<state>/payloads`.
    pub payloads_dir: PathBuf,
    /// Told of every change to a deployment (the results' document is
    /// written again; answers read before are stale).
    pub changed: Arc<Changes>,
    /// The last answers of `GET /api/v1/deployments`, by query, with the
    /// generation of [`Changes`] they were made at.
    answers: std::sync::Mutex<BTreeMap<String, (u64, axum::body::Bytes)>>,
}

/// Changes to the deployments: a generation, and a wake-up for the one
/// task that publishes them.
#[derive(Debug, Default)]
pub struct Changes {
    generation: std::sync::atomic::AtomicU64,
    pub notify: tokio::sync::Notify,
}

impl Changes {
    /// Something changed.
    pub fn touch(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.notify.notify_one();
    }

    fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// An environment as the server's configuration gives it
/// (`[environments.NAME]`): what deploys to it and whether a deploy waits
/// for an approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentConfig {
    /// The repository (of `[repos]`) whose pipeline deploys a promoted run.
    pub repo: String,
    /// Its pipeline, when it has several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<String>,
    /// The branch, tag or commit of it to run.
    #[serde(default = "default_ref", rename = "ref")]
    pub git_ref: String,
    /// The domain its deploys name (`${deploy.domain}`).
    #[serde(default)]
    pub domain: String,
    /// A deploy waits for a token with the `deploy` scope to approve it.
    #[serde(default)]
    pub approval: bool,
    /// A wait longer than this is rejected, in hours.
    #[serde(default = "default_wait_hours")]
    pub approval_timeout_hours: u64,
}

fn default_wait_hours() -> u64 {
    24
}

impl Deploys {
    /// The deploy settings; `changed` is told of every change.
    pub fn new(
        environments: BTreeMap<String, EnvironmentConfig>,
        watchers: BTreeMap<String, Arc<Watcher>>,
        payloads_dir: PathBuf,
        changed: Arc<Changes>,
    ) -> Self {
        Self {
            environments,
            watchers,
            payloads_dir,
            changed,
            answers: Default::default(),
        }
    }

    /// Whether a deploy to `environment` waits for an approval.
    pub fn needs_approval(&self, environment: &str) -> bool {
        self.environments
            .get(environment)
            .is_some_and(|e| e.approval)
    }
}

/// `GET /api/v1/deployments/{id}`: one deployment.
pub(crate) async fn deployment(
    State(s): St,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    s.authorize(&headers, Scope::Read)?;
    match s
        .store
        .deployment_now(&id)
        .await
        .map_err(ApiError::internal)?
    {
        Some(d) => Ok(Json(json!(d))),
        None => Err(ApiError::not_found(format!("no deployment {id}"))),
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct DeploymentsQuery {
    app: Option<String>,
    environment: Option<String>,
    /// How many of the history to answer with (default 100, at most 1,000).
    limit: Option<usize>,
}

/// `GET /api/v1/deployments`: what is deployed where now (`current`: per
/// environment and app, the newest that succeeded), and the history,
/// newest first. An answer is made once per change of the deployments and
/// query (reads far outnumber deploys), then served as it is.
pub(crate) async fn deployments(
    State(s): St,
    headers: HeaderMap,
    Query(q): Query<DeploymentsQuery>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse as _;
    s.authorize(&headers, Scope::Read)?;
    let (app, env) = (q.app.as_deref(), q.environment.as_deref());
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let key = format!("{}\0{}\0{limit}", app.unwrap_or(""), env.unwrap_or(""));
    let generation = s.deploys.changed.generation();
    let known = s
        .deploys
        .answers
        .lock()
        .ok()
        .and_then(|a| a.get(&key).filter(|(g, _)| *g == generation).cloned());
    let body = match known {
        Some((_, body)) => body,
        None => {
            #[derive(Serialize)]
            struct Answer<'a> {
                current: &'a [sentinel_api::DeploymentDoc],
                deployments: &'a [sentinel_api::DeploymentDoc],
            }
            // The history first: reading it records the outcome of a run
            // that ended a moment ago, which `current` then shows.
            let history = s
                .store
                .deployments(app, env, limit)
                .await
                .map_err(ApiError::internal)?;
            let current = s.store.current(app, env).map_err(ApiError::internal)?;
            let body = axum::body::Bytes::from(
                serde_json::to_vec(&Answer {
                    current: &current,
                    deployments: &history,
                })
                .map_err(ApiError::internal)?,
            );
            if let Ok(mut a) = s.deploys.answers.lock() {
                if a.len() > 256 {
                    a.clear();
                }
                a.insert(key, (generation, body.clone()));
            }
            body
        }
    };
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response())
}

/// The version a run deploys: its commit (12 characters), else its id.
pub(crate) fn version_of(run: &sentinel_api::RunDoc) -> String {
    run.git
        .as_ref()
        .and_then(|g| g.commit.clone())
        .map(|c| c.chars().take(12).collect())
        .unwrap_or_else(|| run.id.to_string())
}
