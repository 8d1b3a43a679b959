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
//! print a line that ends it. The agent marks the end of each step on
//! standard error too (`\n<nonce> -`), and a step ends once both streams
//! said so: what a step writes on standard error in its last instant is in
//! its own section of the log, never lost at the job's end. Stopping a step sends `SIGUSR1` to the agent, which kills every
//! process in the container but itself (what earlier steps left running in
//! the background too) and reports the step. The step loop of a job stage
//! is in `job_run.rs`.

use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use bollard::query_parameters::KillContainerOptions;
use futures_util::StreamExt;
use sentinel_engine::exec::{Chunk, Outcome, PRIVATE_MOUNT, StageJob, StageReport, Stream};
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
  printf '\n%s -\n' "$nonce" >&2
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
    /// A step's standard error is complete (the agent's marker there).
    ErrEnd,
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
        let attach = crate::container::attach_options(true);
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
        // The step's end on standard output (its code), and on standard error.
        let mut ended: Option<Outcome> = None;
        let mut err_ended = false;
        loop {
            if let Some(o) = &ended
                && err_ended
            {
                return o.clone();
            }
            let event = if let Some(o) = &ended {
                // Standard error's marker trails at most a moment.
                match tokio::time::timeout(Duration::from_secs(5), self.events.recv()).await {
                    Ok(e) => e,
                    Err(_) => return o.clone(),
                }
            } else if stopping {
                // A killed step's end comes at once from a live agent; a busy
                // host may take a while to deliver the signal (a dead agent
                // closes the stream, which ends this at once).
                match tokio::time::timeout(Duration::from_secs(30), self.events.recv()).await {
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
                    ended = Some(if stopping {
                        Outcome::Stopped
                    } else if code != 0 && ooms.is_some_and(|n| n > before) {
                        Outcome::OomKilled
                    } else {
                        Outcome::Exited { code }
                    });
                }
                Some(Event::ErrEnd) => err_ended = true,
                None => {
                    self.alive = false;
                    if let Some(o) = ended {
                        return o;
                    }
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
    let mut pending_err: Vec<u8> = Vec::new();
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
        let buf = if stream == Stream::Stderr {
            &mut pending_err
        } else {
            &mut pending
        };
        buf.extend_from_slice(&bytes);
        for event in split(buf, &needle, stream) {
            let event = match (stream, event) {
                (Stream::Stderr, Event::End { .. }) => Event::ErrEnd,
                (_, e) => e,
            };
            if tx.send(event).await.is_err() {
                return;
            }
        }
    }
    for (stream, rest) in [(Stream::Stdout, pending), (Stream::Stderr, pending_err)] {
        if !rest.is_empty() {
            let chunk = Chunk {
                stream,
                bytes: rest,
            };
            let _ = tx.send(Event::Out(chunk)).await;
        }
    }
}

/// Takes from `pending` what can be told apart: output before an
/// end-of-step line, the line itself, and output that cannot be the start
/// of one. What might be the start of one stays in `pending`.
fn split(pending: &mut Vec<u8>, needle: &[u8], stream: Stream) -> Vec<Event> {
    let out = |bytes: Vec<u8>| Event::Out(Chunk { stream, bytes });
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
                Event::ErrEnd => "err-end".into(),
            })
            .collect()
    }

    #[test]
    fn output_is_split_on_end_lines_across_chunks() {
        let needle = b"\nN ".to_vec();
        let mut pending = b"hello\nwor".to_vec();
        assert_eq!(
            texts(&split(&mut pending, &needle, Stream::Stdout)),
            ["out:hello\nwor"]
        );
        pending.extend_from_slice(b"ld\n");
        assert_eq!(
            texts(&split(&mut pending, &needle, Stream::Stdout)),
            ["out:ld"]
        );
        assert_eq!(pending, b"\n", "a newline may start an end line");
        pending.extend_from_slice(b"N 3 ");
        assert!(split(&mut pending, &needle, Stream::Stdout).is_empty());
        pending.extend_from_slice(b"0\nnext");
        assert_eq!(
            texts(&split(&mut pending, &needle, Stream::Stdout)),
            ["end:3:Some(0)", "out:next"]
        );
        let mut pending = b"no newline\nN 0 -\n\nN 1 -\n".to_vec();
        assert_eq!(
            texts(&split(&mut pending, &needle, Stream::Stdout)),
            ["out:no newline", "end:0:None", "end:1:None"]
        );
        assert!(pending.is_empty());
    }
}
