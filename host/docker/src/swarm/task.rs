//! One piece of Swarm work: a service of one task (restart condition
//! `none`: it runs once), waited for through its task's state, its output read
//! from the service's logs as it comes, and its end: the task's state, exit
//! code, error and node. Removing the service ends the task.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bollard::Docker;
use bollard::models::{
    ServiceSpec, ServiceSpecMode, ServiceSpecModeReplicated, TaskSpec, TaskSpecContainerSpec,
    TaskSpecPlacement, TaskSpecResources, TaskSpecRestartPolicy,
    TaskSpecRestartPolicyConditionEnum, TaskState,
};
use bollard::query_parameters::{ListTasksOptions, LogsOptions};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use sentinel_engine::exec::{Chunk, Stream};

/// How a task ended.
#[derive(Debug, Clone, Default)]
pub(crate) struct Ended {
    pub state: String,
    pub exit_code: Option<i64>,
    /// Swarm's error (`task: non-zero exit (3)`, `No such image: …`).
    pub err: Option<String>,
    pub node: Option<String>,
}

impl Ended {
    /// It ran and exited with `exit_code`.
    pub(crate) fn ran(&self) -> bool {
        matches!(self.state.as_str(), "complete" | "failed") && self.exit_code.is_some()
    }

    /// Why it did not run, for a message.
    pub(crate) fn why(&self) -> String {
        self.err.clone().unwrap_or_else(|| self.state.clone())
    }
}

/// What a job service is made of.
pub(crate) struct Job {
    pub name: String,
    pub labels: HashMap<String, String>,
    pub container: TaskSpecContainerSpec,
    pub resources: Option<TaskSpecResources>,
    pub constraints: Vec<String>,
    pub networks: Vec<bollard::models::NetworkAttachmentConfig>,
    /// One task on every node instead of one.
    pub global: bool,
}

impl Job {
    fn spec(self) -> ServiceSpec {
        // One-shot services (restart `none`) rather than `replicated-job`
        // and `global-job`: Docker 20.10 leaves a removed job's running
        // task running (and its container behind), so a stopped stage would
        // go on; a removed service's task is stopped and its container
        // removed. With restart `none` a finished task is never replaced.
        let mode = if self.global {
            ServiceSpecMode {
                global: Some(HashMap::new()),
                ..Default::default()
            }
        } else {
            ServiceSpecMode {
                replicated: Some(ServiceSpecModeReplicated { replicas: Some(1) }),
                ..Default::default()
            }
        };
        ServiceSpec {
            name: Some(self.name),
            labels: Some(self.labels),
            mode: Some(mode),
            task_template: Some(TaskSpec {
                container_spec: Some(self.container),
                resources: self.resources,
                restart_policy: Some(TaskSpecRestartPolicy {
                    condition: Some(TaskSpecRestartPolicyConditionEnum::NONE),
                    ..Default::default()
                }),
                placement: (!self.constraints.is_empty()).then(|| TaskSpecPlacement {
                    constraints: Some(self.constraints),
                    ..Default::default()
                }),
                networks: (!self.networks.is_empty()).then_some(self.networks),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// Creates a service; returns its id.
pub(crate) async fn create(docker: &Docker, job: Job) -> Result<String, String> {
    let name = job.name.clone();
    docker
        .create_service(job.spec(), None)
        .await
        .map_err(|e| format!("cannot create the service {name}: {e}"))?
        .id
        .ok_or_else(|| format!("the service {name} has no id"))
}

/// Removes a service (its tasks end); quiet when it is gone already.
pub(crate) async fn remove(docker: &Docker, id: &str) {
    match docker.delete_service(id).await {
        Ok(()) => {}
        Err(e) if crate::is_not_found(&e) => {}
        Err(e) => tracing::warn!("cannot remove the service {id}: {e}"),
    }
}

/// A task no node can take (its placement is met by none): ended, not
/// left pending until a node appears.
fn unplaceable(t: &bollard::models::Task) -> bool {
    t.status.as_ref().is_some_and(|s| {
        s.state == Some(TaskState::PENDING)
            && s.err
                .as_deref()
                .is_some_and(|e| e.contains("no suitable node"))
    })
}

fn terminal(s: &TaskState) -> bool {
    matches!(
        s,
        TaskState::COMPLETE
            | TaskState::FAILED
            | TaskState::REJECTED
            | TaskState::SHUTDOWN
            | TaskState::ORPHANED
            | TaskState::REMOVE
    )
}

/// The tasks of a service.
pub(crate) async fn tasks(
    docker: &Docker,
    service: &str,
) -> Result<Vec<bollard::models::Task>, bollard::errors::Error> {
    docker
        .list_tasks(Some(ListTasksOptions {
            filters: Some(HashMap::from([(
                "service".to_string(),
                vec![service.to_string()],
            )])),
        }))
        .await
}

/// How often a task's state is read.
const POLL: Duration = Duration::from_millis(100);

/// Waits until the service's task is `running` (or ended); returns the
/// node it runs on, or how it ended.
pub(crate) async fn started(
    docker: &Docker,
    service: &str,
    stop: &CancellationToken,
) -> Option<Result<String, Ended>> {
    loop {
        if let Ok(list) = tasks(docker, service).await
            && let Some(t) = list.first()
        {
            let status = t.status.clone().unwrap_or_default();
            let state = status.state.unwrap_or(TaskState::NEW);
            if state == TaskState::RUNNING {
                return Some(Ok(t.node_id.clone().unwrap_or_default()));
            }
            if terminal(&state) || unplaceable(t) {
                return Some(Err(ended(t)));
            }
        }
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            () = stop.cancelled() => return None,
        }
    }
}

fn ended(t: &bollard::models::Task) -> Ended {
    let status = t.status.clone().unwrap_or_default();
    Ended {
        state: status.state.map(|s| s.to_string()).unwrap_or_default(),
        exit_code: status.container_status.and_then(|c| c.exit_code),
        err: status.err.filter(|e| !e.is_empty()),
        node: t.node_id.clone(),
    }
}

/// Waits for the end of every task of a service (one, or one per node
/// for a global job); `None` when `stop` fired first.
pub(crate) async fn finished(
    docker: &Docker,
    service: &str,
    expect: usize,
    stop: &CancellationToken,
) -> Option<Vec<Ended>> {
    loop {
        if let Ok(list) = tasks(docker, service).await
            && list.len() >= expect
            && list.iter().all(|t| {
                unplaceable(t)
                    || t.status
                        .as_ref()
                        .and_then(|s| s.state.as_ref())
                        .is_some_and(terminal)
            })
        {
            return Some(list.iter().map(ended).collect());
        }
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            () = stop.cancelled() => return None,
        }
    }
}

/// A service's output, followed as it comes and sent to `log`; the count
/// of messages sent lets the end catch up without repeating any.
pub(crate) struct Follow {
    sent: Arc<AtomicUsize>,
    stop: CancellationToken,
    pump: tokio::task::JoinHandle<()>,
}

fn options(follow: bool) -> LogsOptions {
    LogsOptions {
        follow,
        stdout: true,
        stderr: true,
        tail: "all".into(),
        ..Default::default()
    }
}

fn chunk(item: bollard::container::LogOutput) -> Option<Chunk> {
    match item {
        bollard::container::LogOutput::StdOut { message }
        | bollard::container::LogOutput::Console { message } => Some(Chunk {
            stream: Stream::Stdout,
            bytes: message.to_vec(),
        }),
        bollard::container::LogOutput::StdErr { message } => Some(Chunk {
            stream: Stream::Stderr,
            bytes: message.to_vec(),
        }),
        _ => None,
    }
}

/// Starts following a service's output into `log`.
pub(crate) fn follow(docker: &Docker, service: &str, log: mpsc::Sender<Chunk>) -> Follow {
    let sent = Arc::new(AtomicUsize::new(0));
    let stop = CancellationToken::new();
    let mut stream = docker.service_logs(service, Some(options(true)));
    let (s2, stop2) = (sent.clone(), stop.clone());
    let pump = tokio::spawn(async move {
        loop {
            let item = tokio::select! {
                item = stream.next() => item,
                () = stop2.cancelled() => return,
            };
            let Some(Ok(item)) = item else { return };
            if let Some(c) = chunk(item) {
                if log.send(c).await.is_err() {
                    return;
                }
                s2.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    Follow { sent, stop, pump }
}

impl Follow {
    /// Ends the following once the task ended (or before a stopped one is
    /// removed, its log with it): what the follow has not
    /// delivered yet is read from the service's whole log and sent.
    pub(crate) async fn finish(self, docker: &Docker, service: &str, log: &mpsc::Sender<Chunk>) {
        // The follow usually delivers the last lines within moments.
        tokio::time::sleep(Duration::from_millis(150)).await;
        self.stop.cancel();
        let _ = self.pump.await;
        let sent = self.sent.load(Ordering::SeqCst);
        let mut all = docker.service_logs(service, Some(options(false)));
        let mut n = 0usize;
        while let Some(Ok(item)) = all.next().await {
            let Some(c) = chunk(item) else { continue };
            n += 1;
            if n > sent && log.send(c).await.is_err() {
                return;
            }
        }
    }
}

/// A service's whole output as text (a helper's, for a message).
pub(crate) async fn output(docker: &Docker, service: &str) -> String {
    let mut all = docker.service_logs(service, Some(options(false)));
    let mut text = Vec::new();
    while let Some(Ok(item)) = all.next().await {
        text.extend_from_slice(&item.into_bytes());
    }
    String::from_utf8_lossy(&text).trim().to_string()
}
