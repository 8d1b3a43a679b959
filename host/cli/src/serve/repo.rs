//! Turns a queued run into what the engine runs: the configured
//! repository cloned at the requested ref (git, any URL the server can
//! reach; git runs with a minimal environment and no prompts), its pipeline
//! file, the secrets that pipeline names (opened from the database), the
//! git context (`SENTINEL_COMMIT`, `SENTINEL_BRANCH`, `SENTINEL_REPO`) and,
//! for a re-run from a stage, the earlier results it keeps — the outputs
//! as they were (kept sealed) and the files those stages made; a stage
//! whose outputs or files are no longer kept runs again, and says why.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sentinel_api::{GitContext, StageStatus};
use sentinel_engine::gate::Resume;
use sentinel_engine::ports::{QueueEntry, Store};
use sentinel_engine::queue::Resolve;
use sentinel_engine::{ResolveError, RunRequest, Upstream};
use sentinel_server::{RepoConfig, RunSpec};
use sentinel_store::SledStore;
use sentinel_store::secrets::SecretsKey;

/// What resolving needs.
pub struct Resolver {
    pub store: SledStore,
    pub repos: BTreeMap<String, RepoConfig>,
    /// Where checkouts go (one folder per run, removed after it).
    pub checkouts: PathBuf,
    pub secrets_key: Option<Arc<SecretsKey>>,
    /// The state folder (where the files of runs' stages are kept).
    pub state: PathBuf,
    /// Where deploy payloads are kept once checked (`<state>/payloads`).
    pub payloads: PathBuf,
    /// The local results folder (a promoted run's published files).
    pub results: PathBuf,
    /// The cache of stages with `cache:`, and the branch every branch falls back on.
    pub cache: Option<(Arc<sentinel_engine::cache::Cache>, String)>,
    /// The environments approval gates (`approval: ENV`) ask.
    pub environments: BTreeMap<String, sentinel_server::deploys::EnvironmentConfig>,
    /// What a fork's pull request gets.
    pub pull_requests: PullRequestsSection,
    /// The server's registries (`[registries.NAME]`).
    pub registries: BTreeMap<String, crate::registries::RegistryConfig>,
    /// `[steps]`: the default step registry, keys steps must be signed by.
    pub steps: crate::registries::StepsSection,
}

/// The stored secrets the registries name (passwords, tokens), opened.
pub fn open_registry_secrets(
    store: &SledStore,
    key: Option<&SecretsKey>,
    registries: &BTreeMap<String, crate::registries::RegistryConfig>,
) -> Result<BTreeMap<String, String>, String> {
    let names: Vec<String> = registries
        .values()
        .flat_map(|r| [r.password_secret.clone(), r.token_secret.clone()])
        .flatten()
        .collect();
    match key {
        Some(key) if !names.is_empty() => {
            store.open_secrets(key, &names).map_err(|e| e.to_string())
        }
        _ => Ok(BTreeMap::new()),
    }
}

/// `[pull_requests]`: what a fork's pull request's run gets.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullRequestsSection {
    /// The network its stages get: `none` (default) or `bridge` (stages
    /// that ask for `network: run` get `bridge`).
    #[serde(default)]
    pub fork_network: ForkNetwork,
}

/// The network of a fork's pull request's stages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForkNetwork {
    #[default]
    None,
    Bridge,
}

/// Runs git with only what it needs from the environment.
async fn git(dir: Option<&Path>, args: &[&str]) -> Result<String, String> {
    let mut cmd = tokio::process::Command::new("git");
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", std::env::var_os("HOME").unwrap_or_default())
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("LC_ALL", "C");
    if let Some(d) = dir {
        cmd.arg("-C").arg(d);
    }
    let out = cmd
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("cannot run git: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Clones `url` into `dir` (afresh), checking nothing out. No template:
/// the sample hooks and files a template adds are a dozen file creations
/// per run that nothing reads.
async fn clone(url: &str, dir: &Path) -> Result<(), String> {
    let _ = tokio::fs::remove_dir_all(dir).await;
    let d = dir.to_string_lossy();
    git(
        None,
        &[
            "clone",
            "--quiet",
            "--template=",
            "--no-checkout",
            "--",
            url,
            &d,
        ],
    )
    .await
    .map_err(|e| format!("cannot clone {url}: {e}"))?;
    Ok(())
}

/// Clones `url` into `dir` and checks out `git_ref` (a commit, a branch or
/// a tag); returns the commit and the branch it is on, when a branch was named.
pub async fn checkout(
    url: &str,
    git_ref: &str,
    dir: &Path,
) -> Result<(String, Option<String>), String> {
    if git_ref.starts_with('-') {
        return Err(format!("`{git_ref}` is not a ref"));
    }
    clone(url, dir).await?;
    // A branch first (one git process when it is one), then a tag or commit.
    let commit_of = |target: String| async move {
        git(
            Some(dir),
            &[
                "rev-parse",
                "--verify",
                "--quiet",
                &format!("{target}^{{commit}}"),
            ],
        )
        .await
    };
    let (commit, is_branch) = match commit_of(format!("refs/remotes/origin/{git_ref}")).await {
        Ok(c) => (c, true),
        Err(_) => (
            commit_of(git_ref.to_string())
                .await
                .map_err(|_| format!("{url} has no commit, branch or tag `{git_ref}`"))?,
            false,
        ),
    };
    git(Some(dir), &["checkout", "--quiet", "--detach", &commit])
        .await
        .map_err(|e| format!("cannot check out {commit}: {e}"))?;
    Ok((commit, is_branch.then(|| git_ref.to_string())))
}

/// Clones `url` and checks out a pull request's head commit, fetching
/// GitHub's `refs/pull/N/head` first (a fork's commits are only there) —
/// or, with `merge`, its head merged onto its base branch (a merge commit
/// made here; a conflict fails the run, saying so).
async fn checkout_pull_request(
    url: &str,
    pr: &sentinel_api::PullRequestDoc,
    merge: bool,
    dir: &Path,
) -> Result<(String, Option<String>), String> {
    clone(url, dir).await?;
    let refspec = format!("refs/pull/{}/head", pr.number);
    // Absent outside GitHub (and for a same-repository head it is not needed).
    let _ = git(Some(dir), &["fetch", "--quiet", "origin", &refspec]).await;
    if pr.head_sha.starts_with('-') {
        return Err(format!("`{}` is not a commit", pr.head_sha));
    }
    if !merge {
        git(
            Some(dir),
            &["checkout", "--quiet", "--detach", &pr.head_sha],
        )
        .await
        .map_err(|e| {
            format!(
                "cannot check out pull request #{} at {}: {e}",
                pr.number, pr.head_sha
            )
        })?;
        return Ok((pr.head_sha.clone(), None));
    }
    let base = format!("origin/{}", pr.base);
    git(Some(dir), &["checkout", "--quiet", "--detach", &base])
        .await
        .map_err(|e| {
            format!(
                "cannot check out {base}, the base of pull request #{}: {e}",
                pr.number
            )
        })?;
    let message = format!(
        "Merge pull request #{} ({}) onto {}",
        pr.number, pr.head, pr.base
    );
    let merged = git(
        Some(dir),
        &[
            "-c",
            "user.name=sentinel",
            "-c",
            "user.email=sentinel@localhost",
            "merge",
            "--quiet",
            "--no-ff",
            "--no-edit",
            "-m",
            &message,
            &pr.head_sha,
        ],
    )
    .await;
    if let Err(e) = merged {
        return Err(format!(
            "pull request #{} does not merge onto {}: {e}",
            pr.number, pr.base
        ));
    }
    let commit = git(Some(dir), &["rev-parse", "HEAD"]).await?;
    Ok((commit, None))
}

impl Resolver {
    /// The engine's request for a queued run; its checkout is removed when
    /// it cannot run.
    pub async fn resolve(&self, e: QueueEntry) -> Result<RunRequest, ResolveError> {
        let dir = self.checkouts.join(e.run_id.as_str());
        let r = self.prepare(e, &dir).await;
        if r.is_err() {
            let _ = tokio::fs::remove_dir_all(&dir).await;
        }
        r.map_err(ResolveError::permanent)
    }

    async fn prepare(&self, e: QueueEntry, dir: &Path) -> Result<RunRequest, String> {
        let spec: RunSpec = serde_json::from_value(e.request.clone())
            .map_err(|err| format!("the queued request is not readable: {err}"))?;
        // A paused run going on: as it was, unless it ended meanwhile.
        let resume = match &spec.resume {
            Some(id) if id == &e.run_id => Some(self.paused(id).await?),
            _ => None,
        };
        let repo = self.repos.get(&spec.repo).ok_or_else(|| {
            format!(
                "repository `{}` is no longer in the server's configuration",
                spec.repo
            )
        })?;
        let (commit, branch) = match &spec.pull_request {
            Some(pr) => checkout_pull_request(&repo.url, pr, repo.merge_pull_requests, dir).await?,
            None => checkout(&repo.url, &spec.git_ref, dir).await?,
        };
        // A fork's pull request: no secrets, no cache writes, no network,
        // no deploy.
        let fork = spec.pull_request.as_ref().is_some_and(|p| p.fork);
        if let Some(p) = &spec.pipeline
            && !repo.pipelines.contains_key(p)
        {
            return Err(format!(
                "repository `{}` has no pipeline `{p}` in the server's configuration any more",
                spec.repo
            ));
        }
        let file = match repo.file_of(spec.pipeline.as_deref()) {
            Some(p) => dir.join(p),
            None => sentinel_pipeline::dialect::find_pipeline(dir)
                .map(|(f, _)| f)
                .ok_or_else(|| {
                    format!(
                        "{} at {} has no pipeline file (looked for {})",
                        spec.repo,
                        &commit[..12.min(commit.len())],
                        sentinel_pipeline::dialect::usual_names().join(", ")
                    )
                })?,
        };
        let shown = file
            .strip_prefix(dir)
            .unwrap_or(&file)
            .display()
            .to_string();
        // The committed lock file is used and never written; steps are
        // pulled into the state folder's cache.
        let mut catalog = self.step_catalog(&file)?;
        let mut plan = tokio::task::spawn_blocking(move || {
            crate::steps::catalog::plan(&file, &sentinel_pipeline::Select::default(), &mut catalog)
        })
        .await
        .map_err(|err| err.to_string())?
        .map_err(|err| match err {
            sentinel_pipeline::LoadError::Invalid(d) => format!(
                "{} at {} is not valid: {}",
                shown,
                &commit[..12.min(commit.len())],
                d.0.iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            other => other.to_string(),
        })?;
        // A named pipeline's runs carry its name: its runs list and badge.
        if let Some(p) = &spec.pipeline {
            plan.name = p.clone();
        }
        // Only the secrets the pipeline names, and each of them (a trigger
        // may say which stored secret serves a name).
        let stored_name = |n: &String| spec.secrets.get(n).cloned().unwrap_or_else(|| n.clone());
        let wanted: Vec<String> = if fork {
            Vec::new()
        } else {
            plan.secrets.iter().map(stored_name).collect()
        };
        let opened = match &self.secrets_key {
            Some(key) if !wanted.is_empty() => self
                .store
                .open_secrets(key, &wanted)
                .map_err(|err| err.to_string())?,
            _ => BTreeMap::new(),
        };
        let mut secrets = BTreeMap::new();
        for name in plan.secrets.iter().filter(|_| !fork) {
            let stored = stored_name(name);
            let Some(v) = opened.get(&stored) else {
                return Err(format!(
                    "secret `{stored}` is not set on this server (sentinel secret set {stored}){}",
                    if self.secrets_key.is_none() {
                        "; the server has no secrets key"
                    } else {
                        ""
                    }
                ));
            };
            secrets.insert(name.clone(), v.clone());
        }
        if let Some(d) = &spec.deploy {
            super::deploy_files::place(d, dir, &self.payloads, &self.results, &self.store).await?;
        }
        let (reuse, not_reused) = match (&resume, &spec.rerun_of, &spec.from) {
            (Some(r), _, _) => {
                // Its stages that did not end run now; the others stay.
                let again = r
                    .stages
                    .iter()
                    .filter(|d| !d.status.is_final())
                    .map(|d| d.name.clone())
                    .collect();
                sentinel_engine::rerun::reused_except(
                    &self.store,
                    &self.state,
                    &e.run_id,
                    again,
                    &plan,
                )
                .await?
            }
            (None, Some(earlier), Some(from)) => {
                sentinel_engine::rerun::reused_from(&self.store, &self.state, earlier, from, &plan)
                    .await?
            }
            _ => (BTreeMap::new(), BTreeMap::new()),
        };
        let mut gates = sentinel_server::deploys::gates_of(
            &self.store,
            &self.environments,
            plan.stages
                .iter()
                .filter_map(|s| Some((s.name.clone(), s.approval.clone()?))),
            resume.as_ref(),
        )?;
        if fork {
            for gate in gates.values_mut() {
                *gate = sentinel_engine::gate::Gate::Refuse {
                    gate: None,
                    reason: "a pull request from a fork deploys nothing".into(),
                };
            }
            for s in plan.stages.iter_mut() {
                s.limits.network = match (self.pull_requests.fork_network, s.limits.network) {
                    (ForkNetwork::Bridge, sentinel_pipeline::Network::None) => {
                        sentinel_pipeline::Network::None
                    }
                    (ForkNetwork::Bridge, _) => sentinel_pipeline::Network::Bridge,
                    (ForkNetwork::None, _) => sentinel_pipeline::Network::None,
                };
            }
        }
        Ok(RunRequest {
            from_run: None,
            deploy: spec.deploy.as_ref().map(|d| d.facts.clone()),
            // Every run the server starts may write the cache; a fork's pull
            // request (when the server builds them) must not.
            cache: self.cache.as_ref().map(|(cache, default_branch)| {
                sentinel_engine::cache::CacheAccess {
                    cache: cache.clone(),
                    project: spec.repo.clone(),
                    default_branch: default_branch.clone(),
                    write: !fork,
                }
            }),
            plan,
            source: dir.to_path_buf(),
            skip: Vec::new(),
            trigger: e.trigger.clone(),
            git: Some(GitContext {
                repo: Some(repo.url.clone()),
                branch: spec.branch.clone().or(branch),
                commit: Some(commit),
            }),
            // The trigger's values, never the server's own environment.
            host_env: spec.env.clone(),
            secrets,
            run_id: Some(e.run_id.clone()),
            reuse,
            not_reused,
            gates,
            resume,
            withheld: fork.then(|| "a pull request from a fork gets no secrets".to_string()),
            pull_request: spec.pull_request.clone(),
            trigger_values: spec.trigger_values.clone(),
            // A fork's pull request gets no credentials either.
            registries: if fork {
                Vec::new()
            } else {
                self.registry_auth()?
            },
            upstream: match &spec.upstream {
                Some(id) => Some(self.upstream(id).await?),
                None => None,
            },
        })
    }

    /// The step catalog of a checkout's pipeline file: the server's step
    /// registries (their stored credentials opened for each run) and the
    /// lock file beside the file, read only.
    fn step_catalog(&self, file: &std::path::Path) -> Result<sentinel_registry::Catalog, String> {
        let opened = self.registry_secrets()?;
        crate::steps::catalog::build(&self.state, &self.registries, &self.steps, &|n| {
            opened.get(n).cloned()
        })
        .and_then(|c| {
            c.with_lock(
                sentinel_registry::Lock::path_for(file),
                sentinel_registry::LockMode::ReadOnly,
            )
            .map_err(anyhow::Error::msg)
        })
        .map_err(|e| format!("{e:#}"))
    }

    /// The server's registries with their passwords (stored secrets opened
    /// for each run, so a changed one is used from the next run on).
    fn registry_auth(&self) -> Result<Vec<sentinel_engine::exec::RegistryAuth>, String> {
        let opened = self.registry_secrets()?;
        crate::registries::resolve(&self.registries, |n| opened.get(n).cloned())
    }

    fn registry_secrets(&self) -> Result<BTreeMap<String, String>, String> {
        open_registry_secrets(&self.store, self.secrets_key.as_deref(), &self.registries)
    }

    /// What `${upstream.*}` reads of run `id`: the outputs of its stages
    /// that succeeded, as their documents show them (masked, and none of a
    /// sensitive stage).
    async fn upstream(&self, id: &sentinel_api::RunId) -> Result<Upstream, String> {
        let stages = self
            .store
            .get_stages(id)
            .await
            .map_err(|err| err.to_string())?;
        let outputs = stages
            .into_iter()
            .filter(|d| d.status == StageStatus::Succeeded && !d.sensitive)
            .map(|d| (d.name, (d.output.unwrap_or_default(), d.outputs)))
            .collect();
        Ok(Upstream {
            run: id.clone(),
            outputs,
        })
    }

    /// Paused run `id` as it was, to go on.
    async fn paused(&self, id: &sentinel_api::RunId) -> Result<Resume, String> {
        let run = self
            .store
            .get_run(id)
            .await
            .map_err(|err| err.to_string())?
            .ok_or_else(|| format!("run {id} is not recorded, so it cannot go on"))?;
        if run.status != sentinel_api::RunStatus::WaitingApproval {
            return Err(format!(
                "run {id} is {}: it no longer waits for an approval",
                run.status
            ));
        }
        let stages = self
            .store
            .get_stages(id)
            .await
            .map_err(|err| err.to_string())?;
        Ok(Resume { run, stages })
    }

    /// As the worker's [`Resolve`].
    pub fn into_resolve(self) -> Resolve {
        let me = Arc::new(self);
        Arc::new(move |e: QueueEntry| {
            let me = me.clone();
            Box::pin(async move { me.resolve(e).await })
        })
    }
}
