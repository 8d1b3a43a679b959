//! The runs: list (paged), show, trigger, cancel and re-run. A trigger
//! names a configured repository and a ref, is stored with its request
//! (so a re-run repeats it) and answered only once the queue has it on disk.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use sentinel_api::{RunDoc, RunId, StageDoc, StageName, StageStatus, Trigger, TriggerKind};
use sentinel_engine::docs::new_run_id;
use sentinel_engine::ports::{QueueEntry, RunQueue, Store};
use sentinel_engine::queue::Cancelled;
use sentinel_store::tokens::Scope;

use crate::{ApiError, AppState};

pub(crate) type St = State<Arc<AppState>>;

/// What a queued run is to run: kept as the queue entry's request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSpec {
    /// A repository of the server's configuration.
    pub repo: String,
    /// One of its named pipelines (none: its one pipeline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<String>,
    /// The branch, tag or commit to check out.
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// The branch a push was to (webhooks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// The run this one repeats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerun_of: Option<RunId>,
    /// Re-run from this stage: it and the stages after it run again; the
    /// stages it builds on that succeeded keep their results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<StageName>,
    /// Values for the pipeline's `NAME: ~` environment entries (the
    /// server's own environment is never used).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Which stored secret serves a secret the pipeline names
    /// (`{"DEPLOY_TOKEN": "PROD_DEPLOY_TOKEN"}`); unnamed ones use their own name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, String>,
    /// What the run deploys, and its checked payload (a deploy marker's run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy: Option<DeployRequest>,
    /// The run this entry sends on, paused at its approval gates (the
    /// entry's own run: a later attempt of it starts afresh).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<RunId>,
    /// The run of another pipeline whose end started this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<RunId>,
    /// The pull request it builds (its head commit is `git_ref`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_request: Option<sentinel_api::PullRequestDoc>,
    /// What its trigger tells it (`${trigger.version}` …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub trigger_values: BTreeMap<String, String>,
}

impl RunSpec {
    /// A deploy run of `repo`'s `pipeline` at `git_ref`.
    pub fn deploy(
        repo: &str,
        pipeline: Option<&str>,
        git_ref: &str,
        deploy: DeployRequest,
    ) -> Self {
        Self {
            repo: repo.to_string(),
            pipeline: pipeline.map(str::to_string),
            git_ref: git_ref.to_string(),
            deploy: Some(deploy),
            ..Self::default()
        }
    }
}

/// A deploy run's facts and the payload it unpacks into `deploy/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployRequest {
    pub facts: sentinel_api::DeployFacts,
    /// Its deployment; a marker's checked payload is kept as
    /// `<state>/payloads/<deployment>.tar.gz` (a re-run deploys it again).
    pub deployment: String,
    /// A marker's payload file name (`<domain>-<environment>-<app>-<version>.tar.gz`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// A promotion's run: its published files and outputs go in `deploy/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_run: Option<RunId>,
}

pub(crate) fn parse_run_id(id: &str) -> Result<RunId, ApiError> {
    id.parse()
        .map_err(|e| ApiError::bad_request(format!("{e}")))
}

#[derive(Debug, Deserialize)]
pub(crate) struct ListQuery {
    #[serde(default = "default_limit")]
    limit: usize,
    /// The last id of the previous page.
    before: Option<String>,
    /// Only the runs of this pipeline.
    pipeline: Option<String>,
}

fn default_limit() -> usize {
    50
}

/// The runs list: each stored run document served as it is stored (never
/// decoded and encoded again), newest first.
pub(crate) async fn list_runs(
    State(s): St,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Result<axum::response::Response, ApiError> {
    s.authorize(&headers, Scope::Read)?;
    let before = q.before.as_deref().map(parse_run_id).transpose()?;
    let limit = q.limit.clamp(1, 500);
    let store = s.store.clone();
    let b = before.clone();
    let pipeline = q.pipeline.clone();
    let (runs, queued) = tokio::task::spawn_blocking(move || {
        let runs = match &pipeline {
            Some(p) => store.pipeline_page_raw(p, b.as_ref(), limit, PIPELINE_SCAN)?,
            None => store.runs_page_raw(b.as_ref(), limit)?,
        };
        // The first page also names the runs accepted but not started.
        let mut queued = match b {
            None => store.unstarted(MAX_QUEUED_LISTED)?,
            Some(_) => Vec::new(),
        };
        if let Some(p) = &pipeline {
            queued.retain(|e| &e.pipeline == p);
        }
        Ok::<_, sentinel_engine::ports::StorageError>((runs, queued))
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    let next = (runs.len() == limit).then(|| runs.last().map(|(id, _)| id.clone()));
    let queued: Vec<Value> = queued.iter().map(queued_view).collect();
    let mut body = Vec::with_capacity(runs.iter().map(|(_, d)| d.len() + 1).sum::<usize>() + 64);
    body.extend_from_slice(b"{\"runs\":[");
    for (i, (_, doc)) in runs.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(doc);
    }
    body.extend_from_slice(b"],\"next\":");
    serde_json::to_writer(&mut body, &next.flatten()).map_err(ApiError::internal)?;
    body.extend_from_slice(b",\"queued\":");
    serde_json::to_writer(&mut body, &queued).map_err(ApiError::internal)?;
    body.push(b'}');
    let headers = [(axum::http::header::CONTENT_TYPE, "application/json")];
    Ok(axum::response::IntoResponse::into_response((headers, body)))
}

/// The most runs a pipeline's list looks through for one page.
const PIPELINE_SCAN: usize = 50_000;

/// The most not-yet-started runs the list names.
const MAX_QUEUED_LISTED: usize = 100;

/// A run accepted but not started, as the API shows it.
fn queued_view(e: &QueueEntry) -> Value {
    json!({
        "id": e.run_id,
        "pipeline": e.pipeline,
        "status": "queued",
        "attempt": e.attempt,
        "created": e.enqueued,
        "trigger": e.trigger,
        "stages": [],
    })
}

pub(crate) async fn show_run(
    State(s): St,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    s.authorize(&headers, Scope::Read)?;
    let id = parse_run_id(&id)?;
    let Some(run) = s.store.get_run(&id).await.map_err(ApiError::internal)? else {
        // Accepted but not started: the queue knows it.
        return match RunQueue::get(&s.store, &id)
            .await
            .map_err(ApiError::internal)?
        {
            Some(e) => Ok(Json(json!({ "run": queued_view(&e), "stages": [] }))),
            None => Err(ApiError::not_found(format!("no run {id}"))),
        };
    };
    let stages = s.store.get_stages(&id).await.map_err(ApiError::internal)?;
    Ok(Json(
        json!({ "run": with_stages(run, &stages), "stages": stages }),
    ))
}

/// The run's stage entries brought up to date from the stage documents
/// (the stored run document changes at run-level events only).
pub(crate) fn with_stages(mut run: RunDoc, stages: &[StageDoc]) -> RunDoc {
    run.refresh_stages(stages);
    run
}

/// `POST /api/v1/runs`: a run of a configured repository at a ref.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TriggerRequest {
    /// A repository named in the server's configuration.
    repo: String,
    /// A branch, tag or commit.
    #[serde(rename = "ref", default = "default_ref")]
    git_ref: String,
    /// Values for the pipeline's `NAME: ~` environment entries.
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// Pipeline secret name → stored secret name.
    #[serde(default)]
    secrets: BTreeMap<String, String>,
    /// One of the repository's named pipelines (required when it has them).
    #[serde(default)]
    pipeline: Option<String>,
}

/// Environment and secret names: letters, digits and `_`, not starting with a digit.
pub(crate) fn check_name(what: &str, name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "`{name}` is not a {what} name (letters, digits and _, not starting with a digit)"
        )))
    }
}

fn default_ref() -> String {
    "HEAD".into()
}

impl AppState {
    pub(crate) fn check_repo(&self, repo: &str) -> Result<(), ApiError> {
        if self.config.repos.contains_key(repo) {
            return Ok(());
        }
        Err(ApiError::bad_request(format!(
            "unknown repository `{repo}`: the server runs only the repositories in its configuration ({})",
            self.config
                .repos
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }

    /// The queue entry of a new run of `spec`.
    pub fn entry(&self, spec: &RunSpec, trigger: Trigger) -> QueueEntry {
        QueueEntry {
            run_id: new_run_id(),
            pipeline: spec.pipeline.clone().unwrap_or_else(|| spec.repo.clone()),
            trigger,
            request: serde_json::to_value(spec).unwrap_or(Value::Null),
            attempt: 1,
            enqueued: Utc::now(),
            claim: None,
        }
    }

    /// Queues a run durably, then wakes the worker.
    pub(crate) async fn enqueue(&self, entry: &QueueEntry) -> Result<(), ApiError> {
        self.room()?;
        self.store.enqueue(entry).await.map_err(not_queued)?;
        self.metrics.accepted(&entry.run_id, entry.enqueued);
        self.control.queued();
        Ok(())
    }

    /// 503 when the state folder's disk is short of its reserve.
    pub(crate) fn room(&self) -> Result<(), ApiError> {
        match self.disk.as_ref().and_then(|d| d.short()) {
            Some(why) => Err(ApiError::unavailable(why)),
            None => Ok(()),
        }
    }

    /// Queues a run asked for through the API; the 202 answer.
    async fn queue_api(
        &self,
        spec: &RunSpec,
        caller: &crate::Caller,
    ) -> Result<(StatusCode, Json<Value>), ApiError> {
        let trigger = Trigger {
            kind: TriggerKind::Api,
            by: caller.name(),
        };
        let entry = self.entry(spec, trigger);
        self.enqueue(&entry).await?;
        Ok((
            StatusCode::ACCEPTED,
            Json(json!({ "id": entry.run_id, "status": "queued" })),
        ))
    }
}

pub(crate) async fn trigger(
    State(s): St,
    headers: HeaderMap,
    body: Result<Json<TriggerRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let caller = s.authorize(&headers, Scope::Trigger)?;
    let Json(req) = body?;
    s.check_repo(&req.repo)?;
    crate::check_event(
        &s.config.repos,
        &req.repo,
        req.pipeline.as_deref(),
        crate::filters::Event::Manual,
    )
    .map_err(ApiError::bad_request)?;
    for k in req.env.keys() {
        check_name("variable", k)?;
    }
    for (k, v) in &req.secrets {
        check_name("secret", k)?;
        check_name("secret", v)?;
    }
    let spec = RunSpec {
        repo: req.repo,
        pipeline: req.pipeline,
        git_ref: req.git_ref,
        env: req.env,
        secrets: req.secrets,
        ..RunSpec::default()
    };
    s.queue_api(&spec, &caller).await
}

pub(crate) async fn cancel(
    State(s): St,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let caller = s.authorize(&headers, Scope::Trigger)?;
    let by = caller.name().unwrap_or_else(|| "anonymous".into());
    let id = parse_run_id(&id)?;
    match s.control.cancel(&id).await.map_err(ApiError::internal)? {
        Cancelled::Running => Ok((
            StatusCode::ACCEPTED,
            Json(json!({ "id": id, "status": "cancelling" })),
        )),
        Cancelled::Withdrawn => Ok((
            StatusCode::OK,
            Json(json!({ "id": id, "status": "cancelled" })),
        )),
        Cancelled::NotHere => match s.store.get_run(&id).await.map_err(ApiError::internal)? {
            Some(run)
                if run.status == sentinel_api::RunStatus::WaitingApproval
                    && crate::deploys::cancel_paused(&s.store, &id, &by)
                        .await
                        .map_err(ApiError::internal)? =>
            {
                s.deploys.changed.touch();
                s.control.queued();
                Ok((
                    StatusCode::ACCEPTED,
                    Json(json!({ "id": id, "status": "cancelling" })),
                ))
            }
            Some(run) => Err(ApiError::conflict(format!(
                "run {id} is {} and cannot be cancelled",
                run.status
            ))),
            None => Err(ApiError::not_found(format!("no run {id}"))),
        },
    }
}

/// `POST /api/v1/runs/{id}/rerun`, optionally `{"from": "stage"}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RerunRequest {
    from: Option<String>,
}

pub(crate) async fn rerun(
    State(s): St,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Option<Json<RerunRequest>>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let caller = s.authorize(&headers, Scope::Trigger)?;
    let id = parse_run_id(&id)?;
    let req = body.map(|Json(b)| b).unwrap_or_default();
    let original = s
        .store
        .request_of(&id)
        .map_err(ApiError::internal)?
        .ok_or_else(|| {
            ApiError::not_found(format!("no run {id} queued by this server to re-run"))
        })?;
    let mut spec: RunSpec = serde_json::from_value(original.request.clone())
        .map_err(|e| ApiError::internal(format!("run {id}'s stored request: {e}")))?;
    s.check_repo(&spec.repo)?;
    let run = s.store.get_run(&id).await.map_err(ApiError::internal)?;
    // The same commit as the run it repeats, when that run knew it.
    if let Some(commit) = run
        .as_ref()
        .and_then(|r| r.git.as_ref())
        .and_then(|g| g.commit.clone())
    {
        spec.git_ref = commit;
    }
    spec.rerun_of = Some(id.clone());
    spec.from = None;
    spec.resume = None;
    if let Some(from) = req.from {
        let from: StageName = from
            .parse()
            .map_err(|e| ApiError::bad_request(format!("{e}")))?;
        let run = run
            .filter(|r| r.status.is_final())
            .ok_or_else(|| ApiError::conflict(format!("run {id} has not ended")))?;
        let stage = run
            .stages
            .iter()
            .find(|st| st.name == from)
            .ok_or_else(|| ApiError::bad_request(format!("run {id} has no stage `{from}`")))?;
        if stage.status == StageStatus::Succeeded {
            return Err(ApiError::bad_request(format!(
                "stage `{from}` of run {id} succeeded: re-run from a stage that failed (or was skipped or cancelled)"
            )));
        }
        spec.from = Some(from);
    }
    s.queue_api(&spec, &caller).await
}

/// `POST /api/v1/runs/{id}/keep`, optionally `{"keep": false}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeepRequest {
    keep: bool,
}

pub(crate) async fn keep(
    State(s): St,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Option<Json<KeepRequest>>,
) -> Result<Json<Value>, ApiError> {
    s.authorize(&headers, Scope::Trigger)?;
    let id = parse_run_id(&id)?;
    let keep = body.is_none_or(|Json(b)| b.keep);
    let known = s
        .store
        .get_run(&id)
        .await
        .map_err(ApiError::internal)?
        .is_some()
        || s.store
            .request_of(&id)
            .map_err(ApiError::internal)?
            .is_some();
    if !known {
        return Err(ApiError::not_found(format!("no run {id}")));
    }
    s.store
        .set_keep(&id, keep)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(json!({ "id": id, "keep": keep })))
}

/// A run that could not be written to the queue: the client may try again
/// (a full disk, a store that could not write), so 503, saying why.
pub(crate) fn not_queued(e: sentinel_engine::StorageError) -> ApiError {
    ApiError::unavailable(format!("the run could not be queued: {e}"))
}
