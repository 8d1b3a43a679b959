//! Commit statuses back to GitHub (`[github]` in the server's config): a
//! run of a repository with `github = "owner/name"` marks its commit
//! `pending` when it starts and `success`, `failure` or `error` when it
//! ends, with a link to the run in the web app and a context per pipeline
//! (`sentinel/<pipeline>`), through the GitHub REST API with a token from
//! the secret store. Statuses wait in the state folder and a sender posts
//! them in order, trying again (1 s, 2 s, … up to 30 s apart) while GitHub
//! cannot be reached or answers 5xx, across restarts: a slow or failing
//! call never delays or fails a run. A 4xx answer drops the status, said in
//! the log and `/metrics`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use sentinel_api::{RunDoc, RunId, RunStatus};
use sentinel_engine::ports::Store as _;
use sentinel_server::metrics::Metrics;
use sentinel_server::{RepoConfig, RunSpec};
use sentinel_store::SledStore;
use sentinel_store::secrets::SecretsKey;
use sentinel_store::statuses::CommitStatus;

/// `[github]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GithubSection {
    /// The REST API's base URL (GitHub Enterprise: `https://HOST/api/v3`).
    #[serde(default = "default_api")]
    pub api: String,
    /// The stored secret (`sentinel secret set NAME`) holding a token that
    /// may write commit statuses.
    pub token_secret: String,
    /// Where the web app is reached, for the statuses' links (default:
    /// the server's own address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
}

fn default_api() -> String {
    "https://api.github.com".into()
}

/// What [`Statuses::tell`] heard: a run, and whether it ended.
pub type Heard = tokio::sync::mpsc::UnboundedReceiver<(RunId, bool)>;

/// How many times a status is tried before it is dropped (about a quarter
/// of an hour): one GitHub never takes must not hold back the others.
const MOST_TRIES: u32 = 30;

/// The statuses of a server's runs: queued as runs start and end (in the
/// order [`Statuses::tell`] hears of them), sent by [`Statuses::send`].
pub struct Statuses {
    store: SledStore,
    config: GithubSection,
    repos: BTreeMap<String, RepoConfig>,
    secrets_key: Option<Arc<SecretsKey>>,
    metrics: Arc<Metrics>,
    http: reqwest::Client,
    link: String,
    wake: Notify,
    events: tokio::sync::mpsc::UnboundedSender<(RunId, bool)>,
}

impl Statuses {
    pub fn new(
        store: SledStore,
        config: GithubSection,
        repos: BTreeMap<String, RepoConfig>,
        secrets_key: Option<Arc<SecretsKey>>,
        metrics: Arc<Metrics>,
        server_url: &str,
    ) -> anyhow::Result<(Arc<Self>, Heard)> {
        let (events, heard) = tokio::sync::mpsc::unbounded_channel();
        let link = config
            .public_url
            .clone()
            .unwrap_or_else(|| server_url.to_string())
            .trim_end_matches('/')
            .to_string();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .user_agent(concat!("sentinel/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let me = Arc::new(Self {
            store,
            config,
            repos,
            secrets_key,
            metrics,
            http,
            link,
            wake: Notify::new(),
            events,
        });
        Ok((me, heard))
    }

    /// Hears that run `run` started (`ended`: ended, or paused); never waits.
    pub fn tell(&self, run: &RunId, ended: bool) {
        let _ = self.events.send((run.clone(), ended));
    }

    /// Queues the statuses of what [`Statuses::tell`] heard, in order, until
    /// `stop`.
    pub async fn record(self: Arc<Self>, mut heard: Heard, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                e = heard.recv() => match e {
                    Some((run, ended)) => self.note(&run, ended).await,
                    None => return,
                },
            }
        }
    }

    /// Queues the status of run `run` (started: `pending`; ended: as it
    /// ended), when its repository is on GitHub and its commit is known.
    async fn note(&self, run: &RunId, ended: bool) {
        let Ok(Some(doc)) = self.store.get_run(run).await else {
            return;
        };
        let Ok(Some(entry)) = self.store.request_of(run) else {
            return;
        };
        let Ok(spec) = serde_json::from_value::<RunSpec>(entry.request) else {
            return;
        };
        let Some(repo) = self.repos.get(&spec.repo).and_then(|r| r.github.clone()) else {
            return;
        };
        let Some(sha) = doc.git.as_ref().and_then(|g| g.commit.clone()) else {
            return;
        };
        let (state, description) = if ended {
            state_of(&doc)
        } else {
            ("pending", "running".to_string())
        };
        let status = CommitStatus {
            repo,
            sha,
            state: state.into(),
            target_url: format!("{}/#/run/{}", self.link, doc.id),
            description: clip(&description, 140),
            context: format!("sentinel/{}", entry.pipeline),
            tries: 0,
            not_before: None,
        };
        match self.store.push_status(&status).await {
            Ok(()) => self.wake.notify_one(),
            Err(e) => tracing::warn!(run = %run, "cannot queue its commit status: {e}"),
        }
    }

    /// Sends the waiting statuses, oldest first, until `stop`.
    pub async fn send(self: Arc<Self>, stop: CancellationToken) {
        loop {
            let wait = match self.store.next_status(Utc::now()) {
                Ok(Some((key, status))) => {
                    self.send_one(&key, status).await;
                    continue;
                }
                Ok(None) => Duration::from_secs(1),
                Err(e) => {
                    tracing::warn!("cannot read the waiting commit statuses: {e}");
                    Duration::from_secs(5)
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn send_one(&self, key: &[u8], mut status: CommitStatus) {
        let outcome = match self.token() {
            Ok(token) => self.post(&status, &token).await,
            Err(why) => Err((false, why)),
        };
        let result = match outcome {
            Ok(()) => self.store.status_done(key).await,
            Err((true, why)) => {
                self.failed("refused");
                tracing::warn!(sha = %status.sha, context = %status.context, "GitHub refused a commit status, dropped: {why}");
                self.store.status_done(key).await
            }
            Err((false, why)) if status.tries + 1 >= MOST_TRIES => {
                self.failed("refused");
                tracing::warn!(sha = %status.sha, context = %status.context, "a commit status could not be sent in {MOST_TRIES} tries, dropped: {why}");
                self.store.status_done(key).await
            }
            Err((false, why)) => {
                self.failed("retried");
                status.tries += 1;
                let secs = 2u64.saturating_pow(status.tries.saturating_sub(1)).min(30);
                status.not_before = Some(Utc::now() + chrono::Duration::seconds(secs as i64));
                tracing::warn!(sha = %status.sha, tries = status.tries, "a commit status waits ({why}); trying again in {secs} s");
                self.store.status_again(key, &status).await
            }
        };
        if let Err(e) = result {
            tracing::warn!("cannot update the waiting commit statuses: {e}");
        }
    }

    fn failed(&self, kind: &str) {
        self.metrics
            .status_failures
            .get_or_create(&vec![("kind".into(), kind.into())])
            .inc();
    }

    fn token(&self) -> Result<String, String> {
        let key = self
            .secrets_key
            .as_ref()
            .ok_or("the server has no secrets key for the GitHub token")?;
        let name = &self.config.token_secret;
        let open = self
            .store
            .open_secrets(key, [name])
            .map_err(|e| e.to_string())?;
        open.get(name)
            .cloned()
            .ok_or_else(|| format!("secret `{name}` (the GitHub token) is not set"))
    }

    /// Posts one status: `Err((true, why))` when GitHub refused it for good.
    async fn post(&self, s: &CommitStatus, token: &str) -> Result<(), (bool, String)> {
        let url = format!(
            "{}/repos/{}/statuses/{}",
            self.config.api.trim_end_matches('/'),
            s.repo,
            s.sha
        );
        let body = serde_json::json!({
            "state": s.state,
            "target_url": s.target_url,
            "description": s.description,
            "context": s.context,
        });
        let res = self
            .http
            .post(&url)
            .bearer_auth(token)
            .header("accept", "application/vnd.github+json")
            .header("x-github-api-version", "2022-11-28")
            .json(&body)
            .send()
            .await
            .map_err(|e| (false, format!("cannot reach {url}: {e}")))?;
        let code = res.status();
        if code.is_success() {
            return Ok(());
        }
        let text = res.text().await.unwrap_or_default();
        let why = format!("{code}: {}", clip(&text, 200));
        // Rate limits and server errors pass; other 4xx do not.
        let permanent = code.is_client_error() && code.as_u16() != 429 && code.as_u16() != 403;
        Err((permanent, why))
    }
}

/// A run's status as GitHub's `state` and a description.
fn state_of(doc: &RunDoc) -> (&'static str, String) {
    let reason = doc.reason.clone().unwrap_or_default();
    match doc.status {
        RunStatus::Succeeded => (
            "success",
            format!(
                "succeeded in {}",
                doc.duration_ms
                    .map(|ms| format!("{:.1} s", ms as f64 / 1000.0))
                    .unwrap_or_else(|| "-".into())
            ),
        ),
        RunStatus::Failed => ("failure", format!("failed: {reason}")),
        RunStatus::Cancelled | RunStatus::Interrupted => {
            ("error", format!("{}: {reason}", doc.status))
        }
        RunStatus::WaitingApproval => ("pending", "waiting for an approval".into()),
        _ => ("pending", "running".into()),
    }
}

/// `s` cut to at most `n` characters.
fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        return s.to_string();
    }
    let mut out: String = s.chars().take(n.saturating_sub(1)).collect();
    out.push('…');
    out
}
