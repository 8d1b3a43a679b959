//! A created container's run: attached before it starts (so no output is
//! lost), started, its two streams sent to the stage log as they come,
//! waited for or stopped, its exit read, and whether the kernel's
//! out-of-memory killer ended it (the engine's `oom` event, watched from
//! before the start).

use std::collections::HashMap;
use std::time::Duration;

use bollard::query_parameters::{AttachContainerOptions, EventsOptions, KillContainerOptions};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use sentinel_engine::exec::{Chunk, Outcome, Stream};

use crate::DockerExecutor;
use crate::container::OOM_KILLS;

/// Attaching to a container's output (and to its input when `stdin`),
/// from now on.
pub(crate) fn attach_options(stdin: bool) -> AttachContainerOptions {
    AttachContainerOptions {
        stream: true,
        stdin,
        stdout: true,
        stderr: true,
        logs: false,
        ..Default::default()
    }
}

/// How a created container's script begins: the container is started, or
/// (a warm one, started ahead, attached and waiting) told to go on its
/// standard input.
pub(crate) enum Begin {
    Start,
    Go(Attached),
}

/// A container's streams, attached ahead (with its `oom` watch) so that its
/// turn costs one line written.
pub(crate) struct Attached {
    output: std::pin::Pin<
        Box<
            dyn futures_util::Stream<
                    Item = Result<bollard::container::LogOutput, bollard::errors::Error>,
                > + Send,
        >,
    >,
    input: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
    oom: OomWatch,
}

impl std::fmt::Debug for Attached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Attached")
    }
}

/// The `oom` watch of a container, ended when dropped unused.
struct OomWatch(Option<tokio::task::JoinHandle<bool>>);

impl OomWatch {
    fn take(mut self) -> tokio::task::JoinHandle<bool> {
        self.0.take().expect("an oom watch is taken once")
    }
}

impl Drop for OomWatch {
    fn drop(&mut self) {
        if let Some(h) = &self.0 {
            h.abort();
        }
    }
}

/// Attaches to a container's streams (standard input too when `stdin`) and
/// watches for its `oom` event.
pub(crate) async fn attach(ex: &DockerExecutor, id: &str, stdin: bool) -> Result<Attached, String> {
    let oom = watch_for_oom(ex, id);
    match ex
        .docker
        .attach_container(id, Some(attach_options(stdin)))
        .await
    {
        Ok(a) => Ok(Attached {
            output: a.output,
            input: a.input,
            oom: OomWatch(Some(oom)),
        }),
        Err(e) => {
            oom.abort();
            Err(format!("cannot attach to the container: {e}"))
        }
    }
}

pub(crate) async fn run_created(
    ex: &DockerExecutor,
    id: &str,
    private: &std::path::Path,
    log: tokio::sync::mpsc::Sender<Chunk>,
    started_marker: bool,
    stop: CancellationToken,
    begin: Begin,
) -> Outcome {
    let started = started_marker.then(|| log.clone());
    let (go, attached) = match begin {
        Begin::Go(a) => (true, a),
        Begin::Start => match attach(ex, id, false).await {
            Ok(a) => (false, a),
            Err(e) => return Outcome::StartFailed(e),
        },
    };
    let Attached {
        mut output,
        mut input,
        oom,
    } = attached;
    let oom = oom.take();
    let pump = tokio::spawn(async move {
        while let Some(item) = output.next().await {
            let chunk = match item {
                Ok(bollard::container::LogOutput::StdOut { message }) => Chunk {
                    stream: Stream::Stdout,
                    bytes: message.to_vec(),
                },
                Ok(bollard::container::LogOutput::StdErr { message }) => Chunk {
                    stream: Stream::Stderr,
                    bytes: message.to_vec(),
                },
                Ok(bollard::container::LogOutput::Console { message }) => Chunk {
                    stream: Stream::Stdout,
                    bytes: message.to_vec(),
                },
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!("container output stream ended: {e}");
                    break;
                }
            };
            if log.send(chunk).await.is_err() {
                break;
            }
        }
    });
    let begun = match go {
        false => ex
            .docker
            .start_container(id, None)
            .await
            .map_err(|e| format!("cannot start the container: {e}")),
        true => {
            use tokio::io::AsyncWriteExt;
            let sent = async {
                input.write_all(b"go\n").await?;
                input.flush().await
            };
            sent.await
                .map_err(|e| format!("cannot tell the ready container to go: {e}"))
        }
    };
    drop(input);
    if let Err(e) = begun {
        pump.abort();
        oom.abort();
        return Outcome::StartFailed(e);
    }
    if let Some(log) = started {
        say_started(&log).await;
    }
    let mut wait = ex.docker.wait_container(id, None);
    let stopped = tokio::select! {
        _ = wait.next() => false,
        _ = stop.cancelled() => true,
    };
    if stopped {
        let kill = KillContainerOptions {
            signal: "KILL".into(),
        };
        if let Err(e) = ex.docker.kill_container(id, Some(kill)).await {
            tracing::debug!("kill: {e}");
        }
        let mut wait = ex.docker.wait_container(id, None);
        let _ = tokio::time::timeout(Duration::from_secs(10), wait.next()).await;
    }
    // The output stream closes when the container's streams do.
    if tokio::time::timeout(Duration::from_secs(10), pump)
        .await
        .is_err()
    {
        tracing::warn!("container output did not close within 10 s of exit");
    }
    if stopped {
        oom.abort();
        return Outcome::Stopped;
    }
    exit_outcome(ex, id, private, oom).await
}

/// Watches the daemon's events for the container's `oom` event, from a
/// moment before it starts (`since` closes the gap between subscribing and
/// starting). Resolves to true once one arrives.
fn watch_for_oom(ex: &DockerExecutor, id: &str) -> tokio::task::JoinHandle<bool> {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs().saturating_sub(1))
        .unwrap_or(0);
    let filters = HashMap::from([
        ("type".to_string(), vec!["container".to_string()]),
        ("container".to_string(), vec![id.to_string()]),
        ("event".to_string(), vec!["oom".to_string()]),
    ]);
    let options = EventsOptions {
        since: Some(since.to_string()),
        until: None,
        filters: Some(filters),
    };
    let mut events = ex.docker.events(Some(options));
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            match event {
                Ok(e) if e.action.as_deref() == Some("oom") => return true,
                Ok(_) => continue,
                Err(e) => {
                    tracing::debug!("container events ended: {e}");
                    return false;
                }
            }
        }
        false
    })
}

/// How a finished container ended. A failed script was ended by the OOM
/// killer when the kernel counted an OOM kill in its container (see
/// [`command`]) or Docker says so: the `OOMKilled` flag of its state, or its
/// `oom` event, which can trail the exit by a moment. Exit code 137 is a
/// SIGKILL; without the kernel's count (its shell was killed too) the
/// event is awaited briefly before calling it a plain SIGKILL.
async fn exit_outcome(
    ex: &DockerExecutor,
    id: &str,
    private: &std::path::Path,
    mut oom: tokio::task::JoinHandle<bool>,
) -> Outcome {
    let state = match ex.docker.inspect_container(id, None).await {
        Ok(info) => info.state.unwrap_or_default(),
        Err(e) => {
            oom.abort();
            return Outcome::Error(format!("cannot inspect the finished container: {e}"));
        }
    };
    let code = state.exit_code.unwrap_or(-1);
    let kernel = std::fs::read_to_string(private.join(OOM_KILLS))
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok());
    let outcome = if code == 0 {
        Outcome::Exited { code }
    } else if kernel.is_some_and(|n| n > 0) || state.oom_killed == Some(true) {
        Outcome::OomKilled
    } else if code != 137 {
        Outcome::Exited { code }
    } else if kernel.is_some() {
        Outcome::Signalled { code, signal: 9 }
    } else {
        match tokio::time::timeout(OOM_EVENT_GRACE, &mut oom).await {
            Ok(Ok(true)) => Outcome::OomKilled,
            _ => Outcome::Signalled { code, signal: 9 },
        }
    };
    oom.abort();
    outcome
}

/// How long a SIGKILLed container's `oom` event is awaited after its exit.
const OOM_EVENT_GRACE: Duration = Duration::from_secs(2);

/// Tells the engine the stage's process started (an empty chunk): an idle
/// limit counts from here.
pub(crate) async fn say_started(log: &tokio::sync::mpsc::Sender<Chunk>) {
    let _ = log
        .send(Chunk {
            stream: Stream::Stdout,
            bytes: Vec::new(),
        })
        .await;
}
