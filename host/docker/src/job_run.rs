//! A job stage's step loop: its steps in turn in the job's container (a
//! script) or in the WebAssembly sandbox on the job's workspace, each with
//! its own header line in the log, status and optional timeout; the first
//! that fails skips the rest; the container committed as an image when
//! asked; the after-steps whatever happened, with the job's result.

use std::time::Duration;

use sentinel_api::{JobStepDoc, StageStatus};
use sentinel_engine::exec::{
    Chunk, JobStepRun, Outcome, StageJob, StageReport, StepWork, Stream, Var, Work,
};
use tokio_util::sync::CancellationToken;

use crate::DockerExecutor;
use crate::job::JobContainer;

/// Runs a WebAssembly step of a job with `exec` (the run's WebAssembly
/// runtime) on the job's workspace, its output in the job's log.
async fn run_wasm(
    job: &StageJob,
    exec: Option<&std::sync::Arc<dyn sentinel_engine::exec::Executor>>,
    at: Step<'_>,
    work: &StepWork,
    env: Vec<Var>,
    stop: &CancellationToken,
) -> Outcome {
    let Some(exec) = exec else {
        return Outcome::StartFailed(format!(
            "step `{}` is a WebAssembly step and no WebAssembly runtime was given",
            at.name
        ));
    };
    // Its own private folder: the job's container has the stage's.
    let mut sub = format!("{}--{}", job.stage, at.index + 1);
    if sub.len() > sentinel_api::StageName::MAX_LEN {
        sub = format!("job--{}", at.index + 1);
    }
    let stage = sub.parse().unwrap_or_else(|_| job.stage.clone());
    let step_job = StageJob {
        run_id: job.run_id.clone(),
        stage,
        owner: job.owner.clone(),
        work: Work::Step(work.clone()),
        env,
        limits: job.limits.clone(),
        user: job.user.clone(),
        workspace: job.workspace.clone(),
        inputs: Default::default(),
        capture: None,
        log: job.log.clone(),
    };
    exec.run_stage(step_job, stop.child_token()).await.outcome
}

/// How long a job's after-steps may run once its steps were stopped (the
/// job timed out or was cancelled).
const AFTER_STEPS_GRACE: Duration = Duration::from_secs(300);

/// Runs a job stage: its steps in turn in one container until one fails
/// (the rest are skipped) or `stop` fires (the running one is killed, the
/// rest skipped), then its after-steps whatever happened, seeing
/// `SENTINEL_JOB_RESULT` (`passed` or `failed`). An after-step's failure is
/// recorded but does not change the job's result. Each step's section of
/// the log starts with a line naming it (on standard error, so a job's
/// output is what its steps printed).
pub(crate) async fn run(
    ex: &DockerExecutor,
    job: StageJob,
    stop: CancellationToken,
) -> StageReport {
    let Work::Job(action) = job.work.clone() else {
        return StageReport::of(Outcome::StartFailed("not a job".into()));
    };
    let workspace = job.workspace.clone();
    let Some(ws) = workspace.local() else {
        return StageReport::of(Outcome::StartFailed(
            "the Docker executor runs jobs on a workspace of this machine".into(),
        ));
    };
    // A job committed as an image gets every variable through the file,
    // so its container's configuration (which `docker commit` copies)
    // holds none of the run's values.
    let opened = if action.commit.is_some() {
        let mut j = job.clone();
        j.env.iter_mut().for_each(|v| v.secret = true);
        std::borrow::Cow::Owned(j)
    } else {
        std::borrow::Cow::Borrowed(&job)
    };
    let mut jc = match ex
        .open_job(&opened, &action.image, action.shell, &action.mounts)
        .await
    {
        Ok(jc) => jc,
        Err(report) => return report,
    };
    let image_id = jc.image_id().map(str::to_string);
    let since = job.capture.as_ref().and_then(|_| ws.mark().ok());
    let mut steps = Vec::new();
    let mut outcome = Outcome::Exited { code: 0 };
    let wasm = action.steps_executor.as_ref();
    for (i, step) in action.steps.iter().enumerate() {
        if outcome != (Outcome::Exited { code: 0 }) {
            steps.push(skipped(&step.name, false));
            continue;
        }
        let at = Step {
            name: &step.name,
            index: i,
            after: false,
            timeout: step.timeout,
        };
        let (o, doc) = run_step(&mut jc, &job, wasm, at, &step.run, None, &stop).await;
        steps.push(doc);
        outcome = o;
    }
    let mut committed = None;
    if let (Some(to), Outcome::Exited { code: 0 }, Some(id)) =
        (&action.commit, &outcome, jc.container_id())
    {
        match crate::commit::commit_stage(ex, &job, id, &action.image, to).await {
            Ok(outputs) => committed = Some(outputs),
            Err(o) => outcome = o,
        }
    }
    let result = if outcome == (Outcome::Exited { code: 0 }) {
        "passed"
    } else {
        "failed"
    };
    let after_stop = CancellationToken::new();
    // After-steps run until the job's own stop (at once when it already
    // fired), then for the grace at most.
    let grace = {
        let (t, stop) = (after_stop.clone(), stop.clone());
        tokio::spawn(async move {
            stop.cancelled().await;
            tokio::time::sleep(AFTER_STEPS_GRACE).await;
            t.cancel();
        })
    };
    let mut warnings = Vec::new();
    for (i, step) in action.after_steps.iter().enumerate() {
        let at = Step {
            name: &step.name,
            index: action.steps.len() + i,
            after: true,
            timeout: step.timeout,
        };
        let (o, doc) = run_step(
            &mut jc,
            &job,
            wasm,
            at,
            &step.run,
            Some(result),
            &after_stop,
        )
        .await;
        if o != (Outcome::Exited { code: 0 }) {
            warnings.push(format!(
                "after-step `{}` did not succeed; it does not change the job's result",
                step.name
            ));
        }
        steps.push(doc);
    }
    grace.abort();
    let private = jc.close(&job.log).await;
    let (mut outputs, artifacts) = match &private {
        Some(p) => ws.take_private(p, false),
        None => (None, None),
    };
    // The committed image is an output of the stage.
    if let Some(image) = committed {
        let mut text = outputs.unwrap_or_default();
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        outputs = Some(text + &image);
    }
    let (files, mut kept) = crate::container::capture(ws, &job, since).await;
    warnings.append(&mut kept);
    StageReport {
        outcome,
        image_id,
        outputs,
        artifacts,
        files,
        warnings,
        steps,
    }
}

/// Where a step is in its job.
#[derive(Clone, Copy)]
struct Step<'a> {
    name: &'a str,
    /// Its place among the job's steps and after-steps.
    index: usize,
    after: bool,
    /// Its own timeout.
    timeout: Option<Duration>,
}

/// Runs one step of a job and describes how it ended: a script in the
/// job's container, a WebAssembly step in its sandbox on the same
/// workspace. `result` is the job's result, for an after-step.
async fn run_step(
    jc: &mut JobContainer,
    job: &StageJob,
    wasm: Option<&std::sync::Arc<dyn sentinel_engine::exec::Executor>>,
    at: Step<'_>,
    run: &JobStepRun,
    result: Option<&str>,
    stop: &CancellationToken,
) -> (Outcome, JobStepDoc) {
    let (kind, name) = (if at.after { "after-step" } else { "step" }, at.name);
    let header = Chunk {
        stream: Stream::Stderr,
        bytes: format!("── {kind} {name}\n").into_bytes(),
    };
    let _ = job.log.send(header).await;
    let started = std::time::Instant::now();
    // The step's own timeout stops it alone; the job goes on to its
    // after-steps as after a failure.
    let step_stop = stop.child_token();
    let fired = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let timer = at.timeout.map(|limit| {
        let (fired, step_stop) = (fired.clone(), step_stop.clone());
        tokio::spawn(async move {
            tokio::time::sleep(limit).await;
            fired.store(true, std::sync::atomic::Ordering::SeqCst);
            step_stop.cancel();
        })
    });
    let stop = &step_stop;
    let o = match run {
        JobStepRun::Script(script) => {
            let script = match result {
                Some(r) => format!("SENTINEL_JOB_RESULT={r}; export SENTINEL_JOB_RESULT\n{script}"),
                None => script.clone(),
            };
            jc.run(&script, &job.log, stop).await
        }
        JobStepRun::Wasm { work, env } => {
            let mut env = env.clone();
            if let Some(r) = result {
                env.push(Var::plain("SENTINEL_JOB_RESULT", r));
            }
            run_wasm(job, wasm, at, work, env, stop).await
        }
    };
    if let Some(t) = timer {
        t.abort();
    }
    let o = match (o, at.timeout) {
        (Outcome::Stopped, Some(limit)) if fired.load(std::sync::atomic::Ordering::SeqCst) => {
            Outcome::TimedOut(format!("step `{name}` timed out after {limit:?}"))
        }
        (o, _) => o,
    };
    let (status, exit_code, reason) = match &o {
        Outcome::Exited { code: 0 } => (StageStatus::Succeeded, Some(0), None),
        Outcome::Exited { code } => (
            StageStatus::Failed,
            Some(*code),
            Some(format!("exit code {code}")),
        ),
        Outcome::OomKilled => (
            StageStatus::Failed,
            None,
            Some("killed by the kernel: out of memory".into()),
        ),
        Outcome::TimedOut(m) => (StageStatus::TimedOut, None, Some(m.clone())),
        Outcome::Stopped => (
            StageStatus::Cancelled,
            None,
            Some("stopped: the job timed out or was cancelled".into()),
        ),
        other => (StageStatus::Failed, None, Some(format!("{other:?}"))),
    };
    let doc = JobStepDoc {
        name: name.to_string(),
        status,
        after: at.after,
        exit_code,
        duration_ms: Some(started.elapsed().as_millis() as u64),
        reason,
    };
    (o, doc)
}

fn skipped(name: &str, after: bool) -> JobStepDoc {
    JobStepDoc {
        name: name.to_string(),
        status: StageStatus::Skipped,
        after,
        exit_code: None,
        duration_ms: None,
        reason: Some("an earlier step did not succeed".into()),
    }
}
