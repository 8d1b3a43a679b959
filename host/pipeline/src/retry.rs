//! `retry:` of a stage: how many attempts in all, which failures earn
//! another one (the infrastructure's, time-outs, listed exit codes) and how
//! long to wait between them — parsed, checked, and the waits computed.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::draft::{At, Issue};
use crate::yaml::Pos;

/// A stage's retry policy, checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetryPlan {
    /// Attempts in all, the first included (2 to [`RetryPlan::MAX_ATTEMPTS`]).
    pub attempts: u32,
    pub on: RetryOn,
    /// The wait before the second attempt; each later wait doubles it, up
    /// to [`RetryPlan::MAX_WAIT`].
    #[serde(rename = "backoff_ms", serialize_with = "ser_ms")]
    pub backoff: Duration,
}

/// Which failures are retried.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RetryOn {
    /// The executor could not start the stage or lost it while it ran (the
    /// Docker daemon went away, an image pull failed, the engine's error).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub infrastructure: bool,
    /// The stage ran past its `timeout` or `idle_timeout`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub timeout: bool,
    /// The process exited with one of these codes.
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    pub exit_codes: BTreeSet<i64>,
}

/// What a failed attempt was, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptFailure {
    Infrastructure,
    Timeout,
    ExitCode(i64),
    /// Anything else (out of memory, a trap, a bad output…): never retried.
    Other,
}

fn ser_ms<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

impl RetryPlan {
    pub const MAX_ATTEMPTS: u32 = 10;
    pub const DEFAULT_BACKOFF: Duration = Duration::from_secs(5);
    /// The longest wait between two attempts.
    pub const MAX_WAIT: Duration = Duration::from_secs(300);

    /// Whether a failed attempt of this kind earns another.
    pub fn retries(&self, failure: AttemptFailure) -> bool {
        match failure {
            AttemptFailure::Infrastructure => self.on.infrastructure,
            AttemptFailure::Timeout => self.on.timeout,
            AttemptFailure::ExitCode(c) => self.on.exit_codes.contains(&c),
            AttemptFailure::Other => false,
        }
    }

    /// The wait before attempt `attempt` (2 or more): the backoff, doubled
    /// for each attempt after the second, at most [`RetryPlan::MAX_WAIT`].
    pub fn wait_before(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(2).min(16);
        self.backoff
            .saturating_mul(1 << doublings)
            .min(Self::MAX_WAIT)
    }
}

/// The `retry:` mapping as a dialect read it.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryDraft {
    pub pos: Pos,
    pub attempts: At<u32>,
    pub on: Vec<At<String>>,
    pub backoff: Option<At<String>>,
}

/// Checks a `retry:` mapping; problems go to `issues`.
pub fn check(d: &RetryDraft, issues: &mut Vec<Issue>) -> Option<RetryPlan> {
    let before = issues.len();
    if !(2..=RetryPlan::MAX_ATTEMPTS).contains(&d.attempts.value) {
        issues.push(Issue::new(
            d.attempts.pos,
            format!(
                "`attempts: {}` is out of range: a retried stage makes 2 to {} attempts in all, the first included",
                d.attempts.value,
                RetryPlan::MAX_ATTEMPTS
            ),
            None,
        ));
    }
    let mut on = RetryOn::default();
    for item in &d.on {
        let v = item.value.trim();
        match v {
            "infrastructure" => on.infrastructure = true,
            "timeout" => on.timeout = true,
            _ => match v.parse::<i64>() {
                Ok(code) if (1..=255).contains(&code) => {
                    on.exit_codes.insert(code);
                }
                Ok(code) => issues.push(Issue::new(
                    item.pos,
                    format!("exit code {code} cannot be retried: a failed process exits with 1 to 255"),
                    None,
                )),
                Err(_) => issues.push(Issue::new(
                    item.pos,
                    format!("`{v}` is not something `retry:` can be on"),
                    Some(
                        "write `infrastructure`, `timeout` or an exit code (a number from 1 to 255)"
                            .into(),
                    ),
                )),
            },
        }
    }
    if d.on.is_empty() {
        on.infrastructure = true;
    }
    let backoff = match &d.backoff {
        None => RetryPlan::DEFAULT_BACKOFF,
        Some(b) => match humantime::parse_duration(b.value.trim()).ok() {
            Some(w) if w <= RetryPlan::MAX_WAIT => w,
            Some(_) => {
                issues.push(Issue::new(
                    b.pos,
                    format!(
                        "`backoff: {}` is too long; the longest wait is {}",
                        b.value,
                        humantime::format_duration(RetryPlan::MAX_WAIT)
                    ),
                    None,
                ));
                RetryPlan::DEFAULT_BACKOFF
            }
            None => {
                issues.push(Issue::new(
                    b.pos,
                    format!("`{}` is not a duration", b.value),
                    Some("write it like `5s`, `30s` or `2m` (`0s`: no wait)".into()),
                ));
                RetryPlan::DEFAULT_BACKOFF
            }
        },
    };
    (issues.len() == before).then_some(RetryPlan {
        attempts: d.attempts.value,
        on,
        backoff,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(backoff: u64) -> RetryPlan {
        RetryPlan {
            attempts: 5,
            on: RetryOn {
                infrastructure: true,
                timeout: false,
                exit_codes: [75].into(),
            },
            backoff: Duration::from_secs(backoff),
        }
    }

    #[test]
    fn waits_double_and_stop_at_the_most() {
        let p = plan(5);
        let waits: Vec<u64> = (2..=9).map(|n| p.wait_before(n).as_secs()).collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(plan(0).wait_before(4), Duration::ZERO);
        assert_eq!(p.wait_before(u32::MAX), RetryPlan::MAX_WAIT);
    }

    #[test]
    fn only_the_listed_failures_are_retried() {
        let p = plan(1);
        assert!(p.retries(AttemptFailure::Infrastructure));
        assert!(p.retries(AttemptFailure::ExitCode(75)));
        assert!(!p.retries(AttemptFailure::ExitCode(1)));
        assert!(!p.retries(AttemptFailure::Timeout));
        assert!(!p.retries(AttemptFailure::Other));
    }
}
