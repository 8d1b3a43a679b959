//! Statuses of runs and stages, and the named kinds of failure.
//!
//! Statuses are enums, never strings or flags; how a stage moves between them
//! is decided by the engine's single transition function.

use serde::{Deserialize, Serialize};

/// Where a stage is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageStatus {
    /// The run was accepted; nothing is scheduled yet.
    Queued,
    /// Waiting for its dependencies.
    Pending,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
    /// Not run: its `when:` condition did not hold (the reason says why).
    Skipped,
    /// The host died while the stage was not final.
    Interrupted,
    /// An approval gate (`approval: ENV`) waiting for its answer; the run
    /// waits with it, holding nothing.
    WaitingApproval,
    /// Written by a newer Sentinel: shown as unknown.
    #[serde(other)]
    Unknown,
}

impl StageStatus {
    /// True once the stage can never change again.
    pub fn is_final(self) -> bool {
        !matches!(
            self,
            Self::Queued | Self::Pending | Self::Running | Self::WaitingApproval | Self::Unknown
        )
    }

    /// True for the outcomes that make a run fail.
    pub fn is_failure(self) -> bool {
        matches!(self, Self::Failed | Self::TimedOut | Self::Interrupted)
    }

    /// The status as its lower-case wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::TimedOut => "timed_out",
            Self::Cancelled => "cancelled",
            Self::Skipped => "skipped",
            Self::Interrupted => "interrupted",
            Self::WaitingApproval => "waiting_approval",
            Self::Unknown => "unknown",
        }
    }
}

/// Where a run is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    Interrupted,
    /// Paused at an approval gate: no container, lease or worker slot is
    /// held; an answer queues it again (the same run) to go on.
    WaitingApproval,
    /// Written by a newer Sentinel: shown as unknown.
    #[serde(other)]
    Unknown,
}

impl RunStatus {
    /// True once the run can never change again.
    pub fn is_final(self) -> bool {
        !matches!(
            self,
            Self::Queued | Self::Running | Self::WaitingApproval | Self::Unknown
        )
    }

    /// The status as its lower-case wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Interrupted => "interrupted",
            Self::WaitingApproval => "waiting_approval",
            Self::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for StageStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a stage that did not succeed ended the way it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The process exited with a non-zero code.
    ExitCode,
    /// The kernel killed the process for exceeding its memory limit.
    OomKilled,
    /// A WebAssembly step tried to grow its memory past its limit.
    MemoryLimit,
    /// The stage ran past its timeout.
    Timeout,
    /// The stage could not start (missing image, bad configuration…).
    StartError,
    /// The stage's sandbox or runtime failed (a trap, an engine error).
    RuntimeError,
    /// A dependency did not succeed, so this stage did not run.
    DependencyFailed,
    /// The run was cancelled.
    Cancelled,
    /// The host process died.
    HostDied,
    /// Its approval gate was refused (or timed out).
    Rejected,
    /// Written by a newer Sentinel.
    #[serde(other)]
    Unknown,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A status written by a newer Sentinel reads as unknown — not an
    /// error — and is not final, so no reader takes the run for ended.
    #[test]
    fn a_status_this_version_does_not_know_reads_as_unknown() {
        let run: RunStatus = serde_json::from_str(r#""frozen""#).unwrap();
        assert_eq!(run, RunStatus::Unknown);
        assert_eq!(run.as_str(), "unknown");
        assert!(!run.is_final());
        let stage: StageStatus = serde_json::from_str(r#""thawing""#).unwrap();
        assert_eq!(stage, StageStatus::Unknown);
        assert!(!stage.is_final() && !stage.is_failure());
        let kind: FailureKind = serde_json::from_str(r#""meteor""#).unwrap();
        assert_eq!(kind, FailureKind::Unknown);
        let waiting: RunStatus = serde_json::from_str(r#""waiting_approval""#).unwrap();
        assert_eq!(waiting, RunStatus::WaitingApproval);
        assert!(!waiting.is_final());
    }
}
