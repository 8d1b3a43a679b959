//! The engine: runs a [`sentinel_pipeline::Plan`] as a DAG of stages.
//!
//! It owns the scheduler ([`run::Engine`]), the single state-transition
//! function ([`transition`]), the secret masker ([`masker`]), each stage's
//! log pipeline ([`log`]) and the interfaces it needs from the outside:
//! [`exec::Executor`] (Docker, WebAssembly), [`ports::Store`] (sled) and
//! [`ports::ResultsSink`] (local folder, S3). It never names Docker, sled or S3.

pub mod docs;
pub mod env;
pub mod exec;
pub mod fake;
pub mod lease;
pub mod log;
pub mod masker;
pub mod outbox;
pub mod ports;
pub mod publish;
pub mod queue;
pub mod record;
pub mod recover;
pub mod run;
pub mod stage;
pub mod stage_state;
pub mod transition;
pub mod workspace;

pub use exec::{Executor, Outcome, StageJob, StageReport};
pub use ports::{ResultsSink, StorageError, Store};
pub use run::{
    Engine, EngineConfig, PreflightError, Progress, ProgressFn, Reused, RunRequest, Signals,
};
