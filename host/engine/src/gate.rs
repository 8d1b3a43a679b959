//! Approval gates (`approval: ENV` on a stage): what a run is told about
//! each gate — go on, refused, cancelled, or wait — and what it takes up
//! again when an answered gate lets a paused run go on. A run whose gates
//! all wait while nothing else can run pauses as `waiting_approval`: its
//! containers, lease and worker slot are given back, and whoever answers
//! the gate queues the same run again with a [`Resume`].

use sentinel_api::{Approval, GateDoc, RunDoc, StageDoc};

/// What a run does at an approval gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// The stage runs: approved (the answer), or its environment asks for
    /// no approval (the note says so).
    Pass {
        gate: Option<GateDoc>,
        note: Option<String>,
    },
    /// The stage fails with the reason: refused, timed out, or nobody can
    /// answer it here.
    Refuse {
        gate: Option<GateDoc>,
        reason: String,
    },
    /// The run was cancelled while this gate waited.
    Cancel { gate: GateDoc },
    /// No answer yet: the gate waits, under this deployment (a new one is
    /// made when `None`), for its environment's approval.
    Wait {
        environment: String,
        deployment: Option<String>,
    },
}

impl Gate {
    /// The gate of a stage nobody can approve here.
    pub fn nobody(environment: &str) -> Self {
        Gate::Refuse {
            gate: None,
            reason: format!(
                "the stage waits for an approval to deploy to `{environment}`, which only a server gives (`sentinel run --approve {environment}` approves it here)"
            ),
        }
    }

    /// The answered gate of `doc`, taking its answer.
    pub fn answered(gate: &GateDoc, answer: &Approval, cancelled: bool) -> Self {
        let gate = GateDoc {
            answer: Some(answer.clone()),
            ..gate.clone()
        };
        if cancelled {
            return Gate::Cancel { gate };
        }
        if answer.approved {
            return Gate::Pass {
                gate: Some(gate),
                note: None,
            };
        }
        let reason = format!(
            "not approved for `{}`: refused by {}{}",
            gate.environment,
            answer.by,
            answer
                .reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        );
        Gate::Refuse {
            gate: Some(gate),
            reason,
        }
    }
}

/// What a run whose stages all wait or ended does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stuck {
    /// Every stage ended.
    Done,
    /// Only gates wait: the run pauses.
    Pause,
    /// The run failed or was cancelled while gates waited: they were
    /// closed, and what comes after them is decided now.
    GatesClosed,
}

/// A paused run going on: its document and its stages' as they were.
/// Stages that ended stay as they ended (their logs and documents are
/// kept); the others run now.
#[derive(Debug, Clone)]
pub struct Resume {
    pub run: RunDoc,
    pub stages: Vec<StageDoc>,
}
