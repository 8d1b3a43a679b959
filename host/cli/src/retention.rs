//! `sentinel runs prune` and `sentinel runs keep`, and the server's
//! retention pass: the runs a policy lets go (see
//! `sentinel_engine::retention`) removed from the results (the folder and
//! the bucket, index first), the state folder (kept files, sealed outputs,
//! the store) and the Docker engine (the images they made and did not push).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Subcommand;
use sentinel_api::{RunDoc, RunId};
use sentinel_engine::ResultsSink;
use sentinel_engine::retention::{self, Policy, Pruned};
use sentinel_store::SledStore;

use crate::Paths;
use crate::context::{self, Dirs};

#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// Remove the ended runs outside the policy: older than `--older-than`
    /// and/or past the newest `--keep-last` of their pipeline and branch.
    /// Runs marked `keep`, runs a current deployment came from, and runs
    /// not ended are never removed.
    Prune {
        /// Remove runs created longer ago than this (`30d`, `12h`).
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: Option<Duration>,
        /// Keep the newest N runs of each pipeline and branch.
        #[arg(long, value_name = "N")]
        keep_last: Option<usize>,
        /// List what would go; remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// The bucket the runs' results are in too (default: the one this
        /// state folder's runs were mirrored to).
        #[command(flatten)]
        s3: crate::run::S3Args,
    },
    /// Mark a run to be kept whatever the retention policy says
    /// (`--undo` takes the mark away).
    Keep {
        run: RunId,
        #[arg(long)]
        undo: bool,
    },
}

/// What one pass selected and removed.
#[derive(Debug, Default)]
pub struct Pass {
    pub selected: Vec<RunDoc>,
    pub pruned: Pruned,
    pub images: u64,
}

/// How many runs are removed before the pass yields.
const BATCH: usize = 100;

/// One retention pass: selects the runs `policy` lets go and (unless dry)
/// removes everything of them through `sink`, and their unpushed images
/// through `docker`.
pub async fn pass(
    store: &SledStore,
    sink: Arc<dyn ResultsSink>,
    state: &std::path::Path,
    policy: &Policy,
    docker: Option<&sentinel_docker::DockerExecutor>,
    dry_run: bool,
) -> anyhow::Result<Pass> {
    let protected = store.protected_runs().await?;
    let selected = retention::select(store, policy, &protected, chrono::Utc::now()).await?;
    if dry_run || selected.is_empty() {
        return Ok(Pass {
            selected,
            ..Pass::default()
        });
    }
    let pruned = retention::prune(store, &[sink], state, &selected, BATCH).await;
    let mut images = 0;
    if let Some(d) = docker
        && let Ok(made) = d.made_images().await
    {
        let gone: std::collections::BTreeSet<&RunId> = selected
            .iter()
            .map(|r| &r.id)
            .filter(|id| !pruned.failed.iter().any(|(f, _)| f == *id))
            .collect();
        let theirs = made
            .into_iter()
            .filter(|i| !i.pushed && i.run.as_ref().is_some_and(|r| gone.contains(r)))
            .collect();
        images = crate::images::remove(d, theirs, false, |line| {
            tracing::info!("retention: image {line}")
        })
        .await
        .removed;
    }
    Ok(Pass {
        selected,
        pruned,
        images,
    })
}

/// `sentinel runs prune|keep`.
pub async fn runs(paths: &Paths, cmd: RunsCommand) -> anyhow::Result<ExitCode> {
    let dirs = Dirs::new(paths)?;
    let Some(store) = context::try_open_store(&dirs.state)? else {
        anyhow::bail!(
            "another sentinel process is using the state folder {}; stop it first (a server prunes by its `[retention]`)",
            dirs.state.display()
        );
    };
    match cmd {
        RunsCommand::Keep { run, undo } => {
            use sentinel_engine::Store as _;
            if store.get_run(&run).await?.is_none() {
                anyhow::bail!("no run {run} in {}", dirs.state.display());
            }
            store.set_keep(&run, !undo).await?;
            println!(
                "run {run} {}",
                if undo {
                    "goes by the retention policy again"
                } else {
                    "is kept whatever the retention policy says"
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        RunsCommand::Prune {
            older_than,
            keep_last,
            dry_run,
            s3,
        } => {
            let policy = Policy {
                max_age: older_than,
                keep_last,
            };
            if !policy.is_set() {
                anyhow::bail!(
                    "say what to keep: `--older-than AGE` and/or `--keep-last N` (nothing is removed without a policy)"
                );
            }
            let local: Arc<dyn ResultsSink> =
                Arc::new(sentinel_results::LocalSink::new(&dirs.results));
            // The bucket the runs were mirrored to, through its outbox: a
            // run whose results still wait there is left for next time.
            let sink = match s3.config()?.or_else(|| context::remembered_mirror(&store)) {
                Some(cfg) => {
                    let outbox = context::s3_outbox(&dirs, &store, cfg).await;
                    Arc::new(sentinel_results::Mirrored {
                        primary: local,
                        mirror: outbox,
                    }) as Arc<dyn ResultsSink>
                }
                None => local,
            };
            let docker = sentinel_docker::DockerExecutor::connect().await.ok();
            let p = pass(&store, sink, &dirs.state, &policy, docker.as_ref(), dry_run).await?;
            let failed = |id: &RunId| p.pruned.failed.iter().any(|(f, _)| f == id);
            for r in p.selected.iter().filter(|r| !failed(&r.id)) {
                println!(
                    "{} {}  {}  {}  {}",
                    if dry_run { "would remove" } else { "removed" },
                    r.id,
                    r.status,
                    r.created.format("%Y-%m-%d %H:%M:%S"),
                    r.pipeline
                );
            }
            for (id, why) in &p.pruned.failed {
                eprintln!("kept {id} this time: {why}");
            }
            if !dry_run {
                eprintln!(
                    "removed {} run(s): {} published file(s), {} of kept files, {} image(s)",
                    p.pruned.runs,
                    p.pruned.objects,
                    sentinel_engine::cache::human(p.pruned.kept_bytes),
                    p.images
                );
            }
            Ok(if p.pruned.failed.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

/// The server's `[retention]`: a pass at start, then every `every`, in the
/// background; each pass also applies the cache's policy to every
/// repository's cache (entries past their time to live or budget go even
/// when nothing is saved).
pub struct ServerRetention {
    pub policy: Policy,
    pub every: Duration,
    pub store: SledStore,
    pub sink: Arc<dyn ResultsSink>,
    pub state: std::path::PathBuf,
    pub docker: Option<sentinel_docker::DockerExecutor>,
    pub metrics: Arc<sentinel_server::metrics::Metrics>,
    /// The cache and the repositories whose entries it keeps.
    pub caches: Option<(Arc<sentinel_engine::cache::Cache>, Vec<String>)>,
}

impl ServerRetention {
    pub fn spawn(self) {
        tokio::spawn(async move {
            loop {
                self.pass().await;
                tokio::time::sleep(self.every).await;
            }
        });
    }

    async fn pass(&self) {
        let p = pass(
            &self.store,
            self.sink.clone(),
            &self.state,
            &self.policy,
            self.docker.as_ref(),
            false,
        )
        .await;
        match p {
            Ok(p) => {
                let failed = p.pruned.failed.len() as u64;
                let pr = &p.pruned;
                self.metrics
                    .on_pruned(pr.runs, pr.objects, pr.kept_bytes, failed);
                if pr.runs > 0 {
                    tracing::info!(
                        "retention: removed {} run(s), {} published file(s), {} bytes of kept files, {} image(s)",
                        pr.runs,
                        pr.objects,
                        pr.kept_bytes,
                        p.images
                    );
                }
                for (id, why) in &pr.failed {
                    tracing::warn!("retention: run {id} stays until the next pass: {why}");
                }
            }
            Err(e) => tracing::warn!("retention: cannot select the runs to remove: {e}"),
        }
        if let Some((cache, repos)) = &self.caches {
            for repo in repos {
                match cache.sweep(repo).await {
                    Ok((0, _)) => {}
                    Ok((n, bytes)) => {
                        self.metrics.on_cache_swept(bytes);
                        tracing::info!(
                            "retention: {n} cache entr(ies) of {repo} past the cache's policy removed ({bytes} bytes)"
                        );
                    }
                    Err(e) => tracing::warn!("retention: cannot sweep the cache of {repo}: {e}"),
                }
            }
        }
    }
}
