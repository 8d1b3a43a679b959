//! Running one stage: its log pipeline, the executor call under a
//! deadline, and turning the executor's report — outcome, stdout, named
//! outputs, artifacts, captured files — into a final status with a reason.
//! What leaves the stage is checked for secrets here, off the scheduler's
//! path: a sensitive value too short to mask fails the stage, an artifact
//! holding a secret is withheld, and a log that cannot be read or still
//! holds a secret is left out — each said in the stage's warnings.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Utc};
use sentinel_api::{FailureKind, StageName, StageStatus};
use sentinel_pipeline::retry::AttemptFailure;
use sentinel_pipeline::{Action, StagePlan};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::exec::{Executor, Inputs, Outcome, StageJob, StepWork, Var, Work, Workspace};
use crate::lease::Owner;
use crate::log::{LiveLog, LogBody, LogConfig, LogSummary, spawn_log_writer};
use crate::masker::{MIN_SECRET_LEN, SecretSet};
use crate::workspace::{FileSet, RunDirs, parse_outputs};

/// Everything needed to run one stage.
#[derive(Debug)]
pub struct StageRun {
    pub plan: StagePlan,
    pub run_id: sentinel_api::RunId,
    pub owner: Owner,
    pub dirs: RunDirs,
    pub workspace: Arc<dyn Workspace>,
    pub env: Vec<Var>,
    pub user: String,
    pub secrets: Arc<SecretSet>,
    /// A step's allowed HTTP hosts.
    pub http: Vec<String>,
    /// A job's steps' settings, by step name.
    pub steps: BTreeMap<String, crate::env::StepSettings>,
    /// A build's values, resolved.
    pub build: Option<crate::exec::BuildWork>,
    /// A container stage's image, when its name had references.
    pub image: Option<String>,
    pub inputs: Inputs,
    /// Where the files it creates or changes are kept (`None`: not kept).
    pub capture: Option<PathBuf>,
    /// Its cache, restored before it starts and saved when it succeeds.
    pub cache: Option<crate::cache::StageCache>,
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
    /// A folder holding the stage's artifacts, checked for secrets.
    pub artifacts: Option<PathBuf>,
    /// The files it created or changed, kept for a re-run.
    pub files: Option<FileSet>,
    /// What its document should say besides its status.
    pub warnings: Vec<String>,
    /// A job's steps.
    pub steps: Vec<sentinel_api::JobStepDoc>,
    /// What its cache did.
    pub cache: Option<sentinel_api::CacheDoc>,
    /// Every attempt of a retried stage, the last (this result) included,
    /// whose log is the stage's own; empty when it ran once.
    pub attempts: Vec<crate::retry::Attempt>,
    /// How long it waited before this attempt, when it was retried.
    pub waited: Option<std::time::Duration>,
}

impl StageResult {
    /// A stage that ended without running, with what it keeps from before
    /// (a re-run's reused stage).
    pub fn reused(
        name: StageName,
        from: &sentinel_api::RunId,
        output: String,
        outputs: BTreeMap<String, String>,
        files: Option<FileSet>,
    ) -> Self {
        let now = Utc::now();
        Self {
            name,
            status: StageStatus::Succeeded,
            reason: Some(format!("reused from run {from}")),
            failure: None,
            exit_code: None,
            started: now,
            finished: now,
            output,
            outputs,
            log: LogSummary::default(),
            image_id: None,
            artifacts: None,
            files,
            warnings: Vec::new(),
            steps: Vec::new(),
            cache: None,
            attempts: Vec::new(),
            waited: None,
        }
    }
}

fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 && n % (1 << 30) == 0 => format!("{} GiB", n >> 30),
        n if n >= 1 << 20 => format!("{} MiB", n >> 20),
        n => format!("{n} bytes"),
    }
}

/// The work of a stage's action.
fn work(s: &StageRun) -> Work {
    let http = &s.http;
    match &s.plan.action {
        Action::Container(c) => Work::Container(match &s.image {
            Some(image) => sentinel_pipeline::ContainerAction {
                image: image.clone(),
                image_ref: None,
                ..c.clone()
            },
            None => c.clone(),
        }),
        Action::Job(j) => Work::Job(crate::job::work(j, &s.env, &s.steps)),
        Action::Build(_) => Work::Build(s.build.clone().unwrap_or_default()),
        Action::Step(s) => Work::Step(StepWork {
            name: s.resolved.manifest.name.clone(),
            wasm: s.resolved.wasm.clone(),
            digest: s.resolved.digest.clone(),
            workspace: s.resolved.manifest.capabilities.workspace,
            http: http.to_vec(),
        }),
    }
}

/// Runs a stage to its end, attempting it again as its `retry:` says.
/// `stop` is the run's cancel signal for this stage; the stage's own
/// timeout is enforced here.
pub async fn run_stage(
    exec: Arc<dyn Executor>,
    s: StageRun,
    stop: CancellationToken,
    live: Option<LiveLog>,
) -> StageResult {
    match s.plan.retry.clone() {
        None => attempt(&exec, &s, stop, live, None).await.0,
        Some(policy) => crate::retry::run(&exec, &s, &policy, stop, live).await,
    }
}

/// Runs one attempt of a stage; also says what kind of failure it was, for
/// deciding on another. `banner` is a line of Sentinel's own put first in
/// its log (a retried attempt's).
pub(crate) async fn attempt(
    exec: &Arc<dyn Executor>,
    s: &StageRun,
    stop: CancellationToken,
    live: Option<LiveLog>,
    banner: Option<String>,
) -> (StageResult, AttemptFailure) {
    let started = Utc::now();
    let name = s.plan.name.clone();
    let (tx, rx) = mpsc::channel(64);
    // Lines of Sentinel's own (the cache's) go to the log directly, not
    // through the idle watcher: they are not the process's output.
    let direct = tx.clone();
    let timed_out = Arc::new(AtomicBool::new(false));
    let idle = Arc::new(AtomicBool::new(false));
    let stage_stop = stop.child_token();
    // With an idle limit, output passes a watcher that stops the stage when
    // nothing came for that long. The clock starts when the executor says
    // the process started (an empty chunk, not logged) or with its first
    // output: a container still being created or pulled is not idle.
    let (tx, rx, watcher) = match s.plan.limits.idle_timeout {
        Some(limit) => {
            let (wtx, mut wrx) = mpsc::channel::<crate::exec::Chunk>(64);
            let (idle, stage_stop) = (idle.clone(), stage_stop.clone());
            let watcher = tokio::spawn(async move {
                let mut counting = false;
                loop {
                    let next = if counting {
                        tokio::time::timeout(limit, wrx.recv()).await
                    } else {
                        Ok(wrx.recv().await)
                    };
                    match next {
                        Ok(Some(chunk)) => {
                            counting = true;
                            if !chunk.bytes.is_empty() && tx.send(chunk).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => return,
                        Err(_) => {
                            idle.store(true, Ordering::SeqCst);
                            stage_stop.cancel();
                            // Keep forwarding what the stage prints while it stops.
                            while let Some(chunk) = wrx.recv().await {
                                let _ = tx.send(chunk).await;
                            }
                            return;
                        }
                    }
                }
            });
            (wtx, rx, Some(watcher))
        }
        None => (tx, rx, None),
    };
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
    let say = |line: String| {
        let direct = direct.clone();
        async move {
            let _ = direct
                .send(crate::exec::Chunk {
                    stream: crate::exec::Stream::Stderr,
                    bytes: line.into_bytes(),
                })
                .await;
        }
    };
    if let Some(line) = banner {
        say(line).await;
    }
    let cache_tmp = s.dirs.root.join("cache");
    let cache = match &s.cache {
        Some(c) => {
            let started = c.start(&*s.workspace, &name, &s.user, &cache_tmp).await;
            say(format!(
                "── cache: {}\n",
                crate::cache::describe(&started.doc)
            ))
            .await;
            Some(started)
        }
        None => None,
    };
    drop(direct);
    let job = StageJob {
        run_id: s.run_id.clone(),
        stage: name.clone(),
        owner: s.owner.clone(),
        work: work(s),
        env: s.env.clone(),
        limits: s.plan.limits.clone(),
        user: s.user.clone(),
        workspace: s.workspace.clone(),
        inputs: s.inputs.clone(),
        capture: s.capture.clone(),
        log: tx,
    };
    let deadline = s.plan.limits.timeout;
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
    if let Some(w) = watcher {
        // The job (and its sender) is gone: the watcher ends once drained.
        let _ = w.await;
    }
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
        artifacts: report.artifacts,
        files: report.files,
        warnings: report.warnings,
        steps: report.steps,
        cache: None,
        attempts: Vec::new(),
        waited: None,
    };
    let kind = match &report.outcome {
        Outcome::Exited { code: 0 } => AttemptFailure::Other,
        Outcome::Exited { code } | Outcome::Signalled { code, .. } => {
            AttemptFailure::ExitCode(*code)
        }
        Outcome::StartFailed(_) | Outcome::Error(_) => AttemptFailure::Infrastructure,
        Outcome::TimedOut(_) => AttemptFailure::Timeout,
        Outcome::Stopped if timed_out.load(Ordering::SeqCst) || idle.load(Ordering::SeqCst) => {
            AttemptFailure::Timeout
        }
        _ => AttemptFailure::Other,
    };
    let mut fail = |status, failure, reason: String| {
        result.status = status;
        result.failure = Some(failure);
        result.reason = Some(reason);
    };
    match &report.outcome {
        Outcome::Exited { code } | Outcome::Signalled { code, .. } => {
            result.exit_code = Some(*code)
        }
        _ => {}
    }
    match report.outcome {
        Outcome::Exited { code: 0 } => {}
        Outcome::Exited { code } => fail(
            StageStatus::Failed,
            FailureKind::ExitCode,
            format!("exit code {code}"),
        ),
        Outcome::Signalled { code, signal } => fail(
            StageStatus::Failed,
            FailureKind::ExitCode,
            format!(
                "exit code {code}: killed by {} (not by the out-of-memory killer)",
                signal_name(signal)
            ),
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
        Outcome::Stopped if idle.load(Ordering::SeqCst) => fail(
            StageStatus::TimedOut,
            FailureKind::Timeout,
            format!(
                "timed out: no output for {} (idle_timeout)",
                humantime::format_duration(s.plan.limits.idle_timeout.unwrap_or_default())
            ),
        ),
        Outcome::TimedOut(m) => fail(StageStatus::TimedOut, FailureKind::Timeout, m),
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
    if let Some(text) = &report.outputs {
        match parse_outputs(text) {
            Ok(o) => result.outputs = o,
            Err(e) if result.status == StageStatus::Succeeded => {
                result.status = StageStatus::Failed;
                result.failure = Some(FailureKind::RuntimeError);
                result.reason = Some(format!("invalid $SENTINEL_OUTPUT: {e}"));
            }
            Err(_) => {}
        }
    }
    if s.plan.sensitive
        && result.status == StageStatus::Succeeded
        && let Some(why) = too_short_to_mask(&result.output, &result.outputs)
    {
        result.status = StageStatus::Failed;
        result.failure = Some(FailureKind::RuntimeError);
        result.reason = Some(why);
    }
    if let (Some(c), Some(started)) = (&s.cache, cache) {
        let ok = result.status == StageStatus::Succeeded;
        result.cache = Some(
            c.finish(started, &*s.workspace, &result.name, ok, s.secrets.clone())
                .await,
        );
    }
    let secrets = s.secrets.clone();
    let (log_body, artifacts, files) = (
        result.log.body.take(),
        result.artifacts.take(),
        result.files.take(),
    );
    let checked = tokio::task::spawn_blocking(move || {
        let mut warnings = Vec::new();
        let log = check_log(log_body, &secrets, &mut warnings);
        let artifacts = artifacts.filter(|dir| withhold_secrets(dir, &secrets, &mut warnings));
        let files = files.filter(|set| {
            let mut leaks = Vec::new();
            withhold_secrets(&set.dir, &secrets, &mut leaks);
            let clean = leaks.is_empty();
            if !clean {
                let _ = std::fs::remove_dir_all(&set.dir);
                warnings
                    .push("its files are not kept for a re-run: one of them holds a secret".into());
            }
            clean
        });
        (log, artifacts, files, warnings)
    })
    .await;
    match checked {
        Ok((log, artifacts, files, warnings)) => {
            result.log.body = log;
            result.artifacts = artifacts;
            result.files = files;
            result.warnings.extend(warnings);
        }
        Err(e) => result
            .warnings
            .push(format!("its log and artifacts could not be checked: {e}")),
    }
    (result, kind)
}

/// The name of a signal (`SIGKILL` for 9).
fn signal_name(signal: i32) -> String {
    match signal {
        9 => "SIGKILL".into(),
        15 => "SIGTERM".into(),
        2 => "SIGINT".into(),
        6 => "SIGABRT".into(),
        n => format!("signal {n}"),
    }
}

/// Why a sensitive stage's output cannot be kept secret: a value (the whole
/// output, or a named output) that is not empty but shorter than the
/// masker's minimum would be left unmasked. Single lines of a multi-line
/// output shorter than that (`{`, `}`) are not secrets of their own.
pub fn too_short_to_mask(output: &str, outputs: &BTreeMap<String, String>) -> Option<String> {
    let short = |v: &str| !v.is_empty() && v.len() < MIN_SECRET_LEN;
    if short(output) {
        return Some(format!(
            "its output is a secret: {}",
            crate::masker::MaskError::TooShort(output.len())
        ));
    }
    outputs.iter().find(|(_, v)| short(v)).map(|(k, v)| {
        format!(
            "its output `{k}` is a secret: {}",
            crate::masker::MaskError::TooShort(v.len())
        )
    })
}

/// Checks a finished log before it is published: one that cannot be read
/// or still holds a secret is left out, with a warning.
fn check_log(
    log: Option<LogBody>,
    secrets: &SecretSet,
    warnings: &mut Vec<String>,
) -> Option<LogBody> {
    let log = log?;
    let bytes = match &log {
        LogBody::Memory(b) => std::borrow::Cow::Borrowed(b.as_slice()),
        LogBody::File(f) => match std::fs::read(f) {
            Ok(b) => std::borrow::Cow::Owned(b),
            Err(e) => {
                warnings.push(format!(
                    "its log could not be read ({e}); it is not published"
                ));
                return None;
            }
        },
    };
    if secrets.leaks(&bytes) {
        warnings.push("its log still held a secret; it is not published".into());
        return None;
    }
    Some(log)
}

/// Removes every file under `dir` that holds a secret (in any form the
/// masker knows), with a warning naming it. False when nothing is left to
/// publish.
pub fn withhold_secrets(dir: &Path, secrets: &SecretSet, warnings: &mut Vec<String>) -> bool {
    if !secrets.is_empty() {
        for entry in walkdir::WalkDir::new(dir)
            .follow_links(false)
            .into_iter()
            .flatten()
        {
            if !entry.file_type().is_file() {
                continue;
            }
            let rel = entry
                .path()
                .strip_prefix(dir)
                .unwrap_or(entry.path())
                .display()
                .to_string();
            match file_leaks(entry.path(), secrets) {
                Ok(false) => {}
                Ok(true) => {
                    let _ = std::fs::remove_file(entry.path());
                    warnings.push(format!(
                        "the artifact `{rel}` holds a secret; it was withheld"
                    ));
                }
                Err(e) => {
                    let _ = std::fs::remove_file(entry.path());
                    warnings.push(format!(
                        "the artifact `{rel}` could not be checked for secrets ({e}); it was withheld"
                    ));
                }
            }
        }
    }
    crate::workspace::holds_files(dir)
}

/// True when the file holds a secret; read in chunks that overlap by the
/// longest pattern, so a secret across two chunks is found.
pub(crate) fn file_leaks(path: &Path, secrets: &SecretSet) -> std::io::Result<bool> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let keep = secrets.longest_pattern();
    let mut buf = vec![0u8; (1 << 20) + keep];
    let mut have = 0;
    loop {
        let n = f.read(&mut buf[have..])?;
        if n == 0 {
            return Ok(have > 0 && secrets.leaks(&buf[..have]));
        }
        have += n;
        if have == buf.len() {
            if secrets.leaks(&buf[..have]) {
                return Ok(true);
            }
            let tail = keep.min(have);
            buf.copy_within(have - tail..have, 0);
            have = tail;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_sensitive_values_are_refused() {
        let none = BTreeMap::new();
        assert!(
            too_short_to_mask("abc", &none)
                .unwrap()
                .contains("at least 4 bytes")
        );
        assert!(
            too_short_to_mask("", &none).is_none(),
            "an empty output is no secret"
        );
        assert!(too_short_to_mask("{\n \"k\": \"secret-value\"\n}", &none).is_none());
        let named = BTreeMap::from([("pin".to_string(), "12".to_string())]);
        assert!(
            too_short_to_mask("long enough", &named)
                .unwrap()
                .contains("`pin`")
        );
    }

    #[test]
    fn files_holding_secrets_are_found_across_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = SecretSet::new()
            .with([b"hunter2-secret".as_slice()])
            .unwrap();
        let mut big = vec![b'x'; (1 << 20) - 5];
        big.extend_from_slice(b"hunter2-secret");
        std::fs::write(dir.path().join("big.bin"), &big).unwrap();
        std::fs::write(dir.path().join("clean.txt"), b"nothing here").unwrap();
        let mut warnings = Vec::new();
        assert!(withhold_secrets(dir.path(), &secrets, &mut warnings));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("big.bin"));
        assert!(!dir.path().join("big.bin").exists());
        assert!(dir.path().join("clean.txt").exists());
    }
}
