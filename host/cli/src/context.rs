//! Paths, the state database, the executor and the results folder a command
//! works with, plus the host inputs of a run (git context, secrets).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use sentinel_api::GitContext;
use sentinel_docker::DockerExecutor;
use sentinel_engine::exec::Executor;
use sentinel_engine::{Engine, EngineConfig};
use sentinel_results::LocalSink;
use sentinel_store::{OpenError, SledStore};

use crate::Paths;

/// Resolved folders.
#[derive(Debug, Clone)]
pub struct Dirs {
    pub project: PathBuf,
    pub state: PathBuf,
    pub results: PathBuf,
}

impl Dirs {
    /// The folders of the project `-C` names (else the current folder).
    pub fn new(p: &Paths) -> anyhow::Result<Self> {
        let dir = p.dir.clone().unwrap_or_else(|| PathBuf::from("."));
        Self::of(p, &dir)
    }

    /// The folders of the project in `dir`.
    pub fn of(p: &Paths, dir: &Path) -> anyhow::Result<Self> {
        let project = std::fs::canonicalize(dir)
            .with_context(|| format!("project folder {}", dir.display()))?;
        // Absolute: the folders are bind-mounted into containers.
        let state =
            std::path::absolute(p.state.clone().unwrap_or_else(|| project.join(".sentinel")))?;
        let results =
            std::path::absolute(p.results.clone().unwrap_or_else(|| state.join("results")))?;
        Ok(Self {
            project,
            state,
            results,
        })
    }
}

/// Opens the state database without waiting; `None` when another process holds it.
pub fn try_open_store(state: &Path) -> anyhow::Result<Option<SledStore>> {
    match SledStore::try_open(state) {
        Ok(s) => Ok(Some(s)),
        Err(OpenError::Locked(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// An executor that cannot run anything: used by read-only commands when
/// Docker is unreachable, so recovery still marks dead runs.
#[derive(Debug)]
pub struct Unavailable;

#[async_trait::async_trait]
impl Executor for Unavailable {
    async fn start_run(
        &self,
        ctx: &sentinel_engine::exec::RunContext,
    ) -> Result<(), sentinel_engine::ExecError> {
        if ctx.services.is_empty() {
            return Ok(());
        }
        Err(sentinel_engine::ExecError::transient(
            "start the services",
            "Docker is not reachable",
        ))
    }
    async fn run_stage(
        &self,
        _: sentinel_engine::StageJob,
        _: tokio_util::sync::CancellationToken,
    ) -> sentinel_engine::StageReport {
        sentinel_engine::StageReport::of(sentinel_engine::Outcome::StartFailed(
            "Docker is not reachable".into(),
        ))
    }
    async fn end_run(&self, _: &sentinel_api::RunId) {}
    async fn reap(&self) -> usize {
        0
    }
}

/// The S3 sink behind a durable outbox in the state database (its files
/// spooled under `<state>/spool`); it starts sending what an earlier run
/// left waiting.
pub async fn s3_outbox(
    dirs: &Dirs,
    store: &SledStore,
    cfg: sentinel_s3::S3Config,
) -> Arc<sentinel_engine::outbox::OutboxSink> {
    let s3 = sentinel_s3::S3Sink::connect(cfg).await;
    sentinel_engine::outbox::OutboxSink::start(
        Arc::new(s3),
        Arc::new(store.clone()),
        dirs.state.join("spool"),
    )
    .await
}

/// The state folder's memory of the bucket its runs are mirrored to.
const MIRROR: &str = "mirror";

/// With an S3 configuration, makes the engine publish to S3 as well, behind
/// the durable outbox (the results folder stays the primary); returns the
/// outbox to report what still waits. The bucket is remembered, so a
/// command that records without it (a read command recovering a dead run)
/// keeps what S3 must learn in the outbox.
pub async fn mirror_to_s3(
    engine: &mut Engine,
    dirs: &Dirs,
    store: &SledStore,
    cfg: Option<sentinel_s3::S3Config>,
) -> Option<Arc<sentinel_engine::outbox::OutboxSink>> {
    let cfg = cfg?;
    if let Ok(v) = serde_json::to_value(&cfg)
        && let Err(e) = store.remember(MIRROR, &v)
    {
        tracing::warn!("cannot remember the results bucket: {e}");
    }
    let outbox = s3_outbox(dirs, store, cfg).await;
    engine.sink = Arc::new(sentinel_results::Mirrored {
        primary: engine.sink.clone(),
        mirror: outbox.clone(),
    });
    Some(outbox)
}

/// The bucket this state folder's runs were last mirrored to, if any.
pub fn remembered_mirror(store: &SledStore) -> Option<sentinel_s3::S3Config> {
    store
        .recall(MIRROR)
        .ok()
        .flatten()
        .and_then(|v| serde_json::from_value(v).ok())
}

/// For a command that records without S3: when the state folder's runs are
/// mirrored, what it records for them waits in the outbox for the next
/// process that has the bucket.
pub async fn defer_mirror(engine: &mut Engine, dirs: &Dirs, store: &SledStore) {
    if remembered_mirror(store).is_none() {
        return;
    }
    let outbox = sentinel_engine::outbox::OutboxSink::deferred(
        Arc::new(store.clone()),
        dirs.state.join("spool"),
    )
    .await;
    engine.sink = Arc::new(sentinel_results::Mirrored {
        primary: engine.sink.clone(),
        mirror: outbox,
    });
}

/// Builds an engine over the store, Docker (or [`Unavailable`]) and the results folder.
pub fn engine(
    dirs: &Dirs,
    store: SledStore,
    exec: Arc<dyn Executor>,
    jobs: usize,
    keep_workspace: bool,
) -> Engine {
    Engine {
        exec,
        store: Arc::new(store),
        sink: Arc::new(LocalSink::new(&dirs.results)),
        config: EngineConfig {
            jobs,
            state_dir: dirs.state.clone(),
            keep_workspace,
            keep_files: EngineConfig::KEEP_FILES,
        },
    }
}

/// Where bundled and installed steps are looked up: `SENTINEL_STEPS_PATH`
/// (colon-separated), then `steps/` beside the binary, then the nearest
/// `steps/dist` above it (a source checkout).
/// The cache in the state folder (`<state>/caches`): `sentinel run`'s,
/// and the server's when its `[cache]` names no bucket.
pub fn local_cache(
    state: &Path,
    policy: sentinel_engine::cache::CachePolicy,
) -> Arc<sentinel_engine::cache::Cache> {
    use sentinel_engine::cache::{Cache, CacheDir};
    Arc::new(Cache::new(
        Arc::new(CacheDir::new(state.join("caches"))),
        policy,
    ))
}

pub fn step_catalog() -> sentinel_pipeline::DirCatalog {
    let mut dirs: Vec<PathBuf> = std::env::var("SENTINEL_STEPS_PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            dirs.push(dir.join("steps"));
        }
        if let Some(found) = exe
            .ancestors()
            .map(|a| a.join("steps/dist"))
            .find(|p| p.is_dir())
        {
            dirs.push(found);
        }
    }
    dirs.retain(|d| d.is_dir());
    sentinel_pipeline::DirCatalog { dirs }
}

/// Where container stages run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ExecutorKind {
    /// This machine's Docker engine.
    #[default]
    Local,
    /// Docker Swarm services spread over the cluster whose manager this
    /// machine's Docker engine is.
    Swarm,
}

/// The choice of container executor (`sentinel run`, `sentinel serve`).
#[derive(Debug, Clone, clap::Args)]
pub struct ExecutorArgs {
    /// Where container stages and services run: `local` (this
    /// machine's Docker) or `swarm` (a Docker Swarm whose manager is this
    /// machine's Docker; see docs/swarm.md).
    #[arg(long, env = "SENTINEL_EXECUTOR", value_enum, default_value_t = ExecutorKind::Local)]
    pub executor: ExecutorKind,
    /// Swarm: the address the nodes reach this process at for the
    /// workspace archives (`10.0.0.5:0`: any port). Default: this
    /// machine's address on Docker's bridge (a one-node swarm).
    #[arg(long, env = "SENTINEL_SWARM_LISTEN", value_name = "ADDR:PORT")]
    pub swarm_listen: Option<std::net::SocketAddr>,
    /// Swarm: the image of the helper tasks that carry workspaces (default
    /// `sentinel/docker-cli:local`); every node must have it or pull it.
    #[arg(long, env = "SENTINEL_SWARM_HELPER_IMAGE", value_name = "IMAGE")]
    pub swarm_helper_image: Option<String>,
    /// Swarm: where each node's Docker socket is, for the task that removes
    /// a run's volumes there (default `/var/run/docker.sock`; `{{.Node.ID}}`
    /// and Swarm's other templates are expanded per node).
    #[arg(long, env = "SENTINEL_SWARM_NODE_SOCKET", value_name = "PATH")]
    pub swarm_node_socket: Option<String>,
}

impl ExecutorArgs {
    /// The Swarm executor, when chosen (on `local`, this machine's Docker
    /// executor, when there is one already).
    pub async fn swarm(
        &self,
        local: Option<DockerExecutor>,
    ) -> anyhow::Result<Option<sentinel_docker::SwarmExecutor>> {
        if self.executor != ExecutorKind::Swarm {
            return Ok(None);
        }
        let config = sentinel_docker::SwarmConfig {
            listen: self.swarm_listen,
            helper_image: self.swarm_helper_image.clone(),
            node_socket: self.swarm_node_socket.clone(),
        };
        let swarm = match local {
            Some(l) => sentinel_docker::SwarmExecutor::with_local(l, config).await?,
            None => sentinel_docker::SwarmExecutor::connect(config).await?,
        };
        Ok(Some(swarm))
    }
}

/// The executor for a plan: Docker (or a swarm) for container stages (only
/// connected when the plan has any), the WebAssembly runtime for steps.
pub async fn executor_for(
    plan: &sentinel_pipeline::Plan,
    dirs: &Dirs,
    choice: &ExecutorArgs,
) -> anyhow::Result<Arc<dyn Executor>> {
    let needs_docker =
        !plan.services.is_empty() || plan.stages.iter().any(|s| s.action.needs_containers());
    let containers: Arc<dyn Executor> = if let Some(swarm) = choice.swarm(None).await? {
        eprintln!(
            "stages run on the swarm; their workspaces are served at {}",
            swarm.archive_address()
        );
        Arc::new(swarm)
    } else if needs_docker {
        Arc::new(DockerExecutor::connect().await?)
    } else {
        docker_or_unavailable().await
    };
    let steps = sentinel_wasm::WasmExecutor::new(&dirs.state.join("cache/wasm"))?;
    Ok(Arc::new(sentinel_engine::exec::Dispatch {
        containers,
        steps: Arc::new(steps),
    }))
}

/// Docker, or `Unavailable` with a warning.
pub async fn docker_or_unavailable() -> Arc<dyn Executor> {
    match DockerExecutor::connect().await {
        Ok(d) => Arc::new(d),
        Err(e) => {
            tracing::warn!("{e}; containers of dead runs cannot be removed now");
            Arc::new(Unavailable)
        }
    }
}

/// A server's Docker (keeping `ready_namespaces` network namespaces
/// ready), or `Unavailable` with a warning.
pub async fn server_docker(ready_namespaces: usize) -> (Arc<dyn Executor>, Option<DockerExecutor>) {
    match DockerExecutor::connect().await {
        Ok(d) => {
            let d = d.with_ready_namespaces(ready_namespaces);
            (Arc::new(d.clone()), Some(d))
        }
        Err(e) => {
            tracing::warn!("{e}; containers of dead runs cannot be removed now");
            (Arc::new(Unavailable), None)
        }
    }
}

/// A git command's trimmed output in `dir`, when it succeeds with some.
pub fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
}

/// The git context of the project folder, when it is a repository.
pub fn git_context(dir: &Path) -> Option<GitContext> {
    let commit = git(dir, &["rev-parse", "HEAD"])?;
    Some(GitContext {
        commit: Some(commit),
        branch: git(dir, &["rev-parse", "--abbrev-ref", "HEAD"]).filter(|b| b != "HEAD"),
        repo: git(dir, &["config", "--get", "remote.origin.url"]),
    })
}

/// Secret values: `NAME=value` lines of `file` (if any), then the environment.
pub fn secrets(names: &[String], file: Option<&Path>) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    if let Some(f) = file {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("secrets file {}", f.display()))?;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line
                .split_once('=')
                .with_context(|| format!("{}:{}: expected NAME=value", f.display(), i + 1))?;
            if names.iter().any(|n| n == k.trim()) {
                out.insert(k.trim().to_string(), v.to_string());
            }
        }
    }
    for n in names {
        if !out.contains_key(n)
            && let Ok(v) = std::env::var(n)
        {
            out.insert(n.clone(), v);
        }
    }
    Ok(out)
}
