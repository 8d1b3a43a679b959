//! `POST /hooks/github`: GitHub push webhooks. The body is checked against
//! `X-Hub-Signature-256` (HMAC-SHA256 with the configured secret, compared
//! in constant time) before anything in it is read; `sha1=` signatures are
//! refused. A push to a configured repository queues a run of the pushed
//! commit for each of its pipelines whose filters take it, keyed by
//! `X-GitHub-Delivery`: a redelivery gets the same run ids and never a
//! second run. A pipeline whose filters do not take the push is recorded as
//! ignored, with the reason (`GET /api/v1/ignored`).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::{Json, response::IntoResponse};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Sha256;

use sentinel_api::{Trigger, TriggerKind};

use crate::filters::Changed;
use crate::runs::{RunSpec, St};
use crate::{ApiError, AppState};

/// The `X-Hub-Signature-256` value of `body` under `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn verify(secret: &[u8], headers: &HeaderMap, body: &[u8]) -> Result<(), ApiError> {
    let given = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            ApiError::unauthorized(if headers.contains_key("x-hub-signature") {
                "only X-Hub-Signature-256 (sha256=…) signatures are accepted, not sha1"
            } else {
                "the X-Hub-Signature-256 header is missing"
            })
        })?;
    let hex_sig = given.strip_prefix("sha256=").ok_or_else(|| {
        ApiError::unauthorized("the signature must be `sha256=<hex>` (sha1 is not accepted)")
    })?;
    let sig = hex::decode(hex_sig)
        .map_err(|_| ApiError::unauthorized("the signature is not hexadecimal"))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    // Constant time.
    mac.verify_slice(&sig)
        .map_err(|_| ApiError::unauthorized("the signature does not match the body"))
}

#[derive(Debug, Deserialize)]
struct Push {
    #[serde(rename = "ref")]
    git_ref: String,
    #[serde(default)]
    before: String,
    after: String,
    #[serde(default)]
    deleted: bool,
    #[serde(default)]
    forced: bool,
    #[serde(default)]
    commits: Vec<Commit>,
    repository: Repository,
}

#[derive(Debug, Default, Deserialize)]
struct Commit {
    #[serde(default)]
    added: Vec<String>,
    #[serde(default)]
    removed: Vec<String>,
    #[serde(default)]
    modified: Vec<String>,
}

/// How many commits GitHub's push payload lists at most.
const PAYLOAD_COMMITS: usize = 20;

impl Push {
    /// The files the push changed, when its payload lists them all.
    fn changed(&self) -> Changed {
        if self.before.is_empty() || self.before.bytes().all(|b| b == b'0') {
            return Changed::Unknown("a new branch or tag: no range to compare");
        }
        if self.forced {
            return Changed::Unknown("a forced push: the range may not be linear");
        }
        if self.commits.is_empty() || self.commits.len() >= PAYLOAD_COMMITS {
            return Changed::Unknown("the payload does not list every commit");
        }
        let mut files: Vec<String> = self
            .commits
            .iter()
            .flat_map(|c| c.added.iter().chain(&c.removed).chain(&c.modified))
            .cloned()
            .collect();
        files.sort();
        files.dedup();
        Changed::Files(files)
    }
}

#[derive(Debug, Deserialize)]
struct Repository {
    full_name: String,
    #[serde(default)]
    clone_url: Option<String>,
}

/// A `pull_request` event.
#[derive(Debug, Deserialize)]
struct PullRequestEvent {
    action: String,
    number: u64,
    pull_request: PullRequest,
    repository: Repository,
}

#[derive(Debug, Deserialize)]
struct PullRequest {
    head: Branch,
    base: Branch,
}

#[derive(Debug, Deserialize)]
struct Branch {
    #[serde(rename = "ref")]
    git_ref: String,
    sha: String,
    /// Absent when the fork was deleted.
    #[serde(default)]
    repo: Option<Repository>,
}

impl AppState {
    /// The pipelines of `repo` a webhook runs: each named one — but those
    /// that run after another pipeline, which that pipeline's runs start —
    /// or its one pipeline.
    fn hooked_pipelines(&self, repo: &str) -> Vec<Option<String>> {
        match self.config.repos.get(repo) {
            Some(r) if !r.pipelines.is_empty() => r
                .pipelines
                .iter()
                .filter(|(_, p)| p.after.is_none())
                .map(|(n, _)| Some(n.clone()))
                .collect(),
            Some(r) if r.after.is_some() => Vec::new(),
            _ => vec![None],
        }
    }

    /// Queues a webhook's run once per `key`; a fresh one supersedes the
    /// older runs auto-cancel lets it. The run's id, and whether it is new.
    async fn queue_hooked(
        &self,
        key: &str,
        entry: &sentinel_engine::ports::QueueEntry,
        spec: &RunSpec,
    ) -> Result<(sentinel_api::RunId, bool), ApiError> {
        self.room()?;
        let (id, fresh) = self
            .store
            .enqueue_once(key, entry)
            .await
            .map_err(crate::runs::not_queued)?;
        if fresh {
            self.metrics.accepted(&id, entry.enqueued);
            self.control.queued();
            if crate::autocancel::applies(self, spec) {
                crate::autocancel::supersede(self, entry, spec).await;
            }
        }
        Ok((id, fresh))
    }

    /// Records that webhook `event` (delivery, repository, pipeline, ref)
    /// started nothing, and why; its entry in the answer.
    async fn ignore(
        &self,
        event: &str,
        (delivery, repo, pipeline, git_ref): (&str, &str, &Option<String>, &str),
        reason: String,
    ) -> Result<Value, ApiError> {
        let record = sentinel_store::ignored::Ignored {
            at: chrono::Utc::now(),
            event: event.into(),
            delivery: Some(delivery.into()),
            repo: repo.into(),
            pipeline: pipeline.clone(),
            git_ref: git_ref.into(),
            reason: reason.clone(),
        };
        self.store
            .record_ignored(&record)
            .await
            .map_err(ApiError::internal)?;
        Ok(json!({ "pipeline": pipeline.as_deref().unwrap_or(repo), "reason": reason }))
    }

    /// The configured repository a push is for.
    fn repo_of(&self, r: &Repository) -> Option<String> {
        self.config
            .repos
            .iter()
            .find(|(_, c)| {
                c.github.as_deref() == Some(r.full_name.as_str())
                    || r.clone_url.as_deref() == Some(c.url.as_str())
            })
            .map(|(name, _)| name.clone())
    }
}

pub(crate) async fn github(
    State(s): St,
    headers: HeaderMap,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let Some(secret) = &s.github_secret else {
        return Err(ApiError::unauthorized(
            "this server has no GitHub webhook secret configured",
        ));
    };
    verify(secret, &headers, &body)?;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let event = header("x-github-event").unwrap_or_default();
    if event == "ping" {
        return Ok((StatusCode::OK, Json(json!({ "status": "pong" }))));
    }
    if event != "push" && event != "pull_request" {
        return Ok((
            StatusCode::ACCEPTED,
            Json(
                json!({ "status": "ignored", "reason": format!("event `{event}` does not start runs") }),
            ),
        ));
    }
    let delivery = header("x-github-delivery")
        .filter(|d| !d.is_empty() && d.len() <= 128)
        .ok_or_else(|| ApiError::bad_request("the X-GitHub-Delivery header is missing"))?
        .to_string();
    if event == "pull_request" {
        return pull_request(&s, &delivery, &body).await;
    }
    let push: Push = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("not a push event: {e}")))?;
    if push.deleted {
        return Ok((
            StatusCode::ACCEPTED,
            Json(json!({ "status": "ignored", "reason": "a deleted ref is not run" })),
        ));
    }
    let repo = s.repo_of(&push.repository).ok_or_else(|| {
        ApiError::bad_request(format!(
            "repository `{}` is not in this server's configuration",
            push.repository.full_name
        ))
    })?;
    let pipelines = s.hooked_pipelines(&repo);
    let mut runs = Vec::new();
    let mut ignored = Vec::new();
    let mut redelivery = true;
    let changed = push.changed();
    for pipeline in pipelines {
        let on = s
            .config
            .repos
            .get(&repo)
            .and_then(|r| r.on_of(pipeline.as_deref()));
        if let Some(Err(reason)) = on.map(|on| on.push(&push.git_ref, &changed)) {
            let at = (&delivery[..], &repo[..], &pipeline, &push.git_ref[..]);
            ignored.push(s.ignore("push", at, reason).await?);
            continue;
        }
        let spec = RunSpec {
            repo: repo.clone(),
            pipeline: pipeline.clone(),
            git_ref: push.after.clone(),
            branch: push.git_ref.strip_prefix("refs/heads/").map(str::to_string),
            ..RunSpec::default()
        };
        let entry = s.entry(
            &spec,
            Trigger {
                kind: TriggerKind::Webhook,
                by: Some(format!("github:{delivery}")),
            },
        );
        // One run per delivery and pipeline, whatever GitHub redelivers.
        let key = match &pipeline {
            Some(p) => format!("github:{delivery}:{p}"),
            None => format!("github:{delivery}"),
        };
        let (id, fresh) = s.queue_hooked(&key, &entry, &spec).await?;
        redelivery &= !fresh;
        runs.push(json!({ "pipeline": entry.pipeline, "id": id }));
    }
    let body: Value = json!({
        "id": runs.first().map(|r| r["id"].clone()),
        "status": if runs.is_empty() { "ignored" } else { "queued" },
        "runs": runs,
        "ignored": ignored,
        "redelivery": redelivery && !runs.is_empty(),
    });
    Ok((StatusCode::ACCEPTED, Json(body)))
}

#[derive(Debug, Deserialize)]
pub(crate) struct IgnoredQuery {
    limit: Option<usize>,
}

/// `GET /api/v1/ignored`: the newest events that started nothing, and why.
pub(crate) async fn list_ignored(
    State(s): St,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<IgnoredQuery>,
) -> Result<Json<Value>, ApiError> {
    s.authorize(&headers, sentinel_store::tokens::Scope::Read)?;
    let limit = q
        .limit
        .unwrap_or(100)
        .clamp(1, sentinel_store::ignored::KEEP);
    let list = s.store.ignored(limit).map_err(ApiError::internal)?;
    Ok(Json(json!({ "ignored": list })))
}

/// A `pull_request` event: `opened`, `synchronize` and `reopened` run each
/// pipeline whose filters take pull requests (their `branches` read the
/// base branch) on the pull request's head commit. A fork's runs get no
/// secrets, write no cache, have no network and deploy nothing.
async fn pull_request(
    s: &AppState,
    delivery: &str,
    body: &[u8],
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let pr: PullRequestEvent = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("not a pull_request event: {e}")))?;
    if !matches!(pr.action.as_str(), "opened" | "synchronize" | "reopened") {
        let reason = format!("pull request action `{}` does not start runs", pr.action);
        return Ok((
            StatusCode::ACCEPTED,
            Json(json!({ "status": "ignored", "reason": reason })),
        ));
    }
    let repo = s.repo_of(&pr.repository).ok_or_else(|| {
        ApiError::bad_request(format!(
            "repository `{}` is not in this server's configuration",
            pr.repository.full_name
        ))
    })?;
    let head_repo = pr
        .pull_request
        .head
        .repo
        .as_ref()
        .map(|r| r.full_name.as_str());
    let fork = head_repo != Some(pr.repository.full_name.as_str());
    let doc = sentinel_api::PullRequestDoc {
        number: pr.number,
        head: match (fork, head_repo) {
            (true, Some(r)) => format!("{r}:{}", pr.pull_request.head.git_ref),
            _ => pr.pull_request.head.git_ref.clone(),
        },
        head_sha: pr.pull_request.head.sha.clone(),
        base: pr.pull_request.base.git_ref.clone(),
        fork,
    };
    let pipelines = s.hooked_pipelines(&repo);
    let mut runs = Vec::new();
    let mut ignored = Vec::new();
    for pipeline in pipelines {
        let on = s
            .config
            .repos
            .get(&repo)
            .and_then(|r| r.on_of(pipeline.as_deref()));
        let base = format!("refs/heads/{}", doc.base);
        let taken = on.map_or(Ok(()), |on| {
            on.takes(crate::filters::Event::PullRequest)
                .and_then(|()| on.base_branch(&base))
        });
        if let Err(reason) = taken {
            let head = format!("refs/pull/{}/head", doc.number);
            let at = (delivery, &repo[..], &pipeline, &head[..]);
            ignored.push(s.ignore("pull_request", at, reason).await?);
            continue;
        }
        let spec = RunSpec {
            repo: repo.clone(),
            pipeline: pipeline.clone(),
            git_ref: doc.head_sha.clone(),
            branch: Some(pr.pull_request.head.git_ref.clone()),
            pull_request: Some(doc.clone()),
            ..RunSpec::default()
        };
        let entry = s.entry(
            &spec,
            Trigger {
                kind: TriggerKind::PullRequest,
                by: Some(format!("github:{delivery} (#{} {})", doc.number, doc.head)),
            },
        );
        let key = format!("github:{delivery}:{}", entry.pipeline);
        let (id, _) = s.queue_hooked(&key, &entry, &spec).await?;
        runs.push(json!({ "pipeline": entry.pipeline, "id": id }));
    }
    let body = json!({
        "id": runs.first().map(|r| r["id"].clone()),
        "status": if runs.is_empty() { "ignored" } else { "queued" },
        "runs": runs,
        "ignored": ignored,
        "fork": fork,
    });
    Ok((StatusCode::ACCEPTED, Json(body)))
}
