//! A watcher's polls: markers listed, each new one acted on once (its
//! payload fetched and checked before anything is queued), `/force`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use chrono::Utc;
use serde::Serialize;
use serde_json::{Value, json};

use sentinel_api::{
    DeployFacts, DeploySource, DeploymentDoc, DeploymentStatus, Trigger, TriggerKind,
};
use sentinel_deploy::{Marker, Version};
use sentinel_store::deploys::Decided;
use sentinel_store::tokens::Scope;

use super::Watcher;
use crate::runs::{DeployRequest, RunSpec, St};
use crate::{ApiError, AppState};

/// What one marker came to in a poll.
#[derive(Debug, Clone, Serialize)]
struct Seen {
    key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    app: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    /// `queued`, `ignored`, `failed`, `waiting` (its payload is not there
    /// yet, or could not be read: the next poll tries again) or `invalid`.
    outcome: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deployment: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    run: Option<String>,
}

/// Stops the process between a marker's decision and its run's start, to
/// test that a restart neither loses nor repeats the deploy. Debug builds
/// only: `SENTINEL_FAILPOINT=deploy-decided`.
fn failpoint_after_decision() {
    #[cfg(debug_assertions)]
    if std::env::var("SENTINEL_FAILPOINT").as_deref() == Ok("deploy-decided") {
        eprintln!("failpoint deploy-decided: stopping");
        std::process::abort();
    }
}

impl AppState {
    /// Polls `w` now: lists its markers and acts on each new one; the report.
    pub async fn poll(&self, w: &Watcher) -> Result<Value, ApiError> {
        let mut last = w.polling.lock().await;
        let started = Utc::now();
        let keys = w
            .markers
            .list("")
            .await
            .map_err(|e| ApiError::unavailable(format!("watcher `{}`: {e}", w.name)))?;
        let mut markers = Vec::new();
        let mut seen = Vec::new();
        let mut already = 0usize;
        let keys: Vec<&String> = keys.iter().filter(|k| k.ends_with(".deploy")).collect();
        for key in keys.iter().copied() {
            match Marker::from_key("", key) {
                Ok(m) => markers.push((m, key.clone())),
                Err(why) => seen.push(Seen {
                    key: key.clone(),
                    app: None,
                    version: None,
                    outcome: "invalid".into(),
                    reason: Some(why),
                    deployment: None,
                    run: None,
                }),
            }
        }
        // Oldest first, so a poll that finds several deploys them in order.
        markers.sort_by(|a, b| (&a.0.app, &a.0.version).cmp(&(&b.0.app, &b.0.version)));
        for (m, key) in markers {
            let mark = format!("{}/{key}", w.name);
            if self
                .store
                .marked(&mark)
                .map_err(ApiError::internal)?
                .is_some()
            {
                already += 1;
                continue;
            }
            seen.push(self.act_on(w, &m, &key, &mark).await?);
        }
        let report = json!({
            "watcher": w.name,
            "polled": started,
            "markers": keys.len(),
            "already_acted_on": already,
            "new": seen,
        });
        *last = Some(report.clone());
        Ok(report)
    }

    /// Acts on a marker no deployment has acted on yet.
    async fn act_on(
        &self,
        w: &Watcher,
        m: &Marker,
        key: &str,
        mark: &str,
    ) -> Result<Seen, ApiError> {
        let c = &w.config;
        let mut seen = Seen {
            key: key.to_string(),
            app: Some(m.app.clone()),
            version: Some(m.version.to_string()),
            outcome: String::new(),
            reason: None,
            deployment: None,
            run: None,
        };
        let mut doc = DeploymentDoc::requested(
            ulid::Ulid::new().to_string(),
            &m.app,
            &c.environment,
            m.version.as_str(),
            DeploySource::Marker {
                watcher: w.name.clone(),
                key: key.to_string(),
            },
        );
        let newer = |latest: &str| latest.parse::<Version>().is_ok_and(|l| m.version > l);
        let latest = self
            .store
            .latest_version(&c.environment, &m.app)
            .map_err(ApiError::internal)?;
        let mut entry = None;
        let mut kept = None;
        if latest.as_deref().is_none_or(newer) {
            let payload_key = m.payload_key("", &c.domain, &c.environment);
            let cap = c.max_payload_mib << 20;
            let bytes = match w.payloads.read(&payload_key, cap).await {
                Ok(Some(b)) => Ok(b),
                Ok(None) => {
                    // The build may not have finished uploading: next poll.
                    seen.outcome = "waiting".into();
                    seen.reason = Some(format!(
                        "its payload {}/{payload_key} is not there yet",
                        w.payloads.describe()
                    ));
                    return Ok(seen);
                }
                Err(sentinel_deploy::SourceError::TooLarge { cap, .. }) => {
                    Err(sentinel_deploy::PayloadError::TooLarge { cap }.to_string())
                }
                Err(e) => {
                    seen.outcome = "waiting".into();
                    seen.reason = Some(e.to_string());
                    return Ok(seen);
                }
            };
            let folder = m.payload_name(&c.domain, &c.environment);
            let folder = folder.trim_end_matches(".tar.gz").to_string();
            let marker = m.clone();
            let checked = match bytes {
                Ok(b) => tokio::task::spawn_blocking(move || {
                    let r = sentinel_deploy::payload::check(b.as_slice(), &marker, &folder, cap)
                        .map_err(|e| e.to_string());
                    r.map(|p| (p, b))
                })
                .await
                .map_err(ApiError::internal)?,
                Err(e) => Err(e),
            };
            match checked {
                Err(why) => {
                    doc.status = DeploymentStatus::Failed;
                    doc.reason = Some(format!("the payload {payload_key}: {why}"));
                    doc.finished = Some(doc.requested);
                }
                Ok((p, bytes)) => {
                    let facts = DeployFacts {
                        app: m.app.clone(),
                        version: m.version.to_string(),
                        environment: c.environment.clone(),
                        image_version: p.metadata.image_version.clone(),
                        instances: p.metadata.instances,
                        domain: c.domain.clone(),
                    };
                    doc.facts = Some(facts.clone());
                    let file = self.deploys.payloads_dir.join(format!("{}.tar.gz", doc.id));
                    keep_payload(&file, bytes).await?;
                    kept = Some(file);
                    let spec = RunSpec::deploy(
                        &c.repo,
                        c.pipeline.as_deref(),
                        &c.git_ref,
                        DeployRequest {
                            facts,
                            deployment: doc.id.clone(),
                            payload: Some(m.payload_name(&c.domain, &c.environment)),
                            from_run: None,
                        },
                    );
                    entry = Some(self.entry(
                        &spec,
                        Trigger {
                            kind: TriggerKind::Deploy,
                            by: Some(format!("watcher:{}", w.name)),
                        },
                    ));
                }
            }
        }
        let decided = self
            .store
            .decide_marker(
                mark,
                &doc,
                entry.as_ref(),
                self.deploys.needs_approval(&c.environment),
                &newer,
            )
            .await
            .map_err(ApiError::internal)?;
        let doc = match decided {
            Decided::New(doc) => *doc,
            Decided::Known(id) => {
                // Another poll acted on it meanwhile.
                if let Some(f) = kept {
                    let _ = tokio::fs::remove_file(f).await;
                }
                seen.outcome = "already acted on".into();
                seen.deployment = Some(id);
                return Ok(seen);
            }
        };
        if doc.run.is_none()
            && let Some(f) = kept
        {
            let _ = tokio::fs::remove_file(f).await;
        }
        if doc.status == DeploymentStatus::WaitingApproval {
            tracing::info!(watcher = %w.name, app = %doc.app, version = %doc.version, deployment = %doc.id, "deploy waits for an approval");
        } else if let (Some(e), Some(_)) = (&entry, &doc.run) {
            failpoint_after_decision();
            self.metrics.accepted(&e.run_id, e.enqueued);
            self.control.queued();
            tracing::info!(watcher = %w.name, app = %doc.app, version = %doc.version, run = %e.run_id, "deploy queued");
        } else {
            tracing::info!(watcher = %w.name, app = %doc.app, version = %doc.version, status = %doc.status, reason = doc.reason.as_deref().unwrap_or(""), "deploy marker not deployed");
        }
        self.metrics.deploy_marker(&w.name, doc.status.as_str());
        self.deploys.changed.touch();
        seen.outcome = doc.status.as_str().to_string();
        seen.reason = doc.reason.clone();
        seen.deployment = Some(doc.id.clone());
        seen.run = doc.run.as_ref().map(|r| r.to_string());
        Ok(seen)
    }

    /// The watcher named `name`.
    fn watcher(&self, name: &str) -> Result<Arc<Watcher>, ApiError> {
        self.deploys.watchers.get(name).cloned().ok_or_else(|| {
            ApiError::not_found(format!(
                "no watcher `{name}` (this server has: {})",
                self.deploys
                    .watchers
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    }
}

/// Writes a checked payload where its run finds it, durably.
async fn keep_payload(file: &std::path::Path, bytes: Vec<u8>) -> Result<(), ApiError> {
    let file = file.to_path_buf();
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        use std::io::Write as _;
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = file.with_extension("part");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &file)
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)
}

/// Polls every watcher until `stop`, each every `poll_seconds`.
pub async fn watch(state: AppState, stop: tokio_util::sync::CancellationToken) {
    let mut tasks = Vec::new();
    for w in state.deploys.watchers.values().cloned() {
        let (state, stop) = (state.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let every = std::time::Duration::from_secs(w.config.poll_seconds.max(1));
            loop {
                if let Err(e) = state.poll(&w).await {
                    tracing::warn!(watcher = %w.name, "poll failed: {}", e.message);
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// `POST /api/v1/watchers/{name}/poll`: polls now.
pub(crate) async fn poll_now(
    State(s): St,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    s.authorize(&headers, Scope::Trigger)?;
    let w = s.watcher(&name)?;
    Ok(Json(s.poll(&w).await?))
}

/// `GET /force`: polls every watcher now (the monitor's spelling).
pub(crate) async fn force(State(s): St, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    s.authorize(&headers, Scope::Trigger)?;
    let mut reports = Vec::new();
    for w in s.deploys.watchers.values() {
        // One watcher that cannot read its bucket does not hide the others.
        reports.push(match s.poll(w).await {
            Ok(r) => r,
            Err(e) => json!({ "watcher": w.name, "error": e.message }),
        });
    }
    Ok(Json(json!({ "watchers": reports })))
}

/// `GET /api/v1/watchers`: each watcher, its settings and its last poll.
pub(crate) async fn list_watchers(
    State(s): St,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    s.authorize(&headers, Scope::Read)?;
    let mut out = Vec::new();
    for w in s.deploys.watchers.values() {
        let last = match w.polling.try_lock() {
            Ok(l) => l.clone(),
            Err(_) => Some(json!({ "polling": true })),
        };
        out.push(json!({
            "name": w.name,
            "repo": w.config.repo,
            "environment": w.config.environment,
            "markers": w.markers.describe(),
            "payloads": w.payloads.describe(),
            "poll_seconds": w.config.poll_seconds,
            "last_poll": last,
        }));
    }
    Ok(Json(json!({ "watchers": out })))
}
