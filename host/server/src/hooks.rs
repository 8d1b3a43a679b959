//! `POST /hooks/github`: GitHub push webhooks. The body is checked against
//! `X-Hub-Signature-256` (HMAC-SHA256 with the configured secret, compared
//! in constant time) before anything in it is read; `sha1=` signatures are
//! refused. A push to a configured repository queues one run of the pushed
//! commit, keyed by `X-GitHub-Delivery`: a redelivery gets the same run id
//! and never a second run.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::{Json, response::IntoResponse};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Sha256;

use sentinel_api::{Trigger, TriggerKind};

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
    after: String,
    #[serde(default)]
    deleted: bool,
    repository: Repository,
}

#[derive(Debug, Deserialize)]
struct Repository {
    full_name: String,
    #[serde(default)]
    clone_url: Option<String>,
}

impl AppState {
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
    if event != "push" {
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
    // A repository with named pipelines runs each of them — but those that
    // run after another pipeline, which that pipeline's runs start.
    let pipelines: Vec<Option<String>> = match s.config.repos.get(&repo) {
        Some(r) if !r.pipelines.is_empty() => r
            .pipelines
            .iter()
            .filter(|(_, p)| p.after.is_none())
            .map(|(n, _)| Some(n.clone()))
            .collect(),
        Some(r) if r.after.is_some() => Vec::new(),
        _ => vec![None],
    };
    let mut runs = Vec::new();
    let mut redelivery = true;
    for pipeline in pipelines {
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
        let (id, fresh) = s
            .store
            .enqueue_once(&key, &entry)
            .await
            .map_err(ApiError::internal)?;
        if fresh {
            s.metrics.accepted(&id, entry.enqueued);
            s.control.queued();
        }
        redelivery &= !fresh;
        runs.push(json!({ "pipeline": entry.pipeline, "id": id }));
    }
    let body: Value = json!({
        "id": runs.first().map(|r| r["id"].clone()),
        "runs": runs,
        "status": "queued",
        "redelivery": redelivery,
    });
    Ok((StatusCode::ACCEPTED, Json(body)))
}
