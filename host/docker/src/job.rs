//! A job's container: created and started once, its process a small agent
//! shell that runs the job's script steps one after another, so the steps
//! share the container's file system (a file one step writes in `/tmp` is
//! there for the next) at the cost of one container start for the job.
//!
//! ## The agent
//!
//! The container's process is `sh` running [`AGENT`]. It reads the secret
//! variables' file once (when there is one), then a nonce from its standard
//! input, then one line per step: the path of the step's script in the
//! job's private folder. It runs each script in a child shell, from
//! `/workspace`, with standard input closed, and after it prints a line
//! `\n<nonce> <exit code> <OOM kills so far>` on its standard output. The
//! host splits the output on those lines, so each step gets its own log;
//! the nonce is never in the container's configuration, so a step cannot
//! print a line that ends it. Standard error is not split by the agent:
//! what a step writes there in its last instant can reach the next step's
//! log. Stopping a step sends `SIGUSR1` to the agent, which kills every
//! process in the container but itself (what earlier steps left running in
//! the background too) and reports the step.

use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use bollard::query_parameters::{AttachContainerOptions, KillContainerOptions};
use futures_util::StreamExt;
use sentinel_api::{JobStepDoc, StageStatus};
use sentinel_engine::exec::{
    Chunk, JobStepRun, Outcome, PRIVATE_MOUNT, StageJob, StageReport, StepWork, Stream, Var, Work,
};
use sentinel_pipeline::Shell;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::DockerExecutor;
use crate::container::{
    Created, OOM_COUNT, Spec, create, remove_later, remove_secrets, secrets_loader,
};

/// The agent: the job container's process (see the module's docs).
/// `$1` is the shell flags of the steps.
/// It uses [`OOM_COUNT`]'s `ooms`, defined before it.
const AGENT: &str = r#"IFS= read -r nonce || exit 0
killed=0
trap 'killed=1; for d in /proc/[0-9]*; do i=${d#/proc/}; [ "$i" = "$$" ] || kill -9 "$i"; done 2>/dev/null' USR1
while IFS= read -r step; do
  killed=0
  (cd /workspace && exec sh $1 "$step") </dev/null &
  pid=$!
  wait "$pid" 2>/dev/null; rc=$?
  while [ "$killed" = 1 ] && kill -0 "$pid" 2>/dev/null; do wait "$pid" 2>/dev/null; done
  [ "$killed" = 1 ] && rc=137
  printf '\n%s %s %s\n' "$nonce" "$rc" "$(ooms)"
done
"#;

/// What the agent's output stream carries.
enum Event {
    Out(Chunk),
    /// A step ended: its exit code and the container's OOM kills so far.
    End {
        code: i64,
        ooms: Option<u64>,
    },
}

/// A job's running container.
pub struct JobContainer {
    ex: DockerExecutor,
    created: Option<Created>,
    nonce: String,
    input: Pin<Box<dyn AsyncWrite + Send>>,
    events: mpsc::Receiver<Event>,
    pump: tokio::task::JoinHandle<()>,
    steps: u32,
    ooms: Option<u64>,
    /// False once the agent is gone (the job can run no more steps).
    alive: bool,
}

impl DockerExecutor {
    /// Creates and starts a job's container (`image`, the job's limits,
    /// user, network, workspace and secrets, as a container stage gets).
    /// A failure is the job's report.
    pub async fn open_job(
        &self,
        job: &StageJob,
        image: &str,
        shell: Shell,
        mounts: &[(std::path::PathBuf, String)],
    ) -> Result<JobContainer, StageReport> {
        let workspace = job.workspace.clone();
        let Some(ws) = workspace.local() else {
            return Err(StageReport::of(Outcome::StartFailed(
                "the Docker executor runs jobs on a workspace of this machine".into(),
            )));
        };
        let load = secrets_loader(job.env.iter().any(|v| v.secret));
        let spec = Spec {
            image: image.to_string(),
            entrypoint: vec![
                "sh".into(),
                "-c".into(),
                format!("{load}{OOM_COUNT}\n{AGENT}"),
                "sentinel-agent".into(),
                shell.flags()[..shell.flags().len() - 1].join(" "),
            ],
            cmd: Vec::new(),
            stdin: true,
            binds: mounts
                .iter()
                .map(|(host, at)| format!("{}:{at}:ro", host.display()))
                .collect(),
        };
        let created = create(self, job, ws, spec).await?;
        let failed = |created: Created, e: String| {
            let report = StageReport {
                outcome: Outcome::StartFailed(e),
                image_id: Some(created.image_id.clone()),
                ..StageReport::default()
            };
            (created, report)
        };
        let attach = AttachContainerOptions {
            stream: true,
            stdin: true,
            stdout: true,
            stderr: true,
            logs: false,
            ..Default::default()
        };
        let attached = match self
            .docker
            .attach_container(&created.id, Some(attach))
            .await
        {
            Ok(a) => a,
            Err(e) => {
                let (c, r) = failed(created, format!("cannot attach to the container: {e}"));
                self.discard(c).await;
                return Err(r);
            }
        };
        if let Err(e) = self.docker.start_container(&created.id, None).await {
            let (c, r) = failed(created, format!("cannot start the container: {e}"));
            self.discard(c).await;
            return Err(r);
        }
        let nonce = format!("sentinel-step-end-{}", ulid::Ulid::new());
        let (tx, events) = mpsc::channel(64);
        let pump = tokio::spawn(pump(attached.output, nonce.clone(), tx));
        let mut jc = JobContainer {
            ex: self.clone(),
            created: Some(created),
            nonce,
            input: attached.input,
            events,
            pump,
            steps: 0,
            ooms: None,
            alive: true,
        };
        let line = format!("{}\n", jc.nonce);
        if let Err(e) = jc.send(&line).await {
            let image_id = jc.created.as_ref().map(|c| c.image_id.clone());
            jc.close(&job.log).await;
            return Err(StageReport {
                outcome: Outcome::StartFailed(format!("cannot talk to the job's agent: {e}")),
                image_id,
                ..StageReport::default()
            });
        }
        Ok(jc)
    }

    async fn discard(&self, created: Created) {
        remove_secrets(created.secrets);
        remove_later(self, created.id, created.name).await;
    }
}

impl std::fmt::Debug for JobContainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobContainer")
            .field("container", &self.created.as_ref().map(|c| &c.name))
            .field("steps", &self.steps)
            .field("alive", &self.alive)
            .finish_non_exhaustive()
    }
}

impl JobContainer {
    /// The job's container, while it exists.
    pub(crate) fn container_id(&self) -> Option<&str> {
        self.created.as_ref().map(|c| c.id.as_str())
    }

    /// The id of the image the job runs in.
    pub fn image_id(&self) -> Option<&str> {
        self.created.as_ref().map(|c| c.image_id.as_str())
    }

    /// The job's private folder (output file, artifacts).
    pub fn private(&self) -> Option<&std::path::Path> {
        self.created.as_ref().map(|c| c.private.as_path())
    }

    async fn send(&mut self, line: &str) -> std::io::Result<()> {
        self.input.write_all(line.as_bytes()).await?;
        self.input.flush().await
    }

    /// Runs one script step in the job's container, its output to `log`,
    /// until it ends or `stop` fires ([`Outcome::Stopped`]: the step and
    /// whatever it started are killed; the container stays for the next
    /// steps).
    pub async fn run(
        &mut self,
        script: &str,
        log: &mpsc::Sender<Chunk>,
        stop: &CancellationToken,
    ) -> Outcome {
        if !self.alive {
            return Outcome::Error("the job's container has ended".into());
        }
        let Some(private) = self.private().map(PathBuf::from) else {
            return Outcome::Error("the job's container has ended".into());
        };
        self.steps += 1;
        let dir = private.join("steps");
        let file = dir.join(format!("{}.sh", self.steps));
        let written = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&file, script));
        if let Err(e) = written {
            return Outcome::StartFailed(format!("cannot write the step's script: {e}"));
        }
        let line = format!("{PRIVATE_MOUNT}/steps/{}.sh\n", self.steps);
        if let Err(e) = self.send(&line).await {
            self.alive = false;
            return Outcome::Error(format!("cannot talk to the job's agent: {e}"));
        }
        let mut stopping = false;
        loop {
            let event = if stopping {
                match tokio::time::timeout(Duration::from_secs(10), self.events.recv()).await {
                    Ok(e) => e,
                    Err(_) => {
                        self.alive = false;
                        return Outcome::Stopped;
                    }
                }
            } else {
                tokio::select! {
                    e = self.events.recv() => e,
                    _ = stop.cancelled() => {
                        stopping = true;
                        self.signal("USR1").await;
                        continue;
                    }
                }
            };
            match event {
                Some(Event::Out(chunk)) => {
                    let _ = log.send(chunk).await;
                }
                Some(Event::End { code, ooms }) => {
                    let _ = std::fs::remove_file(&file);
                    let before = self.ooms.unwrap_or(0);
                    self.ooms = ooms.or(self.ooms);
                    return if stopping {
                        Outcome::Stopped
                    } else if code != 0 && ooms.is_some_and(|n| n > before) {
                        Outcome::OomKilled
                    } else {
                        Outcome::Exited { code }
                    };
                }
                None => {
                    self.alive = false;
                    return if stopping {
                        Outcome::Stopped
                    } else {
                        self.ended().await
                    };
                }
            }
        }
    }

    async fn signal(&mut self, signal: &str) {
        let Some(c) = &self.created else { return };
        let opts = KillContainerOptions {
            signal: signal.into(),
        };
        if let Err(e) = self.ex.docker.kill_container(&c.id, Some(opts)).await {
            tracing::debug!("signal {signal} to the job's container: {e}");
        }
    }

    /// Why the agent is gone.
    async fn ended(&mut self) -> Outcome {
        let Some(c) = &self.created else {
            return Outcome::Error("the job's container has ended".into());
        };
        match self.ex.docker.inspect_container(&c.id, None).await {
            Ok(info) => {
                let state = info.state.unwrap_or_default();
                if state.oom_killed == Some(true) {
                    Outcome::OomKilled
                } else {
                    Outcome::Error(format!(
                        "the job's container ended (exit code {})",
                        state.exit_code.unwrap_or(-1)
                    ))
                }
            }
            Err(e) => Outcome::Error(format!("the job's container ended: {e}")),
        }
    }

    /// Ends the job: the agent's input is closed, what it still wrote goes
    /// to `log`, and the container is removed (off the critical path;
    /// `end_run` waits for it). Returns the job's private folder, for its
    /// outputs and artifacts.
    pub async fn close(mut self, log: &mpsc::Sender<Chunk>) -> Option<PathBuf> {
        // The agent ends at the end of its input; what its last step wrote
        // (standard error can trail the end line) still reaches the log.
        let _ = self.input.shutdown().await;
        let drain = async {
            while let Some(event) = self.events.recv().await {
                if let Event::Out(chunk) = event {
                    let _ = log.send(chunk).await;
                }
            }
        };
        if tokio::time::timeout(Duration::from_secs(5), drain)
            .await
            .is_err()
        {
            tracing::warn!("the job's output did not close within 5 s of its end");
        }
        self.pump.abort();
        let c = self.created.take()?;
        let _ = std::fs::remove_dir_all(c.private.join("steps"));
        let private = c.private.clone();
        self.ex.discard(c).await;
        Some(private)
    }
}

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
    let since = job.capture.as_ref().and_then(|_| ws.mark(&job.stage).ok());
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
        let from = format!("{}/{}", job.run_id, job.stage);
        match crate::commit::commit(ex, id, &action.image, to, &from).await {
            Ok(image) => {
                let note = format!("── committed the container as {to} ({image})\n");
                let _ = job
                    .log
                    .send(Chunk {
                        stream: Stream::Stderr,
                        bytes: note.into_bytes(),
                    })
                    .await;
                committed = Some(format!("image={to}\nimage_id={image}\n"));
            }
            Err(e) => {
                outcome = Outcome::Error(format!("cannot commit the container as `{to}`: {e}"))
            }
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

/// Reads the agent's output: standard error as it comes, standard output
/// split on the agent's end-of-step lines.
async fn pump(
    mut output: Pin<
        Box<
            dyn futures_util::Stream<
                    Item = Result<bollard::container::LogOutput, bollard::errors::Error>,
                > + Send,
        >,
    >,
    nonce: String,
    tx: mpsc::Sender<Event>,
) {
    let needle = format!("\n{nonce} ").into_bytes();
    let mut pending: Vec<u8> = Vec::new();
    while let Some(item) = output.next().await {
        let (stream, bytes) = match item {
            Ok(bollard::container::LogOutput::StdOut { message })
            | Ok(bollard::container::LogOutput::Console { message }) => (Stream::Stdout, message),
            Ok(bollard::container::LogOutput::StdErr { message }) => (Stream::Stderr, message),
            Ok(_) => continue,
            Err(e) => {
                tracing::debug!("the job's output stream ended: {e}");
                break;
            }
        };
        if stream == Stream::Stderr {
            let chunk = Chunk {
                stream,
                bytes: bytes.to_vec(),
            };
            if tx.send(Event::Out(chunk)).await.is_err() {
                return;
            }
            continue;
        }
        pending.extend_from_slice(&bytes);
        for event in split(&mut pending, &needle) {
            if tx.send(event).await.is_err() {
                return;
            }
        }
    }
    if !pending.is_empty() {
        let chunk = Chunk {
            stream: Stream::Stdout,
            bytes: std::mem::take(&mut pending),
        };
        let _ = tx.send(Event::Out(chunk)).await;
    }
}

/// Takes from `pending` what can be told apart: output before an
/// end-of-step line, the line itself, and output that cannot be the start
/// of one. What might be the start of one stays in `pending`.
fn split(pending: &mut Vec<u8>, needle: &[u8]) -> Vec<Event> {
    let mut events = Vec::new();
    loop {
        match find(pending, needle) {
            Some(at) => {
                let rest = &pending[at + needle.len()..];
                let Some(eol) = rest.iter().position(|&b| b == b'\n') else {
                    // The line is not whole yet; what comes before it is.
                    if at > 0 {
                        events.push(out(pending.drain(..at).collect()));
                    }
                    return events;
                };
                let line = String::from_utf8_lossy(&rest[..eol]).into_owned();
                let end = at + needle.len() + eol + 1;
                let before: Vec<u8> = pending[..at].to_vec();
                pending.drain(..end);
                if !before.is_empty() {
                    events.push(out(before));
                }
                let mut parts = line.split_whitespace();
                let code = parts.next().and_then(|c| c.parse().ok()).unwrap_or(-1);
                let ooms = parts.next().and_then(|n| n.parse().ok());
                events.push(Event::End { code, ooms });
            }
            None => {
                // Keep what could be the needle's beginning.
                let keep = (1..needle.len().min(pending.len() + 1))
                    .rev()
                    .find(|&n| pending.ends_with(&needle[..n]))
                    .unwrap_or(0);
                let cut = pending.len() - keep;
                if cut > 0 {
                    events.push(out(pending.drain(..cut).collect()));
                }
                return events;
            }
        }
    }
}

fn out(bytes: Vec<u8>) -> Event {
    Event::Out(Chunk {
        stream: Stream::Stdout,
        bytes,
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(events: &[Event]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                Event::Out(c) => format!("out:{}", String::from_utf8_lossy(&c.bytes)),
                Event::End { code, ooms } => format!("end:{code}:{ooms:?}"),
            })
            .collect()
    }

    #[test]
    fn output_is_split_on_end_lines_across_chunks() {
        let needle = b"\nN ".to_vec();
        let mut pending = b"hello\nwor".to_vec();
        assert_eq!(texts(&split(&mut pending, &needle)), ["out:hello\nwor"]);
        pending.extend_from_slice(b"ld\n");
        assert_eq!(texts(&split(&mut pending, &needle)), ["out:ld"]);
        assert_eq!(pending, b"\n", "a newline may start an end line");
        pending.extend_from_slice(b"N 3 ");
        assert!(split(&mut pending, &needle).is_empty());
        pending.extend_from_slice(b"0\nnext");
        assert_eq!(
            texts(&split(&mut pending, &needle)),
            ["end:3:Some(0)", "out:next"]
        );
        let mut pending = b"no newline\nN 0 -\n\nN 1 -\n".to_vec();
        assert_eq!(
            texts(&split(&mut pending, &needle)),
            ["out:no newline", "end:0:None", "end:1:None"]
        );
        assert!(pending.is_empty());
    }
}
