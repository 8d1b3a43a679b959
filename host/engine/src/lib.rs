//! The engine: runs a [`sentinel_pipeline::Plan`] as a DAG of stages.
//!
//! It owns the scheduler ([`run::Engine`]), the single state-transition
//! function ([`transition`]), the secret masker ([`masker`]), each stage's
//! log pipeline ([`log`]) and the interfaces it needs from the outside:
//! [`exec::Executor`] (Docker, WebAssembly) with the run's
//! [`exec::Workspace`], [`ports::Store`] (sled) and [`ports::ResultsSink`]
//! (local folder, S3), whose failures are typed ([`error`]). It never names
//! Docker, sled or S3.

pub mod cache;
pub mod disk;
pub mod docs;
pub mod env;
pub mod error;
pub mod exec;
pub mod fake;
pub mod gate;
pub mod job;
pub mod lease;
pub mod log;
pub mod masker;
pub mod outbox;
pub mod ports;
pub mod prepare;
pub mod publish;
pub mod queue;
pub mod record;
pub mod recover;
pub mod request;
pub mod rerun;
pub mod retention;
pub mod retry;
pub mod run;
pub mod stage;
pub mod stage_state;
pub mod transition;
pub mod workspace;

pub use error::{ErrorKind, ExecError, ResolveError, StorageError};
pub use exec::{Executor, Outcome, StageJob, StageReport, Workspace};
pub use ports::{ResultsSink, Store};
pub use run::{
    Engine, EngineConfig, PreflightError, Progress, ProgressFn, Reused, RunRequest, Signals,
    Upstream,
};
