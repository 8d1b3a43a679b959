//! Retrying a stage (`retry:`): attempts run one after another, each with
//! its own log (an earlier attempt's is kept beside the stage's as
//! `<stage>.attempt-<n>.log`) and its own exit code in the stage document;
//! outputs, artifacts and files come from the last attempt only. A failure
//! the policy does not list, a cancelled run, or the last attempt ends it.

use std::sync::{Arc, Mutex};

use chrono::Utc;
use sentinel_api::{AttemptDoc, StageStatus};
use sentinel_pipeline::retry::RetryPlan;
use tokio_util::sync::CancellationToken;

use crate::exec::Executor;
use crate::log::{LiveLog, LogBody};
use crate::stage::{StageResult, StageRun, attempt};
use crate::stage_state::duration_ms;

/// An attempt before the last: what its document says, and its log until
/// it is published.
#[derive(Debug)]
pub struct Attempt {
    pub doc: AttemptDoc,
    pub log: Option<LogBody>,
}

/// Runs `s` until an attempt succeeds, fails in a way `policy` does not
/// retry, the run is cancelled, or the attempts are spent.
pub(crate) async fn run(
    exec: &Arc<dyn Executor>,
    s: &StageRun,
    policy: &RetryPlan,
    stop: CancellationToken,
    live: Option<LiveLog>,
) -> StageResult {
    // Every attempt feeds the same live log, one after the other.
    let live = live.map(|l| Arc::new(Mutex::new(l)));
    let live_for = |live: &Option<Arc<Mutex<LiveLog>>>| -> Option<LiveLog> {
        live.clone().map(|l| {
            Box::new(move |bytes: &[u8]| {
                if let Ok(mut f) = l.lock() {
                    f(bytes)
                }
            }) as LiveLog
        })
    };
    let mut earlier: Vec<Attempt> = Vec::new();
    let mut banner = None;
    let mut waited = None;
    let first_start = Utc::now();
    for n in 1..=policy.attempts {
        let (mut r, kind) = attempt(exec, s, stop.clone(), live_for(&live), banner.take()).await;
        r.waited = waited;
        let again = n < policy.attempts
            && r.status != StageStatus::Succeeded
            && !stop.is_cancelled()
            && policy.retries(kind);
        let wait = policy.wait_before(n + 1);
        if again {
            tracing::info!(
                stage = %r.name,
                "attempt {n} of {} failed ({}): attempt {} in {}",
                policy.attempts,
                r.reason.as_deref().unwrap_or("failed"),
                n + 1,
                humantime::format_duration(wait)
            );
            // A cancel during the wait ends the stage as this attempt ended.
            let cancelled = tokio::select! {
                _ = tokio::time::sleep(wait) => false,
                _ = stop.cancelled() => true,
            };
            if cancelled {
                r.reason = Some(format!(
                    "{} (not attempted again: the run was cancelled)",
                    r.reason.as_deref().unwrap_or("failed")
                ));
            } else {
                banner = Some(format!(
                    "── attempt {} of {} (attempt {n}: {}; waited {})\n",
                    n + 1,
                    policy.attempts,
                    r.reason.as_deref().unwrap_or("failed"),
                    humantime::format_duration(wait)
                ));
                waited = Some(wait);
                earlier.push(set_aside(n, r).await);
                continue;
            }
        }
        if !earlier.is_empty() {
            earlier.push(Attempt {
                doc: attempt_doc(n, &r),
                log: None,
            });
            r.started = first_start;
            r.attempts = earlier;
        }
        return r;
    }
    unreachable!("a retry policy makes at least one attempt")
}

/// Keeps a failed attempt: its log moved out of the way of the next one
/// (to its own file), its artifacts and changed files dropped — outputs
/// come from the last attempt only.
async fn set_aside(n: u32, mut r: StageResult) -> Attempt {
    let log = match r.log.body.take() {
        Some(LogBody::File(path)) => {
            let to = path.with_file_name(sentinel_api::keys::log_name(&r.name, Some(n)));
            match tokio::fs::rename(&path, &to).await {
                Ok(()) => Some(LogBody::File(to)),
                Err(e) => {
                    tracing::warn!("cannot keep the log of attempt {n} of `{}`: {e}", r.name);
                    None
                }
            }
        }
        other => other,
    };
    let dirs: Vec<_> = r
        .artifacts
        .take()
        .into_iter()
        .chain(r.files.take().map(|f| f.dir))
        .collect();
    tokio::task::spawn_blocking(move || {
        for d in dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    })
    .await
    .ok();
    Attempt {
        doc: attempt_doc(n, &r),
        log,
    }
}

/// The document of an attempt that ended as `r` says.
pub(crate) fn attempt_doc(n: u32, r: &StageResult) -> AttemptDoc {
    AttemptDoc {
        attempt: n,
        status: r.status,
        failure: r.failure,
        reason: r.reason.clone(),
        exit_code: r.exit_code,
        started: Some(r.started),
        finished: Some(r.finished),
        duration_ms: duration_ms(Some(r.started), Some(r.finished)),
        log: None,
        log_bytes: r.log.bytes,
        waited_ms: r.waited.map(|w| w.as_millis() as u64),
    }
}
