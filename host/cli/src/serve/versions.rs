//! Version watches (`[versions.NAME]` in the server's config; dockercise's
//! "Timer": when a package's version changes, run the stage that updates
//! it): every `every_seconds` the server fetches a URL (a registry's JSON
//! API, a file), extracts a version with a jq filter (jaq), and when the
//! version differs from the one it saw last, queues one run of the
//! repository's pipeline with `${trigger.version}` and
//! `${trigger.previous_version}` — once per new version (an idempotency
//! key), with the version seen kept in the state folder across restarts.
//! The first version a watch sees is its starting point: it runs nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{Compiler, Ctx, Vars, data, unwrap_valr};
use jaq_json::Val;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use sentinel_api::{Trigger, TriggerKind};
use sentinel_server::{AppState, RepoConfig, RunSpec};

/// The most bytes a watched URL may answer with.
const MOST_BYTES: usize = 1 << 20;

/// `[versions.NAME]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionWatch {
    /// The repository (of `[repos]`) to run.
    pub repo: String,
    /// Its pipeline, when it has several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<String>,
    /// The branch to run.
    #[serde(default = "default_branch")]
    pub branch: String,
    /// What to fetch (`http://` or `https://`), answering JSON.
    pub url: String,
    /// A jq filter giving the version (its first result; a string as is).
    pub filter: String,
    /// Seconds between fetches.
    #[serde(default = "default_every")]
    pub every_seconds: u64,
    /// Values for the pipeline's `NAME: ~` variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

fn default_branch() -> String {
    "main".into()
}

fn default_every() -> u64 {
    3600
}

type Filter = jaq_core::Filter<data::JustLut<Val>>;

/// Compiles a jq filter, with jq's standard definitions.
fn compile(code: &str) -> Result<Filter, String> {
    let arena = Arena::default();
    let defs = jaq_core::defs()
        .chain(jaq_std::defs())
        .chain(jaq_json::defs());
    let modules = Loader::new(defs)
        .load(&arena, File { code, path: () })
        .map_err(|e| format!("filter `{code}`: {} error(s) while parsing", e.len()))?;
    let funs = jaq_core::funs()
        .chain(jaq_std::funs())
        .chain(jaq_json::funs());
    Compiler::default()
        .with_funs(funs)
        .compile(modules)
        .map_err(|e| format!("filter `{code}`: {} undefined name(s)", e.len()))
}

/// The version `filter` finds in the JSON `text`.
fn version_in(filter: &Filter, text: &[u8]) -> Result<String, String> {
    let input =
        jaq_json::read::parse_single(text).map_err(|e| format!("the answer is not JSON: {e}"))?;
    let ctx = Ctx::<data::JustLut<Val>>::new(&filter.lut, Vars::new([]));
    let first = filter
        .id
        .run((ctx, input))
        .map(unwrap_valr)
        .next()
        .ok_or("the filter gave nothing")?
        .map_err(|e| format!("the filter failed: {e}"))?;
    let version = match &first {
        Val::TStr(b) | Val::BStr(b) => String::from_utf8_lossy(b).into_owned(),
        other => other.to_string(),
    };
    let version = version.trim().to_string();
    if version.is_empty() || version == "null" || version.len() > 256 {
        return Err(format!("the filter gave no version (`{version}`)"));
    }
    Ok(version)
}

impl VersionWatch {
    /// Checks watch `name`: its repository and pipeline, URL, filter and
    /// interval.
    pub fn check(&self, name: &str, repos: &BTreeMap<String, RepoConfig>) -> Result<(), String> {
        let at = |what: String| format!("[versions.{name}]: {what}");
        sentinel_server::check_event(
            repos,
            &self.repo,
            self.pipeline.as_deref(),
            sentinel_server::filters::Event::Schedule,
        )
        .map_err(at)?;
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(at(format!(
                "url `{}` must be http:// or https://",
                self.url
            )));
        }
        compile(&self.filter).map_err(at)?;
        if self.every_seconds == 0 {
            return Err(at("every_seconds must be at least 1".into()));
        }
        Ok(())
    }
}

/// Runs the watches until `stop`.
pub async fn watch(
    state: AppState,
    watches: BTreeMap<String, VersionWatch>,
    stop: CancellationToken,
) {
    let http = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .user_agent(concat!("sentinel/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(h) => h,
        Err(e) => {
            tracing::error!("version watches cannot start: {e}");
            return;
        }
    };
    let mut tasks = tokio::task::JoinSet::new();
    for (name, w) in watches {
        let (state, http, stop) = (state.clone(), http.clone(), stop.clone());
        tasks.spawn(async move {
            let Ok(filter) = compile(&w.filter) else {
                return;
            };
            loop {
                if let Err(e) = look(&state, &http, &name, &w, &filter).await {
                    tracing::warn!(watch = %name, "version watch: {e}");
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(w.every_seconds)) => {}
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// One look: fetch, extract, and queue a run when the version changed.
async fn look(
    state: &AppState,
    http: &reqwest::Client,
    name: &str,
    w: &VersionWatch,
    filter: &Filter,
) -> Result<(), String> {
    let res = http
        .get(&w.url)
        .send()
        .await
        .map_err(|e| format!("cannot fetch {}: {e}", w.url))?;
    if !res.status().is_success() {
        return Err(format!("{} answered {}", w.url, res.status()));
    }
    let body = res.bytes().await.map_err(|e| e.to_string())?;
    if body.len() > MOST_BYTES {
        return Err(format!("{} answered more than 1 MiB", w.url));
    }
    let version = version_in(filter, &body)?;
    let seen = state.store.version_seen(name).map_err(|e| e.to_string())?;
    let Some(previous) = seen else {
        tracing::info!(watch = %name, %version, "version watch: the first version seen, its starting point");
        return state
            .store
            .set_version_seen(name, &version)
            .await
            .map_err(|e| e.to_string());
    };
    if previous == version {
        return Ok(());
    }
    let spec = RunSpec {
        repo: w.repo.clone(),
        pipeline: w.pipeline.clone(),
        git_ref: w.branch.clone(),
        branch: Some(w.branch.clone()),
        env: w.env.clone(),
        trigger_values: BTreeMap::from([
            ("version".to_string(), version.clone()),
            ("previous_version".to_string(), previous.clone()),
        ]),
        ..RunSpec::default()
    };
    let entry = state.entry(
        &spec,
        Trigger {
            kind: TriggerKind::Version,
            by: Some(format!("version watch {name}: {previous} → {version}")),
        },
    );
    let (id, fresh) = state
        .store
        .enqueue_once(&format!("version:{name}:{version}"), &entry)
        .await
        .map_err(|e| e.to_string())?;
    if fresh {
        state.metrics.accepted(&id, entry.enqueued);
        state.control.queued();
        tracing::info!(watch = %name, %previous, %version, run = %id, "a new version: run queued");
    }
    state
        .store
        .set_version_seen(name, &version)
        .await
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_finds_the_version_and_says_why_when_it_cannot() {
        let f = compile(".info.version").unwrap();
        let v = version_in(&f, br#"{"info": {"version": "2.31.0"}}"#).unwrap();
        assert_eq!(v, "2.31.0");
        let e = version_in(&f, br#"{"info": {}}"#).unwrap_err();
        assert!(e.contains("no version"), "{e}");
        assert!(version_in(&f, b"<html>").unwrap_err().contains("not JSON"));
        let last = compile(".releases | keys | last").unwrap();
        let v = version_in(&last, br#"{"releases": {"1.0": 1, "1.2": 2}}"#).unwrap();
        assert_eq!(v, "1.2");
        assert!(compile(".a |||").is_err());
    }
}
