//! The executor interface: how the engine asks something (Docker, a
//! WebAssembly runtime, a fake in tests) to run one stage.
//!
//! ## Lifecycle
//!
//! 1. [`Executor::prepare_workspace`] once per run: the run's workspace, made
//!    from the project's files ([`Source`]), as a [`Workspace`] handle. The
//!    default makes a folder on this machine ([`LocalWorkspace`]); an
//!    executor on another machine makes its own (a volume there).
//! 2. [`Executor::start_run`] once per run, before any stage: per-run
//!    resources such as a network and the services. If it fails, no stage runs.
//! 3. [`Executor::run_stage`] for each stage, possibly concurrently. The
//!    [`StageJob`] names the workspace handle and carries the stage's inputs
//!    (earlier stages' outputs for `out/`, the files of its volumes); the
//!    executor streams the process's output into [`StageJob::log`] and hands
//!    back a [`StageReport`]: the outcome, the named outputs, the artifacts
//!    and (when asked) the files the stage created or changed. When `stop`
//!    fires (timeout or cancel) it stops the stage promptly and returns
//!    [`Outcome::Stopped`]. It removes everything it created for the stage
//!    before returning, whatever happened.
//! 4. [`Executor::end_run`] once at the end, even when `start_run` failed
//!    half-way; it is idempotent. The engine then removes the workspace.
//! 5. [`Executor::reap`] at start-up removes what dead processes left.
//!
//! The engine never reads or writes the workspace itself: everything goes
//! through the job, the report and the handle.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use sentinel_api::{RunId, StageName};
use sentinel_pipeline::{ContainerAction, Limits, ServicePlan, Shell, Volume};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use crate::error::ExecError;
use crate::lease::Owner;
pub use crate::workspace::{FileSet, LocalWorkspace, Source, View};

/// Where a stage sees the run workspace.
pub const WORKSPACE_MOUNT: &str = "/workspace";
/// Where a stage sees its private folder (output file, artifacts).
pub const PRIVATE_MOUNT: &str = "/sentinel";

/// Which stream a chunk of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// A chunk of a stage's output, as raw bytes (never split on lines).
#[derive(Debug, Clone)]
pub struct Chunk {
    pub stream: Stream,
    pub bytes: Vec<u8>,
}

/// The per-run context an executor gets.
#[derive(Debug, Clone)]
pub struct RunContext {
    pub run_id: RunId,
    /// The process that owns the run's resources (for labels and the reaper).
    pub owner: Owner,
    /// Where run folders live on this machine (`<state>/runs`).
    pub runs_dir: PathBuf,
    /// Services with their environment resolved.
    pub services: Vec<(ServicePlan, Vec<Var>)>,
    /// The run's registry credentials, resolved: used for every push and
    /// every pull of an image on those hosts.
    pub registries: Vec<RegistryAuth>,
}

/// Credentials for one registry host. The values may be secrets: they are
/// given to the container engine for a push or pull, never to a stage.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryAuth {
    /// `host[:port]`, as image names write it.
    pub host: String,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

impl RegistryAuth {
    /// The credentials of the registry `image` is on, if the run has them
    /// (`host/…`, where the host has a `.` or `:` or is `localhost`).
    pub fn for_image<'a>(list: &'a [RegistryAuth], image: &str) -> Option<&'a RegistryAuth> {
        let host = image_host(image)?;
        list.iter().find(|r| r.host == host)
    }
}

/// The registry host an image name starts with, if it names one.
pub fn image_host(image: &str) -> Option<&str> {
    let (first, _) = image.split_once('/')?;
    (first.contains('.') || first.contains(':') || first == "localhost").then_some(first)
}

/// An image build with its values resolved.
#[derive(Clone, Default)]
pub struct BuildWork {
    /// The workspace folder sent as the context (`.`: all of it).
    pub context: String,
    /// The Dockerfile, relative to the context.
    pub dockerfile: String,
    pub args: Vec<(String, String)>,
    pub target: Option<String>,
    pub labels: Vec<(String, String)>,
    /// The image's names; the first is its output `image`.
    pub tags: Vec<String>,
    pub pull: bool,
    pub no_cache: bool,
    /// The tags pushed after the build.
    pub push: Vec<String>,
    /// Secret mounts by id, with their values (given to the engine's
    /// BuildKit over the build's session only).
    pub secrets: Vec<(String, String)>,
}

impl std::fmt::Debug for BuildWork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildWork")
            .field("context", &self.context)
            .field("dockerfile", &self.dockerfile)
            .field("args", &self.args)
            .field("tags", &self.tags)
            .field("push", &self.push)
            .field(
                "secrets",
                &self.secrets.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// One variable of a stage's environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Var {
    pub name: String,
    pub value: String,
    /// The value holds a secret: it must not be visible from outside the
    /// stage (a container gets it from a file its shell reads, never as a
    /// variable of the container's configuration).
    pub secret: bool,
}

impl Var {
    /// A variable that holds no secret.
    pub fn plain(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            value: value.into(),
            secret: false,
        }
    }
}

/// What a WebAssembly step stage runs, and what it is granted.
#[derive(Debug, Clone)]
pub struct StepWork {
    /// The step's name (its settings' namespace).
    pub name: String,
    pub wasm: PathBuf,
    /// `sha256:<hex>` of the component.
    pub digest: String,
    pub workspace: sentinel_pipeline::WorkspaceAccess,
    /// Hosts it may reach over HTTP (settings already substituted).
    pub http: Vec<String>,
}

/// What a stage does, by kind: the plan's [`sentinel_pipeline::Action`]
/// with everything resolved.
#[derive(Debug, Clone)]
pub enum Work {
    /// A script in a container.
    Container(ContainerAction),
    /// A WebAssembly step.
    Step(StepWork),
    /// Steps in turn in one container.
    Job(JobWork),
    /// An image build.
    Build(BuildWork),
}

/// Where a job's container sees its script steps' folders (read-only).
pub const STEPS_MOUNT: &str = "/sentinel-steps";

/// A job with everything resolved: each step's script (a script step's is
/// made here: its settings exported, its `run.sh` run) or WebAssembly work.
#[derive(Debug, Clone)]
pub struct JobWork {
    pub image: String,
    pub shell: Shell,
    pub steps: Vec<JobStepWork>,
    /// Run after `steps`, whatever happened to them.
    pub after_steps: Vec<JobStepWork>,
    /// Script step folders of this machine and where the container sees
    /// them (read-only).
    pub mounts: Vec<(PathBuf, String)>,
    /// Commit the container as this image once the steps succeeded.
    pub commit: Option<String>,
    /// Runs the job's WebAssembly steps (on the job's workspace); set by
    /// [`Dispatch`].
    pub steps_executor: Option<Arc<dyn Executor>>,
}

/// One step of a job.
#[derive(Debug, Clone)]
pub struct JobStepWork {
    pub name: String,
    pub run: JobStepRun,
    /// The step's own timeout.
    pub timeout: Option<std::time::Duration>,
}

/// What a job's step runs.
#[derive(Debug, Clone)]
pub enum JobStepRun {
    /// A script for the job's shell.
    Script(String),
    /// A WebAssembly step with its environment (context and settings).
    Wasm { work: StepWork, env: Vec<Var> },
}

impl JobWork {
    /// A job of scripts only (tests, benchmarks).
    pub fn scripts(image: &str, steps: &[(&str, &str)], after_steps: &[(&str, &str)]) -> Self {
        let list = |l: &[(&str, &str)]| {
            l.iter()
                .map(|(n, s)| JobStepWork {
                    name: n.to_string(),
                    run: JobStepRun::Script(s.to_string()),
                    timeout: None,
                })
                .collect()
        };
        Self {
            image: image.to_string(),
            shell: Shell::Strict,
            steps: list(steps),
            after_steps: list(after_steps),
            mounts: Vec::new(),
            commit: None,
            steps_executor: None,
        }
    }

    /// True when a step runs in the WebAssembly sandbox.
    pub fn has_wasm(&self) -> bool {
        self.steps
            .iter()
            .chain(&self.after_steps)
            .any(|s| matches!(s.run, JobStepRun::Wasm { .. }))
    }
}

/// A volume with the files it carries: the captured files of an earlier
/// stage, when they were kept.
#[derive(Debug, Clone)]
pub struct VolumeInput {
    pub volume: Volume,
    pub files: Option<FileSet>,
}

/// What a stage starts from besides the workspace.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// `out/<stage>` files: finished stages' outputs (masked, or raw for a
    /// sensitive stage's own file), written before the stage starts.
    pub outputs: Vec<(StageName, Arc<Vec<u8>>)>,
    /// The stage's volumes.
    pub volumes: Vec<VolumeInput>,
}

/// One stage to run.
#[derive(Debug, Clone)]
pub struct StageJob {
    pub run_id: RunId,
    pub stage: StageName,
    pub owner: Owner,
    pub work: Work,
    /// The full environment, in order, with secrets resolved.
    pub env: Vec<Var>,
    pub limits: Limits,
    /// `uid:gid` the process runs as.
    pub user: String,
    /// The run's workspace.
    pub workspace: Arc<dyn Workspace>,
    pub inputs: Inputs,
    /// Where to put the files the stage creates or changes in the
    /// workspace, when they are to be kept (`None`: not wanted).
    pub capture: Option<PathBuf>,
    /// Where output goes; the engine masks, caps and stores it.
    pub log: mpsc::Sender<Chunk>,
}

impl StageJob {
    /// The environment as plain pairs (for a runtime in this process).
    pub fn env_pairs(&self) -> Vec<(String, String)> {
        self.env
            .iter()
            .map(|v| (v.name.clone(), v.value.clone()))
            .collect()
    }
}

/// How a stage's process ended. Outcomes are named, never guessed from flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The process exited; 0 is success.
    Exited { code: i64 },
    /// It was killed by a signal that no one here sent (exit code 128 + n),
    /// not by the kernel's out-of-memory killer.
    Signalled { code: i64, signal: i32 },
    /// The kernel killed it for exceeding its memory limit.
    OomKilled,
    /// A WebAssembly step tried to grow its memory past its limit.
    MemoryLimit,
    /// A WebAssembly step trapped (the message says why).
    Trap(String),
    /// It was stopped because `stop` fired.
    Stopped,
    /// It was stopped by a limit of its own (a job step's timeout); the
    /// message says which.
    TimedOut(String),
    /// It could not start (image missing, invalid configuration…).
    StartFailed(String),
    /// The executor failed while it ran.
    Error(String),
}

/// What the executor hands back besides the outcome.
#[derive(Debug, Clone, Default)]
pub struct StageReport {
    pub outcome: Outcome,
    /// The content id of the image that ran, when known.
    pub image_id: Option<String>,
    /// The text the stage wrote to `$SENTINEL_OUTPUT`, when any.
    pub outputs: Option<String>,
    /// A folder of this machine holding the stage's artifacts, when it left any.
    pub artifacts: Option<PathBuf>,
    /// The files it created or changed, when [`StageJob::capture`] asked for them.
    pub files: Option<FileSet>,
    /// Things the executor noticed that the stage's document should say.
    pub warnings: Vec<String>,
    /// A job's steps, as they ended.
    pub steps: Vec<sentinel_api::JobStepDoc>,
}

impl Default for Outcome {
    fn default() -> Self {
        Self::Error("no outcome".into())
    }
}

impl StageReport {
    /// A report of just an outcome.
    pub fn of(outcome: Outcome) -> Self {
        Self {
            outcome,
            ..Self::default()
        }
    }
}

/// The run's workspace, as the executor that made it provides it.
#[async_trait]
pub trait Workspace: Send + Sync + std::fmt::Debug {
    /// Where it is, for messages.
    fn describe(&self) -> String;
    /// The workspace when it is a folder of this machine (a local executor
    /// bind-mounts or preopens it); `None` for a workspace elsewhere.
    fn local(&self) -> Option<&LocalWorkspace>;
    /// A folder of this machine with the workspace's files, for a step that
    /// runs in this process: the folder itself when local, else a copy.
    async fn open_view(&self, write: bool) -> Result<View, ExecError>;
    /// Ends a view; a write view's changes go back into the workspace.
    async fn close_view(&self, view: View) -> Result<(), ExecError>;
    /// Removes the workspace; idempotent.
    async fn remove(&self);
    /// The SHA-256 of the workspace files matching `patterns` (a cache key's
    /// `${hash(…)}`).
    async fn hash_files(&self, patterns: &[String]) -> Result<String, ExecError> {
        let _ = patterns;
        Err(no_cache(self))
    }
    /// Puts a cache entry (a tar made by [`Workspace::pack_cache`]) back
    /// into the workspace and `stage`'s cache folder, owned by `user`.
    async fn restore_cache(
        &self,
        stage: &StageName,
        archive: &std::path::Path,
        staging: &std::path::Path,
        user: &str,
    ) -> Result<(), ExecError> {
        let _ = (stage, archive, staging, user);
        Err(no_cache(self))
    }
    /// Packs a cache's `paths` (of the workspace and `stage`'s cache
    /// folder) into the tar file `to`; returns its size.
    async fn pack_cache(
        &self,
        stage: &StageName,
        paths: &[sentinel_pipeline::CachePath],
        to: &std::path::Path,
    ) -> Result<u64, ExecError> {
        let _ = (stage, paths, to);
        Err(no_cache(self))
    }
}

/// A stage that will probably run soon (its dependencies are under way),
/// for an executor to get ready ahead of it.
#[derive(Debug, Clone)]
pub struct WarmStage {
    pub run_id: RunId,
    pub stage: StageName,
    pub owner: Owner,
    pub work: Work,
    pub limits: Limits,
    /// `uid:gid` the process will run as.
    pub user: String,
    pub workspace: Arc<dyn Workspace>,
}

/// The error of a workspace that implements no cache.
fn no_cache<W: Workspace + ?Sized>(ws: &W) -> ExecError {
    ExecError::said(
        crate::error::ErrorKind::Permanent,
        format!("the workspace at {} keeps no cache", ws.describe()),
    )
}

/// Runs stages. See the module documentation for the lifecycle.
#[async_trait]
pub trait Executor: Send + Sync + std::fmt::Debug {
    /// Makes the run's workspace from `source`. The default is a folder of
    /// this machine under [`RunContext::runs_dir`].
    async fn prepare_workspace(
        &self,
        ctx: &RunContext,
        source: &Source,
    ) -> Result<Arc<dyn Workspace>, ExecError> {
        let ws = LocalWorkspace::prepare(ctx, source).await?;
        Ok(Arc::new(ws))
    }
    /// Sets up per-run resources (network, services).
    async fn start_run(&self, ctx: &RunContext) -> Result<(), ExecError>;
    /// Gets ready for a stage that will probably run soon — pull its image,
    /// create and start its container waiting for its inputs — so that
    /// [`Executor::run_stage`] only hands it its environment. Returns at
    /// once (the work goes on in the background) and never fails: a stage
    /// not made ready runs the usual way; one that never runs is removed
    /// with the run. The default does nothing.
    async fn prewarm(&self, warm: WarmStage) {
        let _ = warm;
    }
    /// Runs one stage to its end, or until `stop` fires.
    async fn run_stage(&self, job: StageJob, stop: CancellationToken) -> StageReport;
    /// Removes every resource of the run. Idempotent.
    async fn end_run(&self, run_id: &RunId);
    /// Removes resources whose owner process is dead; returns how many.
    async fn reap(&self) -> usize;
}

/// Sends each kind of stage to the executor that runs it: steps to the
/// WebAssembly runtime, everything else to the container executor, which
/// also makes the workspace.
#[derive(Debug)]
pub struct Dispatch {
    pub containers: Arc<dyn Executor>,
    pub steps: Arc<dyn Executor>,
}

impl Dispatch {
    fn for_work(&self, work: &Work) -> &Arc<dyn Executor> {
        match work {
            Work::Step(_) => &self.steps,
            Work::Container(_) | Work::Job(_) | Work::Build(_) => &self.containers,
        }
    }
}

#[async_trait]
impl Executor for Dispatch {
    async fn prepare_workspace(
        &self,
        ctx: &RunContext,
        source: &Source,
    ) -> Result<Arc<dyn Workspace>, ExecError> {
        self.containers.prepare_workspace(ctx, source).await
    }

    async fn start_run(&self, ctx: &RunContext) -> Result<(), ExecError> {
        self.containers.start_run(ctx).await?;
        self.steps.start_run(ctx).await
    }

    async fn run_stage(&self, mut job: StageJob, stop: CancellationToken) -> StageReport {
        if let Work::Job(j) = &mut job.work
            && j.has_wasm()
        {
            j.steps_executor = Some(self.steps.clone());
        }
        self.for_work(&job.work).clone().run_stage(job, stop).await
    }

    async fn prewarm(&self, warm: WarmStage) {
        self.for_work(&warm.work).prewarm(warm.clone()).await
    }

    async fn end_run(&self, run_id: &RunId) {
        self.steps.end_run(run_id).await;
        self.containers.end_run(run_id).await;
    }

    async fn reap(&self) -> usize {
        self.containers.reap().await + self.steps.reap().await
    }
}

/// Renders variables as a shell file that exports them (`export NAME='v'`),
/// for a container's shell to read before its script starts.
pub fn env_file(vars: &[Var]) -> String {
    let mut out = String::new();
    for v in vars {
        out.push_str("export ");
        out.push_str(&v.name);
        out.push_str("='");
        out.push_str(&v.value.replace('\'', "'\\''"));
        out.push_str("'\n");
    }
    out
}

/// The named outputs, parsed, keyed by name (for executors and tests).
pub type Named = BTreeMap<String, String>;
