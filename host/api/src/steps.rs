//! What a server knows of its steps (`GET /api/v1/steps`, `sentinel step
//! show --json`): for each, what it may do — settings, hosts, workspace
//! access — and what it is: size, digest, where it came from, who signed it.

use serde::{Deserialize, Serialize};

/// One setting of a step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepSettingInfo {
    pub key: String,
    /// The variable the step reads it from (`SENTINEL_<STEP>_<KEY>`).
    pub env: String,
    pub required: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    pub secret: bool,
    #[serde(default)]
    pub description: String,
}

/// One version of one step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepInfo {
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub description: String,
    /// `wasm` or `script`.
    pub kind: String,
    /// `sha256:…` of the component (of a script step: of its folder).
    pub digest: String,
    pub size: u64,
    /// `bundled` (a local step folder) or where it was pulled from.
    pub source: String,
    /// The signer's key, when it is signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
    /// `none`, `read` or `write`.
    pub workspace: String,
    /// Hosts it may reach over HTTP (`{setting}`: the host of that setting).
    #[serde(default)]
    pub http: Vec<String>,
    #[serde(default)]
    pub settings: Vec<StepSettingInfo>,
}

/// `GET /api/v1/steps`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepsDoc {
    pub steps: Vec<StepInfo>,
}
