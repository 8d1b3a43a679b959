//! Shared vocabulary of Sentinel: validated ids, statuses and the versioned
//! JSON documents (run, stage, index) that the host writes and the web app reads.
//!
//! This crate has no heavy dependencies and builds for `wasm32` as well, so the
//! web app shares these types with the host instead of re-declaring them.

pub mod deploy;
pub mod docs;
pub mod ids;
pub mod index;
pub mod keys;
pub mod status;
pub mod steps;

pub use deploy::{
    Approval, DeployFacts, DeploySource, DeploymentDoc, DeploymentStatus, DeploymentsDoc, GateDoc,
};
pub use docs::{
    AttemptDoc, CacheDoc, CacheResult, GitContext, IndexPage, JobStepDoc, PullRequestDoc,
    ResolvedInputs, RunDoc, RunStageEntry, RunSummary, SCHEMA_VERSION, StageDoc, StageKind,
    Trigger, TriggerKind,
};
pub use ids::{IdError, RunId, StageName};
pub use index::{SchemaError, decode};
pub use status::{FailureKind, RunStatus, StageStatus};
pub use steps::{StepInfo, StepSettingInfo, StepsDoc};
