//! Running one stage: its private folder, its log pipeline, the executor
//! call under a deadline, and turning the executor's outcome, stdout and
//! `$SENTINEL_OUTPUT` into a final status with a reason.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Utc};
use sentinel_api::{FailureKind, StageName, StageStatus};
use sentinel_pipeline::{Action, StagePlan};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::exec::{Executor, Outcome, StageJob, StepJob};
use crate::lease::Owner;
use crate::log::{LiveLog, LogConfig, LogSummary, spawn_log_writer};
use crate::masker::SecretSet;
use crate::workspace::{RunDirs, left_clean, parse_outputs, prepare_private};

/// Everything needed to run one stage.
#[derive(Debug)]
pub struct StageRun {
    pub plan: StagePlan,
    pub run_id: sentinel_api::RunId,
    pub owner: Owner,
    pub dirs: RunDirs,
    pub env: Vec<(String, String)>,
    pub user: String,
    pub secrets: Arc<SecretSet>,
    /// A step's allowed HTTP hosts.
    pub http: Vec<String>,
}

/// How a stage ended, before it is recorded.
#[derive(Debug)]
pub struct StageResult {
    pub name: StageName,
    pub status: StageStatus,
    pub reason: Option<String>,
    pub failure: Option<FailureKind>,
    pub exit_code: Option<i64>,
    pub started: DateTime<Utc>,
    pub finished: DateTime<Utc>,
    /// Trimmed stdout, raw (unmasked): it stays in memory.
    pub output: String,
    pub outputs: BTreeMap<String, String>,
    pub log: LogSummary,
    pub image_id: Option<String>,
    /// The stage's private folder (its artifacts are published from there).
    pub private: std::path::PathBuf,
    /// True when that folder is an empty step folder the run may reuse.
    pub reusable: bool,
}

fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 && n % (1 << 30) == 0 => format!("{} GiB", n >> 30),
        n if n >= 1 << 20 => format!("{} MiB", n >> 20),
        n => format!("{n} bytes"),
    }
}

/// Runs a stage to its end. `stop` is the run's cancel signal for this
/// stage; the stage's own timeout is enforced here.
pub async fn run_stage(
    exec: Arc<dyn Executor>,
    s: StageRun,
    stop: CancellationToken,
    live: Option<LiveLog>,
) -> StageResult {
    let started = Utc::now();
    let name = s.plan.name.clone();
    let is_step = matches!(s.plan.action, Action::Step { .. });
    let (tx, rx) = mpsc::channel(64);
    let log = spawn_log_writer(
        LogConfig {
            path: s.dirs.log(&name),
            limit: s.plan.limits.log_limit,
            sensitive: s.plan.sensitive,
            secrets: s.secrets.clone(),
            live,
        },
        rx,
    );

    // A step's files are written by this process: no hand-over needed, and
    // an empty folder an earlier step left will do.
    let (private, prepared) = if is_step {
        match s.dirs.step_private(&name) {
            Ok(dir) => (dir, Ok(())),
            Err(e) => (s.dirs.private(&name), Err(e)),
        }
    } else {
        let dir = s.dirs.private(&name);
        let made = prepare_private(&dir, &s.user);
        (dir, made)
    };
    let prepared = prepared.map_err(|e| {
        format!(
            "cannot prepare the stage's folder {}: {e}",
            private.display()
        )
    });
    let (image, script, step) = match &s.plan.action {
        Action::Container { image, script } => (image.clone(), script.clone(), None),
        Action::Step { resolved, .. } => (
            String::new(),
            String::new(),
            Some(StepJob {
                name: resolved.manifest.name.clone(),
                wasm: resolved.wasm.clone(),
                digest: resolved.digest.clone(),
                workspace: resolved.manifest.capabilities.workspace,
                http: s.http.clone(),
            }),
        ),
    };
    let timed_out = Arc::new(AtomicBool::new(false));
    let report = match prepared {
        Err(e) => {
            drop(tx);
            crate::exec::StageReport {
                outcome: Outcome::StartFailed(e),
                image_id: None,
            }
        }
        Ok(()) => {
            let job = StageJob {
                run_id: s.run_id.clone(),
                stage: name.clone(),
                owner: s.owner.clone(),
                image,
                script,
                env: s.env.clone(),
                limits: s.plan.limits.clone(),
                user: s.user.clone(),
                workspace: s.dirs.workspace.clone(),
                private_dir: private.clone(),
                log: tx,
                step,
            };
            let deadline = s.plan.limits.timeout;
            let stage_stop = stop.child_token();
            let timer = {
                let stage_stop = stage_stop.clone();
                let timed_out = timed_out.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(deadline).await;
                    timed_out.store(true, Ordering::SeqCst);
                    stage_stop.cancel();
                })
            };
            let report = exec.run_stage(job, stage_stop).await;
            timer.abort();
            report
        }
    };
    let log = log.await.unwrap_or_else(|e| LogSummary {
        error: Some(format!("the log writer failed: {e}")),
        ..LogSummary::default()
    });
    let finished = Utc::now();

    let mut result = StageResult {
        name,
        status: StageStatus::Succeeded,
        reason: None,
        failure: None,
        exit_code: None,
        started,
        finished,
        output: String::from_utf8_lossy(&log.stdout).trim().to_string(),
        outputs: BTreeMap::new(),
        log,
        image_id: report.image_id,
        private: private.clone(),
        reusable: false,
    };
    let mut fail = |status, failure, reason: String| {
        result.status = status;
        result.failure = Some(failure);
        result.reason = Some(reason);
    };
    if let Outcome::Exited { code } = report.outcome {
        result.exit_code = Some(code);
    }
    match report.outcome {
        Outcome::Exited { code: 0 } => {}
        Outcome::Exited { code } => fail(
            StageStatus::Failed,
            FailureKind::ExitCode,
            format!("exit code {code}"),
        ),
        Outcome::OomKilled => fail(
            StageStatus::Failed,
            FailureKind::OomKilled,
            format!(
                "killed by the kernel: out of memory (limit {})",
                human_bytes(s.plan.limits.memory)
            ),
        ),
        Outcome::MemoryLimit => fail(
            StageStatus::Failed,
            FailureKind::MemoryLimit,
            format!(
                "memory limit: the step tried to grow past {}",
                human_bytes(s.plan.limits.memory)
            ),
        ),
        Outcome::Trap(m) => fail(
            StageStatus::Failed,
            FailureKind::RuntimeError,
            format!("trap: {m}"),
        ),
        Outcome::Stopped if timed_out.load(Ordering::SeqCst) => fail(
            StageStatus::TimedOut,
            FailureKind::Timeout,
            format!(
                "timed out after {}",
                humantime::format_duration(s.plan.limits.timeout)
            ),
        ),
        Outcome::Stopped => fail(
            StageStatus::Cancelled,
            FailureKind::Cancelled,
            "cancelled".into(),
        ),
        Outcome::StartFailed(m) => fail(StageStatus::Failed, FailureKind::StartError, m),
        Outcome::Error(m) => fail(StageStatus::Failed, FailureKind::RuntimeError, m),
    }
    if let Some(e) = result.log.error.take() {
        tracing::error!(stage = %result.name, "{e}");
        if result.status == StageStatus::Succeeded {
            result.status = StageStatus::Failed;
            result.failure = Some(FailureKind::RuntimeError);
            result.reason = Some(e);
        }
    }
    if result.log.stdout_truncated && result.status == StageStatus::Succeeded {
        tracing::warn!(stage = %result.name, "stdout is longer than 1 MiB; the output keeps the first 1 MiB");
    }
    if let Ok(text) = std::fs::read_to_string(private.join("output")) {
        match parse_outputs(&text) {
            Ok(o) => result.outputs = o,
            Err(e) if result.status == StageStatus::Succeeded => {
                result.status = StageStatus::Failed;
                result.failure = Some(FailureKind::RuntimeError);
                result.reason = Some(format!("invalid $SENTINEL_OUTPUT: {e}"));
            }
            Err(_) => {}
        }
    }
    result.reusable = is_step && left_clean(&private);
    result
}
