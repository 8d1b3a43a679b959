//! Deployments: what a deploy run deploys (its facts, which its stages read
//! as `${deploy.*}` and `DEPLOY_*`), and the durable record of each deploy
//! — requested by a marker, a promotion or a pipeline — with its status.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::RunId;

/// What a deploy run deploys.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployFacts {
    pub app: String,
    pub version: String,
    pub environment: String,
    /// The payload's `imageVersion`.
    #[serde(default)]
    pub image_version: String,
    /// The payload's `numInstance`.
    #[serde(default)]
    pub instances: u64,
    #[serde(default)]
    pub domain: String,
}

impl DeployFacts {
    /// The `DEPLOY_*` variables a deploy run's stages get, in a fixed order.
    pub fn vars(&self) -> [(&'static str, String); 6] {
        [
            ("DEPLOY_APP", self.app.clone()),
            ("DEPLOY_VERSION", self.version.clone()),
            ("DEPLOY_IMAGE_VERSION", self.image_version.clone()),
            ("DEPLOY_INSTANCES", self.instances.to_string()),
            ("DEPLOY_ENVIRONMENT", self.environment.clone()),
            ("DEPLOY_DOMAIN", self.domain.clone()),
        ]
    }
}

/// The names of the variables [`DeployFacts::vars`] sets: reserved.
pub const DEPLOY_VARS: [&str; 6] = [
    "DEPLOY_APP",
    "DEPLOY_VERSION",
    "DEPLOY_IMAGE_VERSION",
    "DEPLOY_INSTANCES",
    "DEPLOY_ENVIRONMENT",
    "DEPLOY_DOMAIN",
];

/// Where a deploy came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DeploySource {
    /// A `.deploy` marker a watcher found.
    Marker { watcher: String, key: String },
    /// A person promoted a run.
    Promotion {
        from_run: RunId,
        #[serde(default)]
        rollback: bool,
    },
    /// A pipeline's approval gate (`approval: ENV` on a stage of `run`).
    Pipeline {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        run: Option<RunId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stage: Option<crate::StageName>,
    },
    /// Written by a newer Sentinel.
    #[serde(other)]
    Unknown,
}

/// Where a deploy stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentStatus {
    /// Its environment asks for an approval: nothing is queued until a
    /// token with the `deploy` scope approves.
    WaitingApproval,
    /// Its run waits in the queue.
    Queued,
    Running,
    Succeeded,
    /// The payload was refused or the run failed: the reason says which.
    Failed,
    Cancelled,
    /// Its run's server died.
    Interrupted,
    /// Not newer than what was deployed: nothing ran.
    Ignored,
    /// Its approval was refused, or did not come in time: nothing ran.
    Rejected,
    /// Written by a newer Sentinel: shown as unknown.
    #[serde(other)]
    Unknown,
}

impl DeploymentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WaitingApproval => "waiting_approval",
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Interrupted => "interrupted",
            Self::Ignored => "ignored",
            Self::Rejected => "rejected",
            Self::Unknown => "unknown",
        }
    }

    /// True once nothing more happens to it.
    pub fn is_final(self) -> bool {
        !matches!(self, Self::WaitingApproval | Self::Queued | Self::Running)
    }

    /// A deploy's status from its run's.
    pub fn of_run(s: crate::RunStatus) -> Self {
        use crate::RunStatus as R;
        match s {
            R::Queued => Self::Queued,
            R::Running => Self::Running,
            R::Succeeded => Self::Succeeded,
            R::Failed => Self::Failed,
            R::Cancelled => Self::Cancelled,
            R::Interrupted => Self::Interrupted,
            R::WaitingApproval => Self::WaitingApproval,
            R::Unknown => Self::Unknown,
        }
    }
}

impl std::fmt::Display for DeploymentStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An approval's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    pub approved: bool,
    /// The token's name (`sentinel` for a wait that timed out).
    pub by: String,
    pub at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// An approval gate of a stage (`approval: ENV`), as its stage document
/// records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateDoc {
    /// The environment whose approval it waits for.
    pub environment: String,
    /// The deployment that asks for the approval (none for a run approved
    /// on the command line).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub deployment: String,
    /// The answer, once there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<Approval>,
}

impl DeploymentDoc {
    /// The run an approval gate of a pipeline paused, when this deployment
    /// is such a gate's.
    pub fn gate_run(&self) -> Option<&RunId> {
        match &self.source {
            DeploySource::Pipeline { run, .. } => run.as_ref(),
            _ => None,
        }
    }

    /// A deployment asked for now (queued until decided otherwise).
    pub fn requested(
        id: String,
        app: &str,
        environment: &str,
        version: &str,
        source: DeploySource,
    ) -> Self {
        Self {
            schema: crate::SCHEMA_VERSION,
            id,
            app: app.to_string(),
            environment: environment.to_string(),
            version: version.to_string(),
            source,
            status: DeploymentStatus::Queued,
            reason: None,
            run: None,
            requested: Utc::now(),
            finished: None,
            approval: None,
            facts: None,
        }
    }
}

/// What is deployed where, as the results layout publishes it
/// (`deployments/index.json`), for the web app and any reader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentsDoc {
    pub schema: u32,
    pub updated: DateTime<Utc>,
    /// Per environment and app, the newest deployment that succeeded.
    pub current: Vec<DeploymentDoc>,
    /// The newest deployments (at most [`DeploymentsDoc::RECENT`]), newest first.
    pub recent: Vec<DeploymentDoc>,
}

impl DeploymentsDoc {
    /// How many deployments `recent` holds at most.
    pub const RECENT: usize = 200;
}

/// One deploy, durable (in the server's state; published in [`DeploymentsDoc`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentDoc {
    pub schema: u32,
    /// Sorts by the time it was requested (a ULID).
    pub id: String,
    pub app: String,
    pub environment: String,
    pub version: String,
    pub source: DeploySource,
    pub status: DeploymentStatus,
    /// Why it failed or was ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The run that deploys it (none when nothing ran).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<RunId>,
    pub requested: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<DateTime<Utc>>,
    /// Who approved or rejected it, and when (an environment that asks
    /// for approval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
    /// The payload's facts, when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub facts: Option<DeployFacts>,
}
