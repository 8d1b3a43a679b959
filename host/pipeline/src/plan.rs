//! The resolved plan: what the engine runs. It is independent of the YAML
//! (other dialects will produce the same plan) and fully validated: every
//! name it holds exists, the graph is acyclic and stages are in topological
//! order.

use std::collections::BTreeMap;
use std::time::Duration;

use sentinel_api::{StageKind, StageName};
use serde::{Serialize, Serializer};

use crate::template::Template;

/// A validated pipeline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    /// The format version it was read from.
    pub version: u32,
    pub name: String,
    /// Declared secret names.
    pub secrets: Vec<String>,
    /// Pipeline-wide variables.
    pub env: BTreeMap<String, EnvValue>,
    pub services: Vec<ServicePlan>,
    /// Stages in a topological order (file order among equals).
    pub stages: Vec<StagePlan>,
}

impl Plan {
    /// The stage with this name.
    pub fn stage(&self, name: &StageName) -> Option<&StagePlan> {
        self.stages.iter().find(|s| &s.name == name)
    }
}

/// A pipeline-wide variable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EnvValue {
    /// A value, possibly with `${run.*}` / `${git.*}` references.
    Value(Template),
    /// Taken from the environment `sentinel` runs in (`NAME: ~`).
    FromHost,
}

/// When a stage runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum When {
    OnSuccess,
    OnFailure,
    Always,
}

impl When {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OnSuccess => "on_success",
            Self::OnFailure => "on_failure",
            Self::Always => "always",
        }
    }
}

/// The network a container joins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Network {
    /// No network at all (loopback only).
    None,
    /// Docker's default bridge.
    Bridge,
    /// The run's own network, shared with its services.
    Run,
}

impl Network {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Bridge => "bridge",
            Self::Run => "run",
        }
    }
}

fn ser_ms<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

/// The effective limits of one stage (stage value, else pipeline default,
/// else the built-in default).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Limits {
    #[serde(rename = "timeout_ms", serialize_with = "ser_ms")]
    pub timeout: Duration,
    /// Bytes.
    pub memory: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    pub network: Network,
    /// Bytes of log kept.
    pub log_limit: u64,
    pub pids: u32,
    /// `uid[:gid]`, when set in the file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

impl Limits {
    /// The built-in defaults.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);
    pub const DEFAULT_MEMORY: u64 = 2 << 30;
    pub const DEFAULT_LOG_LIMIT: u64 = 4 << 20;
    pub const DEFAULT_PIDS: u32 = 1024;

    /// The limits as strings, for the stage document.
    pub fn describe(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        m.insert(
            "timeout".into(),
            humantime::format_duration(self.timeout).to_string(),
        );
        m.insert("memory".into(), self.memory.to_string());
        if let Some(c) = self.cpus {
            m.insert("cpus".into(), c.to_string());
        }
        m.insert("network".into(), self.network.as_str().into());
        m.insert("log_limit".into(), self.log_limit.to_string());
        m.insert("pids".into(), self.pids.to_string());
        if let Some(u) = &self.user {
            m.insert("user".into(), u.clone());
        }
        m
    }
}

/// What a stage executes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// A `run:` script in a container.
    Container { image: String, script: String },
    /// A WebAssembly step with its settings (every setting of the manifest:
    /// the value from `with:`, else the manifest's default).
    Step {
        step: String,
        with: BTreeMap<String, Template>,
        resolved: Box<crate::step::ResolvedStep>,
    },
}

/// A validated stage.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StagePlan {
    pub name: StageName,
    pub action: Action,
    /// Direct dependencies, sorted: `after:`, references and `volumes:`,
    /// plus every other stage for a finalizer.
    pub needs: Vec<StageName>,
    pub when: When,
    /// A `when: always | on_failure` stage with no dependencies of its own,
    /// which therefore comes after every other stage.
    pub finalizer: bool,
    pub env: BTreeMap<String, Template>,
    pub volumes: Vec<StageName>,
    pub sensitive: bool,
    pub limits: Limits,
}

impl StagePlan {
    /// The kind recorded in documents.
    pub fn kind(&self) -> StageKind {
        match self.action {
            Action::Container { .. } => StageKind::Container,
            Action::Step { .. } => StageKind::Step,
        }
    }

    /// Every template of the stage (env values and step settings).
    pub fn templates(&self) -> impl Iterator<Item = &Template> {
        let with = match &self.action {
            Action::Step { with, .. } => Some(with.values()),
            Action::Container { .. } => None,
        };
        self.env.values().chain(with.into_iter().flatten())
    }
}

/// A validated service.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServicePlan {
    pub name: String,
    pub image: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    pub env: BTreeMap<String, Template>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready: Option<String>,
    #[serde(rename = "ready_timeout_ms", serialize_with = "ser_ms")]
    pub ready_timeout: Duration,
}
