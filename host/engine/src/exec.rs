//! The executor interface: how the engine asks something (Docker, a
//! WebAssembly runtime, a fake in tests) to run one stage.
//!
//! ## Lifecycle
//!
//! 1. [`Executor::start_run`] once per run, before any stage: per-run
//!    resources such as a network and the services. If it fails, no stage runs.
//! 2. [`Executor::run_stage`] for each stage, possibly concurrently. It streams
//!    the process's output into [`StageJob::log`] and returns an [`Outcome`].
//!    When `stop` fires (timeout or cancel) it stops the stage promptly and
//!    returns [`Outcome::Stopped`]. It removes everything it created for the
//!    stage before returning, whatever happened.
//! 3. [`Executor::end_run`] once at the end, even when `start_run` failed
//!    half-way; it is idempotent.
//! 4. [`Executor::reap`] at start-up removes what dead processes left.
//!
//! The engine never assumes the executor shares its disk: the workspace and
//! the stage's private folder are host paths the executor mounts or copies.

use std::path::PathBuf;

use async_trait::async_trait;
use sentinel_api::{RunId, StageName};
use sentinel_pipeline::{Limits, ServicePlan};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::lease::Owner;

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
    /// Services with their environment resolved.
    pub services: Vec<(ServicePlan, Vec<(String, String)>)>,
}

/// What a WebAssembly step stage runs, and what it is granted.
#[derive(Debug, Clone)]
pub struct StepJob {
    /// The step's name (its settings' namespace).
    pub name: String,
    pub wasm: PathBuf,
    /// `sha256:<hex>` of the component.
    pub digest: String,
    pub workspace: sentinel_pipeline::WorkspaceAccess,
    /// Hosts it may reach over HTTP (settings already substituted).
    pub http: Vec<String>,
}

/// One stage to run.
#[derive(Debug, Clone)]
pub struct StageJob {
    pub run_id: RunId,
    pub stage: StageName,
    pub owner: Owner,
    pub image: String,
    pub script: String,
    /// The full environment, in order, with secrets resolved.
    pub env: Vec<(String, String)>,
    pub limits: Limits,
    /// `uid:gid` the process runs as.
    pub user: String,
    /// Host folder seen at [`WORKSPACE_MOUNT`].
    pub workspace: PathBuf,
    /// Host folder seen at [`PRIVATE_MOUNT`].
    pub private_dir: PathBuf,
    /// Where output goes; the engine masks, caps and stores it.
    pub log: mpsc::Sender<Chunk>,
    /// Set for WebAssembly steps (then `image` and `script` are empty).
    pub step: Option<StepJob>,
}

/// How a stage's process ended. Outcomes are named, never guessed from flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The process exited; 0 is success.
    Exited { code: i64 },
    /// The kernel killed it for exceeding its memory limit.
    OomKilled,
    /// A WebAssembly step tried to grow its memory past its limit.
    MemoryLimit,
    /// A WebAssembly step trapped (the message says why).
    Trap(String),
    /// It was stopped because `stop` fired.
    Stopped,
    /// It could not start (image missing, invalid configuration…).
    StartFailed(String),
    /// The executor failed while it ran.
    Error(String),
}

/// What the executor reports besides the outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageReport {
    pub outcome: Outcome,
    /// The content id of the image that ran, when known.
    pub image_id: Option<String>,
}

/// Why a run's resources could not be set up.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct StartRunError(pub String);

/// Runs stages. See the module documentation for the lifecycle.
#[async_trait]
pub trait Executor: Send + Sync + std::fmt::Debug {
    /// Sets up per-run resources (network, services).
    async fn start_run(&self, ctx: &RunContext) -> Result<(), StartRunError>;
    /// Runs one stage to its end, or until `stop` fires.
    async fn run_stage(&self, job: StageJob, stop: CancellationToken) -> StageReport;
    /// Removes every resource of the run. Idempotent.
    async fn end_run(&self, run_id: &RunId);
    /// Removes resources whose owner process is dead; returns how many.
    async fn reap(&self) -> usize;
}

/// Sends container stages to one executor and WebAssembly steps to another.
#[derive(Debug)]
pub struct Dispatch {
    pub containers: std::sync::Arc<dyn Executor>,
    pub steps: std::sync::Arc<dyn Executor>,
}

#[async_trait]
impl Executor for Dispatch {
    async fn start_run(&self, ctx: &RunContext) -> Result<(), StartRunError> {
        self.containers.start_run(ctx).await?;
        self.steps.start_run(ctx).await
    }

    async fn run_stage(&self, job: StageJob, stop: CancellationToken) -> StageReport {
        if job.step.is_some() {
            self.steps.run_stage(job, stop).await
        } else {
            self.containers.run_stage(job, stop).await
        }
    }

    async fn end_run(&self, run_id: &RunId) {
        self.steps.end_run(run_id).await;
        self.containers.end_run(run_id).await;
    }

    async fn reap(&self) -> usize {
        self.containers.reap().await + self.steps.reap().await
    }
}
