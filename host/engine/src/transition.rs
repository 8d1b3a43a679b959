//! The one place where statuses change: a pure transition function for
//! stages and runs, and the pure decision of what a waiting stage does once
//! its dependencies are final.

use sentinel_api::{RunStatus, StageStatus};
use sentinel_pipeline::When;

/// Something that happens to a stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageEvent {
    /// The run started; the stage waits for its dependencies.
    Schedule,
    /// The executor started it.
    Start,
    /// The executor finished it with this final status.
    Finish(StageStatus),
    /// Its `when:` condition does not hold.
    Skip,
    /// The run was cancelled before or while it ran.
    Cancel,
    /// The host died.
    Interrupt,
    /// Its approval gate has no answer yet: it waits (and the run with it).
    Wait,
    /// Its approval gate's run goes on: it is pending again.
    Resume,
}

/// A transition that the state machine does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a stage cannot go from `{from}` on {event:?}")]
pub struct InvalidTransition {
    pub from: StageStatus,
    pub event: StageEvent,
}

/// The stage state machine:
/// `queued → pending → running → succeeded | failed | timed_out | cancelled`,
/// `queued | pending → skipped | cancelled`, any non-final → `interrupted`;
/// an approval gate `pending → waiting_approval → pending | skipped |
/// cancelled`.
pub fn transition(from: StageStatus, event: StageEvent) -> Result<StageStatus, InvalidTransition> {
    use StageEvent as E;
    use StageStatus as S;
    let to = match (from, event) {
        (S::Queued, E::Schedule) => S::Pending,
        (S::Pending, E::Start) => S::Running,
        (S::Running, E::Finish(to))
            if matches!(to, S::Succeeded | S::Failed | S::TimedOut | S::Cancelled) =>
        {
            to
        }
        (S::Queued | S::Pending | S::WaitingApproval, E::Skip) => S::Skipped,
        (S::Queued | S::Pending | S::Running | S::WaitingApproval, E::Cancel) => S::Cancelled,
        (S::Queued | S::Pending | S::Running | S::WaitingApproval, E::Interrupt) => S::Interrupted,
        (S::Pending, E::Wait) => S::WaitingApproval,
        (S::WaitingApproval, E::Resume) => S::Pending,
        _ => return Err(InvalidTransition { from, event }),
    };
    Ok(to)
}

/// Something that happens to a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEvent {
    Start,
    /// All stages are final; the status is derived from them.
    Finish(RunStatus),
    Interrupt,
    /// Nothing can go on before an approval gate is answered.
    Wait,
}

/// The run state machine: `queued → running → succeeded | failed | cancelled`,
/// any non-final → `interrupted`, `queued → failed` (it could not start),
/// `running → waiting_approval → running | failed | cancelled` (an
/// approval gate: it starts again once answered).
pub fn run_transition(from: RunStatus, event: RunEvent) -> Option<RunStatus> {
    use RunEvent as E;
    use RunStatus as S;
    match (from, event) {
        (S::Queued | S::WaitingApproval, E::Start) => Some(S::Running),
        (S::Running, E::Finish(to)) if to.is_final() && to != S::Interrupted => Some(to),
        (S::Queued | S::WaitingApproval, E::Finish(to))
            if matches!(to, S::Failed | S::Cancelled) =>
        {
            Some(to)
        }
        (S::Queued | S::Running | S::WaitingApproval, E::Interrupt) => Some(S::Interrupted),
        (S::Running, E::Wait) => Some(S::WaitingApproval),
        _ => None,
    }
}

/// The final status of a run from its stages' final statuses.
pub fn run_outcome(stages: impl IntoIterator<Item = StageStatus>, cancelled: bool) -> RunStatus {
    let mut failed = false;
    for s in stages {
        failed |= s.is_failure();
    }
    if cancelled {
        RunStatus::Cancelled
    } else if failed {
        RunStatus::Failed
    } else {
        RunStatus::Succeeded
    }
}

/// What a pending stage does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Some dependency is not final yet.
    Wait,
    Run,
    /// Its condition does not hold; the reason is recorded.
    Skip(String),
    /// The run was cancelled and the stage is not an `always` stage.
    Cancel,
}

/// Decides a pending stage's fate from its dependencies' statuses, whether
/// any transitive dependency failed, and whether the run was cancelled.
pub fn decide(
    when: When,
    deps: &[(&str, StageStatus)],
    upstream_failed: bool,
    cancelled: bool,
) -> Decision {
    if deps.iter().any(|(_, s)| !s.is_final()) {
        return Decision::Wait;
    }
    if cancelled {
        return if when == When::Always {
            Decision::Run
        } else {
            Decision::Cancel
        };
    }
    match when {
        When::Always => Decision::Run,
        When::OnFailure if upstream_failed => Decision::Run,
        When::OnFailure => Decision::Skip("no dependency failed".into()),
        When::OnSuccess => match deps.iter().find(|(_, s)| *s != StageStatus::Succeeded) {
            None => Decision::Run,
            Some((name, status)) => {
                let what = match status {
                    StageStatus::Failed => "failed",
                    StageStatus::TimedOut => "timed out",
                    StageStatus::Skipped => "was skipped",
                    StageStatus::Cancelled => "was cancelled",
                    _ => "did not succeed",
                };
                Decision::Skip(format!("dependency `{name}` {what}"))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use StageEvent as E;
    use StageStatus as S;

    const ALL: [S; 10] = [
        S::WaitingApproval,
        S::Queued,
        S::Pending,
        S::Running,
        S::Succeeded,
        S::Failed,
        S::TimedOut,
        S::Cancelled,
        S::Skipped,
        S::Interrupted,
    ];

    /// The whole table: every (status, event) pair and its expected result.
    #[test]
    fn stage_transition_table() {
        let mut events = vec![
            E::Schedule,
            E::Start,
            E::Skip,
            E::Cancel,
            E::Interrupt,
            E::Wait,
            E::Resume,
        ];
        events.extend(ALL.iter().map(|s| E::Finish(*s)));
        let expected = |from: S, ev: E| -> Option<S> {
            match (from, ev) {
                (S::Queued, E::Schedule) => Some(S::Pending),
                (S::Pending, E::Start) => Some(S::Running),
                (S::Running, E::Finish(S::Succeeded)) => Some(S::Succeeded),
                (S::Running, E::Finish(S::Failed)) => Some(S::Failed),
                (S::Running, E::Finish(S::TimedOut)) => Some(S::TimedOut),
                (S::Running, E::Finish(S::Cancelled)) => Some(S::Cancelled),
                (S::Queued | S::Pending | S::WaitingApproval, E::Skip) => Some(S::Skipped),
                (S::Queued | S::Pending | S::Running | S::WaitingApproval, E::Cancel) => {
                    Some(S::Cancelled)
                }
                (S::Queued | S::Pending | S::Running | S::WaitingApproval, E::Interrupt) => {
                    Some(S::Interrupted)
                }
                (S::Pending, E::Wait) => Some(S::WaitingApproval),
                (S::WaitingApproval, E::Resume) => Some(S::Pending),
                _ => None,
            }
        };
        let mut checked = 0;
        for from in ALL {
            for ev in &events {
                assert_eq!(
                    transition(from, *ev).ok(),
                    expected(from, *ev),
                    "{from:?} on {ev:?}"
                );
                checked += 1;
            }
        }
        assert_eq!(checked, 10 * 17);
        for from in ALL.into_iter().filter(|s| s.is_final()) {
            for ev in &events {
                assert!(
                    transition(from, *ev).is_err(),
                    "final {from:?} moved on {ev:?}"
                );
            }
        }
    }

    #[test]
    fn run_transition_table() {
        use RunStatus as R;
        let all = [
            R::Queued,
            R::Running,
            R::Succeeded,
            R::Failed,
            R::Cancelled,
            R::Interrupted,
            R::WaitingApproval,
        ];
        for from in all {
            assert_eq!(
                run_transition(from, RunEvent::Start),
                matches!(from, R::Queued | R::WaitingApproval).then_some(R::Running)
            );
            assert_eq!(
                run_transition(from, RunEvent::Wait),
                (from == R::Running).then_some(R::WaitingApproval)
            );
            assert_eq!(
                run_transition(from, RunEvent::Interrupt),
                (!from.is_final()).then_some(R::Interrupted)
            );
            for to in all {
                let got = run_transition(from, RunEvent::Finish(to));
                let ok = match from {
                    R::Running => to.is_final() && to != R::Interrupted,
                    R::Queued | R::WaitingApproval => matches!(to, R::Failed | R::Cancelled),
                    _ => false,
                };
                assert_eq!(got, ok.then_some(to), "{from:?} finish {to:?}");
            }
        }
    }

    #[test]
    fn decisions() {
        let ok = [("a", S::Succeeded), ("b", S::Succeeded)];
        let failed = [("a", S::Succeeded), ("b", S::Failed)];
        let waiting = [("a", S::Running)];
        assert_eq!(
            decide(When::OnSuccess, &waiting, false, false),
            Decision::Wait
        );
        assert_eq!(decide(When::Always, &waiting, false, true), Decision::Wait);
        assert_eq!(decide(When::OnSuccess, &ok, false, false), Decision::Run);
        assert_eq!(decide(When::OnSuccess, &[], false, false), Decision::Run);
        assert_eq!(
            decide(When::OnSuccess, &failed, true, false),
            Decision::Skip("dependency `b` failed".into())
        );
        assert_eq!(decide(When::OnFailure, &failed, true, false), Decision::Run);
        assert_eq!(
            decide(When::OnFailure, &ok, false, false),
            Decision::Skip("no dependency failed".into())
        );
        assert_eq!(decide(When::Always, &failed, true, false), Decision::Run);
        assert_eq!(decide(When::Always, &ok, false, true), Decision::Run);
        assert_eq!(decide(When::OnSuccess, &ok, false, true), Decision::Cancel);
        assert_eq!(
            decide(When::OnFailure, &failed, true, true),
            Decision::Cancel
        );
    }

    #[test]
    fn outcome() {
        assert_eq!(
            run_outcome([S::Succeeded, S::Skipped], false),
            RunStatus::Succeeded
        );
        assert_eq!(
            run_outcome([S::Succeeded, S::TimedOut], false),
            RunStatus::Failed
        );
        assert_eq!(run_outcome([S::Failed], true), RunStatus::Cancelled);
    }
}
