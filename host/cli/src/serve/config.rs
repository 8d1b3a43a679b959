//! The server's configuration: one TOML file, overridden by environment
//! variables, overridden by flags (clap reads both: each flag has its
//! `SENTINEL_*` variable). `sentinel serve --print-config` prints the result
//! — secret values are never part of it (they come from files or the
//! environment: the secrets key and the webhook secret).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;
use serde::{Deserialize, Serialize};

use sentinel_server::schedules::ScheduleConfig;
use sentinel_server::{ApiConfig, EnvironmentConfig, RepoConfig, WatcherConfig};

/// The configuration file's shape (every field optional; see [`Settings`]).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub state: Option<PathBuf>,
    pub results: Option<PathBuf>,
    pub runs: Option<usize>,
    pub jobs: Option<usize>,
    pub ready_namespaces: Option<usize>,
    pub max_attempts: Option<u32>,
    pub claim_seconds: Option<u64>,
    /// MiB kept free on the state folder's disk: below it new runs are
    /// refused (503) and queued runs wait (default 1024).
    pub min_free_mib: Option<u64>,
    pub log_format: Option<LogFormat>,
    pub secrets_key_file: Option<PathBuf>,
    pub github_webhook_secret_file: Option<PathBuf>,
    pub web: Option<PathBuf>,
    pub s3: Option<S3Section>,
    pub cache: Option<CacheSection>,
    #[serde(default)]
    pub api: Option<ApiConfig>,
    #[serde(default)]
    pub repos: BTreeMap<String, RepoConfig>,
    /// Deploy watchers, by name.
    #[serde(default)]
    pub watchers: BTreeMap<String, WatcherConfig>,
    /// Environments deploys go to, by name (promotion, approval).
    #[serde(default)]
    pub environments: BTreeMap<String, EnvironmentConfig>,
    /// Schedules, by name.
    #[serde(default)]
    pub schedules: BTreeMap<String, ScheduleConfig>,
    /// Commit statuses back to GitHub.
    #[serde(default)]
    pub github: Option<super::statuses::GithubSection>,
    /// Version watches, by name.
    #[serde(default)]
    pub versions: BTreeMap<String, super::versions::VersionWatch>,
    /// What a fork's pull request gets.
    #[serde(default)]
    pub pull_requests: Option<super::repo::PullRequestsSection>,
    /// Image registries every run may push to and pull from, and step
    /// registries its pipelines' steps come from.
    #[serde(default)]
    pub registries: BTreeMap<String, crate::registries::RegistryConfig>,
    /// The default step registry and the keys registry steps must be signed by.
    #[serde(default)]
    pub steps: crate::registries::StepsSection,
    /// Days an unpushed image a run made is kept after its run ended (0: forever).
    #[serde(default)]
    pub images_keep_days: Option<u64>,
    /// Which ended runs are removed, and how often it is looked at.
    #[serde(default)]
    pub retention: Option<RetentionSection>,
}

/// `[retention]`: runs older than `max_age` and past the newest `keep_last`
/// of their pipeline and branch are removed every `every` (see
/// `sentinel runs prune`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSection {
    /// `30d`, `12h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<usize>,
    /// How often a pass runs (default `1h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<String>,
}

impl RetentionSection {
    /// The policy and how often it is applied, checked.
    pub fn policy(
        &self,
    ) -> anyhow::Result<(sentinel_engine::retention::Policy, std::time::Duration)> {
        let d = |what: &str, v: &Option<String>| -> anyhow::Result<Option<std::time::Duration>> {
            v.as_deref()
                .map(|t| {
                    humantime::parse_duration(t)
                        .map_err(|e| anyhow::anyhow!("[retention] {what} = \"{t}\": {e}"))
                })
                .transpose()
        };
        let policy = sentinel_engine::retention::Policy {
            max_age: d("max_age", &self.max_age)?,
            keep_last: self.keep_last,
        };
        if !policy.is_set() {
            anyhow::bail!("[retention] says nothing to keep: set `max_age` and/or `keep_last`");
        }
        let every = d("every", &self.every)?.unwrap_or(std::time::Duration::from_secs(3600));
        Ok((policy, every))
    }
}

/// Where results go besides the local folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Section {
    /// `s3://bucket/prefix`.
    pub url: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    #[serde(default)]
    pub path_style: bool,
    /// A role the server assumes for its S3 access (one server per AWS
    /// account); the instance's own credentials ask STS for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
}

/// The cache of stages with `cache:`: a private S3 prefix (never inside
/// the results prefix, which may be a public website), else
/// `<state>/caches`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSection {
    /// `s3://bucket/prefix`; absent: the state folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default)]
    pub path_style: bool,
    /// Total size of a repository's entries, in MiB (least recently used go first).
    pub budget_mib: u64,
    /// Entries unused for this many days are removed.
    pub ttl_days: u64,
    /// A larger entry is not saved, in MiB.
    pub max_entry_mib: u64,
    /// The branch every branch's runs fall back on.
    pub default_branch: String,
}

impl Default for CacheSection {
    fn default() -> Self {
        let p = sentinel_engine::cache::CachePolicy::default();
        Self {
            url: None,
            endpoint: None,
            region: None,
            path_style: false,
            budget_mib: p.budget >> 20,
            ttl_days: p.ttl.as_secs() / 86_400,
            max_entry_mib: p.max_entry >> 20,
            default_branch: "main".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Flags of `sentinel serve` (each also read from its variable).
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The configuration file (TOML).
    #[arg(long, env = "SENTINEL_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "SENTINEL_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Most runs at once.
    #[arg(long, env = "SENTINEL_RUNS")]
    pub runs: Option<usize>,
    /// Most stages at once, per run.
    #[arg(long, env = "SENTINEL_JOBS")]
    pub jobs: Option<usize>,
    /// Attempts of a run whose server died while it ran (1: never again).
    #[arg(long, env = "SENTINEL_MAX_ATTEMPTS")]
    pub max_attempts: Option<u32>,
    /// Logs as text or JSON lines.
    #[arg(long, env = "SENTINEL_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Reads without a token.
    #[arg(long, env = "SENTINEL_PUBLIC_READ")]
    pub public_read: bool,
    /// A repository the server may run, `NAME=URL` (repeatable).
    #[arg(long = "repo", value_name = "NAME=URL")]
    pub repos: Vec<String>,
    /// The file holding the key that seals run secrets (or SENTINEL_SECRETS_KEY).
    #[arg(long, env = "SENTINEL_SECRETS_KEY_FILE")]
    pub secrets_key_file: Option<PathBuf>,
    /// The built web app to serve at `/` (default: `web/` beside the binary,
    /// or the nearest `dist/` above it).
    #[arg(long, env = "SENTINEL_WEB")]
    pub web: Option<PathBuf>,
    /// Publish results to `s3://bucket/prefix` too (credentials: the AWS chain).
    #[arg(long, env = "SENTINEL_S3")]
    pub s3: Option<String>,
    #[arg(long, env = "SENTINEL_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    #[arg(long, env = "SENTINEL_S3_REGION")]
    pub s3_region: Option<String>,
    #[arg(long, env = "SENTINEL_S3_PATH_STYLE")]
    pub s3_path_style: bool,
    /// Print the configuration in effect (TOML) and exit.
    #[arg(long)]
    pub print_config: bool,
    #[command(flatten)]
    pub executor: crate::context::ExecutorArgs,
}

/// The configuration in effect.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub listen: SocketAddr,
    pub state: PathBuf,
    pub results: PathBuf,
    pub runs: usize,
    pub jobs: usize,
    /// Network namespaces kept ready for `network: none` containers.
    pub ready_namespaces: usize,
    pub max_attempts: u32,
    pub claim_seconds: u64,
    pub min_free_mib: u64,
    pub log_format: LogFormat,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secrets_key_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub github_webhook_secret_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub web: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Section>,
    pub cache: CacheSection,
    pub api: ApiConfig,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub watchers: BTreeMap<String, WatcherConfig>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub environments: BTreeMap<String, EnvironmentConfig>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub schedules: BTreeMap<String, ScheduleConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub github: Option<super::statuses::GithubSection>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub versions: BTreeMap<String, super::versions::VersionWatch>,
    pub pull_requests: super::repo::PullRequestsSection,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub registries: BTreeMap<String, crate::registries::RegistryConfig>,
    pub steps: crate::registries::StepsSection,
    /// Days an unpushed image a run made is kept (0: forever).
    pub images_keep_days: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention: Option<RetentionSection>,
}

/// The built app beside the binary (`web/`) or in the nearest `dist/` above it.
fn default_web() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let beside = exe.parent()?.join("web");
    if beside.join("index.html").is_file() {
        return Some(beside);
    }
    exe.ancestors()
        .map(|a| a.join("dist"))
        .find(|d| d.join("index.html").is_file())
}

/// A watcher's settings that cannot work, said before the server starts.
fn check_watcher(name: &str, w: &WatcherConfig, api: &ApiConfig) -> anyhow::Result<()> {
    let at = |what: String| anyhow::anyhow!("[watchers.{name}]: {what}");
    if !sentinel_deploy::marker::app_ok(name) {
        return Err(at(
            "the name may hold letters, digits, `.`, `-` and `_`".into()
        ));
    }
    sentinel_server::check_event(
        &api.repos,
        &w.repo,
        w.pipeline.as_deref(),
        sentinel_server::filters::Event::Deploy,
    )
    .map_err(at)?;
    if !sentinel_deploy::marker::app_ok(&w.environment) {
        return Err(at(format!(
            "environment `{}` must be letters, digits, `.`, `-` and `_`",
            w.environment
        )));
    }
    for (what, url) in [("markers", &w.markers), ("payloads", &w.payloads)] {
        if url.starts_with("s3://") {
            sentinel_s3::S3Config::from_url(url).map_err(|e| at(format!("{what}: {e}")))?;
        } else if url.is_empty() {
            return Err(at(format!(
                "{what} is empty: give s3://bucket/prefix or a folder"
            )));
        }
    }
    if w.poll_seconds == 0 || w.max_payload_mib == 0 {
        return Err(at(
            "poll_seconds and max_payload_mib must be at least 1".into()
        ));
    }
    Ok(())
}

/// The schedules checked against the configured repositories.
fn schedules_of(
    schedules: &BTreeMap<String, ScheduleConfig>,
    api: &ApiConfig,
) -> anyhow::Result<Vec<sentinel_server::schedules::Schedule>> {
    schedules
        .iter()
        .map(|(name, s)| s.check(name, &api.repos).map_err(anyhow::Error::msg))
        .collect()
}

/// Reads a TOML file, naming the line and column of a mistake.
pub fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("configuration file {}", path.display()))?;
    toml::from_str(&text).map_err(|e| {
        let at = sentinel_pipeline::step::toml_position(&text, &e)
            .map(|(line, col)| format!(":{line}:{col}"))
            .unwrap_or_default();
        anyhow::anyhow!("{}{at}: {}", path.display(), e.message())
    })
}

impl Settings {
    /// File, then environment and flags, then defaults (`state_default` is
    /// the global `--state` or `<dir>/.sentinel`).
    pub fn resolve(
        args: &ServeArgs,
        state_flag: Option<PathBuf>,
        results_flag: Option<PathBuf>,
        project: &Path,
    ) -> anyhow::Result<Self> {
        let file = match &args.config {
            Some(p) => read_file(p)?,
            None => FileConfig::default(),
        };
        // Absolute: run folders are bind-mounted into containers.
        let state = std::path::absolute(
            state_flag
                .or(file.state.clone())
                .unwrap_or_else(|| project.join(".sentinel")),
        )?;
        let results = std::path::absolute(
            results_flag
                .or(file.results.clone())
                .unwrap_or_else(|| state.join("results")),
        )?;
        let mut api = file.api.clone().unwrap_or_default();
        api.public_read |= args.public_read;
        api.repos.extend(file.repos.clone());
        for r in &args.repos {
            let (name, url) = r
                .split_once('=')
                .with_context(|| format!("--repo `{r}`: expected NAME=URL"))?;
            api.repos.insert(
                name.to_string(),
                RepoConfig {
                    url: url.to_string(),
                    ..Default::default()
                },
            );
        }
        let s3 = match &args.s3 {
            Some(url) => Some(S3Section {
                url: url.clone(),
                endpoint: args.s3_endpoint.clone(),
                region: args.s3_region.clone(),
                path_style: args.s3_path_style,
                role_arn: None,
                external_id: None,
            }),
            None => file.s3.clone(),
        };
        if let Some(s3) = &s3 {
            sentinel_s3::S3Config::from_url(&s3.url).map_err(anyhow::Error::msg)?;
        }
        let cache = file.cache.clone().unwrap_or_default();
        if let Some(url) = &cache.url {
            let c = sentinel_s3::S3Config::from_url(url)
                .map_err(|e| anyhow::anyhow!("[cache] url: {e}"))?;
            if let Some(r) = s3
                .as_ref()
                .and_then(|s| sentinel_s3::S3Config::from_url(&s.url).ok())
                && r.bucket == c.bucket
                && (r.prefix.is_empty()
                    || c.prefix == r.prefix
                    || c.prefix.starts_with(&format!("{}/", r.prefix)))
            {
                anyhow::bail!(
                    "[cache] url `{url}` lies inside the results at `{}`; the results may be a public website, so the cache needs a prefix (or bucket) of its own",
                    s3.as_ref().map(|s| s.url.as_str()).unwrap_or_default()
                );
            }
        }
        for (name, w) in &file.watchers {
            check_watcher(name, w, &api)?;
        }
        sentinel_server::check_repos(&api.repos).map_err(anyhow::Error::msg)?;
        schedules_of(&file.schedules, &api)?;
        for (name, w) in &file.versions {
            w.check(name, &api.repos).map_err(anyhow::Error::msg)?;
        }
        for (name, e) in &file.environments {
            if !sentinel_deploy::marker::app_ok(name) {
                anyhow::bail!(
                    "[environments.{name}]: the name may hold letters, digits, `.`, `-` and `_`"
                );
            }
            sentinel_server::check_event(
                &api.repos,
                &e.repo,
                e.pipeline.as_deref(),
                sentinel_server::filters::Event::Deploy,
            )
            .map_err(|m| anyhow::anyhow!("[environments.{name}]: {m}"))?;
            if e.approval_timeout_hours == 0 {
                anyhow::bail!("[environments.{name}]: approval_timeout_hours must be at least 1");
            }
        }
        let jobs = args.jobs.or(file.jobs).unwrap_or(4).max(1);
        Ok(Self {
            listen: args
                .listen
                .or(file.listen)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
            state,
            results,
            runs: args.runs.or(file.runs).unwrap_or(2).max(1),
            jobs,
            ready_namespaces: file.ready_namespaces.unwrap_or((2 * jobs).min(16)),
            max_attempts: args.max_attempts.or(file.max_attempts).unwrap_or(1).max(1),
            claim_seconds: file.claim_seconds.unwrap_or(30).max(3),
            min_free_mib: file
                .min_free_mib
                .unwrap_or(sentinel_engine::disk::DiskReserve::DEFAULT >> 20),
            log_format: args
                .log_format
                .or(file.log_format)
                .unwrap_or(LogFormat::Text),
            secrets_key_file: args.secrets_key_file.clone().or(file.secrets_key_file),
            github_webhook_secret_file: file.github_webhook_secret_file,
            web: args.web.clone().or(file.web).or_else(default_web),
            s3,
            cache,
            api,
            watchers: file.watchers.clone(),
            environments: file.environments.clone(),
            schedules: file.schedules.clone(),
            github: file.github.clone(),
            versions: file.versions.clone(),
            pull_requests: file.pull_requests.clone().unwrap_or_default(),
            images_keep_days: file.images_keep_days.unwrap_or(7),
            retention: match &file.retention {
                Some(r) => {
                    r.policy()?;
                    Some(r.clone())
                }
                None => None,
            },
            registries: {
                crate::registries::check(&file.registries, true)
                    .map_err(|e| anyhow::anyhow!("[registries]: {e}"))?;
                file.registries.clone()
            },
            steps: {
                crate::registries::check_steps(&file.steps, &file.registries)
                    .map_err(|e| anyhow::anyhow!("[steps]: {e}"))?;
                file.steps.clone()
            },
        })
    }

    /// The schedules, checked.
    pub fn checked_schedules(&self) -> anyhow::Result<Vec<sentinel_server::schedules::Schedule>> {
        schedules_of(&self.schedules, &self.api)
    }

    /// The deploy watchers with their locations (S3 ones use the `[s3]`
    /// section's endpoint, region and addressing unless they name their own).
    pub async fn deploys(
        &self,
        state: &Path,
        changed: std::sync::Arc<sentinel_server::deploys::Changes>,
    ) -> anyhow::Result<sentinel_server::Deploys> {
        let mut list = BTreeMap::new();
        for (name, w) in &self.watchers {
            let markers = self.location(w, &w.markers).await?;
            let payloads = self.location(w, &w.payloads).await?;
            list.insert(
                name.clone(),
                std::sync::Arc::new(sentinel_server::Watcher::new(
                    name,
                    w.clone(),
                    markers,
                    payloads,
                )),
            );
        }
        Ok(sentinel_server::Deploys::new(
            self.environments.clone(),
            list,
            state.join("payloads"),
            changed,
        ))
    }

    async fn location(
        &self,
        w: &WatcherConfig,
        at: &str,
    ) -> anyhow::Result<std::sync::Arc<dyn sentinel_deploy::Location>> {
        if !at.starts_with("s3://") {
            let path = at.strip_prefix("file://").unwrap_or(at);
            return Ok(std::sync::Arc::new(sentinel_deploy::Folder::new(path)));
        }
        let s3 = self.s3.as_ref();
        let cfg = sentinel_s3::S3Config::at(
            at,
            w.endpoint
                .clone()
                .or_else(|| s3.and_then(|s| s.endpoint.clone())),
            w.region
                .clone()
                .or_else(|| s3.and_then(|s| s.region.clone())),
            w.path_style.unwrap_or(s3.is_some_and(|s| s.path_style)),
        )
        .map_err(anyhow::Error::msg)?;
        Ok(std::sync::Arc::new(sentinel_s3::S3Location::new(
            sentinel_s3::S3Sink::connect(cfg).await,
        )))
    }

    /// The cache stages with `cache:` use.
    pub async fn cache_store(
        &self,
        state: &Path,
    ) -> anyhow::Result<std::sync::Arc<sentinel_engine::cache::Cache>> {
        use sentinel_engine::cache::{Cache, CachePolicy};
        let c = &self.cache;
        let policy = CachePolicy {
            budget: c.budget_mib << 20,
            ttl: std::time::Duration::from_secs(c.ttl_days * 86_400),
            max_entry: c.max_entry_mib << 20,
        };
        let Some(url) = &c.url else {
            return Ok(crate::context::local_cache(state, policy));
        };
        let cfg =
            sentinel_s3::S3Config::at(url, c.endpoint.clone(), c.region.clone(), c.path_style)
                .map_err(anyhow::Error::msg)?;
        let backend = sentinel_s3::S3Cache::new(sentinel_s3::S3Sink::connect(cfg).await);
        Ok(std::sync::Arc::new(Cache::new(
            std::sync::Arc::new(backend),
            policy,
        )))
    }

    /// The S3 configuration, if results also go to a bucket.
    pub fn s3_config(&self) -> anyhow::Result<Option<sentinel_s3::S3Config>> {
        let Some(s) = &self.s3 else { return Ok(None) };
        let cfg =
            sentinel_s3::S3Config::at(&s.url, s.endpoint.clone(), s.region.clone(), s.path_style)
                .map_err(anyhow::Error::msg)?;
        Ok(Some(sentinel_s3::S3Config {
            role_arn: s.role_arn.clone(),
            external_id: s.external_id.clone(),
            ..cfg
        }))
    }

    /// The secrets key: `SENTINEL_SECRETS_KEY`, else the key file.
    pub fn secrets_key(&self) -> anyhow::Result<Option<sentinel_store::secrets::SecretsKey>> {
        let text = match std::env::var("SENTINEL_SECRETS_KEY") {
            Ok(v) => v,
            Err(_) => match &self.secrets_key_file {
                Some(p) => std::fs::read_to_string(p)
                    .with_context(|| format!("secrets key file {}", p.display()))?,
                None => return Ok(None),
            },
        };
        Ok(Some(
            sentinel_store::secrets::SecretsKey::parse(&text).context("the secrets key")?,
        ))
    }

    /// The GitHub webhook secret: `SENTINEL_GITHUB_WEBHOOK_SECRET`, else its file.
    pub fn github_secret(&self) -> anyhow::Result<Option<Vec<u8>>> {
        if let Ok(v) = std::env::var("SENTINEL_GITHUB_WEBHOOK_SECRET") {
            return Ok(Some(v.into_bytes()));
        }
        match &self.github_webhook_secret_file {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("webhook secret file {}", p.display()))?;
                Ok(Some(
                    text.trim_end_matches(['\n', '\r']).as_bytes().to_vec(),
                ))
            }
            None => Ok(None),
        }
    }

    /// The configuration as TOML.
    pub fn to_toml(&self) -> anyhow::Result<String> {
        Ok(toml::to_string_pretty(self)?)
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;

impl Settings {
    /// The room kept free on the state folder's disk.
    pub fn disk_reserve(&self) -> sentinel_engine::disk::DiskReserve {
        sentinel_engine::disk::DiskReserve {
            dir: self.state.clone(),
            reserve: self.min_free_mib << 20,
        }
    }
}
