//! Container stages and services through the Docker Engine API (bollard).
//!
//! Every container and network carries labels: the run, the stage or
//! service, and the owning process ([`sentinel_engine::lease::Owner`]), so
//! [`DockerExecutor::end_run`] removes a run's resources and
//! [`DockerExecutor::reap`] removes those of dead processes. Stages run
//! unprivileged: never `--privileged`, `no-new-privileges`, every capability
//! dropped, a pids limit, memory (without extra swap) and CPU limits. Secret
//! variables reach a container in a file its shell reads, never in its
//! configuration (`docker inspect` shows none). The workspace is the local
//! one ([`sentinel_engine::exec::LocalWorkspace`]), bind-mounted. Image
//! builds ([`build`]) send a workspace folder as their context; registry
//! credentials are the engine's to use for pushes and pulls, never a
//! stage's.

mod build;
mod buildkit;
mod commit;
mod container;
mod context;
mod endpoint;
mod images;
mod job;
mod job_run;
mod netns;
mod process;
mod services;
mod shared;
pub mod swarm;
mod warm;

pub use images::MadeImage;
pub use job::JobContainer;
pub use swarm::{SwarmConfig, SwarmExecutor};

use std::collections::HashMap;

use async_trait::async_trait;
use bollard::Docker;
use bollard::query_parameters::{
    ListContainersOptions, ListNetworksOptions, RemoveContainerOptions,
};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use sentinel_api::RunId;
use sentinel_engine::exec::{ExecError, Executor, RunContext, StageJob, StageReport};
use sentinel_engine::lease::Owner;

/// Label naming the run a resource belongs to.
pub const LABEL_RUN: &str = "dev.sentinel.run";
/// Label naming the stage (or service) a container runs.
pub const LABEL_STAGE: &str = "dev.sentinel.stage";
/// Label naming the owning process (`boot_id:pid:start_ticks`).
pub const LABEL_OWNER: &str = "dev.sentinel.owner";
/// `stage`, `service` or `network`.
pub const LABEL_KIND: &str = "dev.sentinel.kind";

/// Why Docker could not be reached.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot reach the Docker engine: {0} (is dockerd running? see the README's set-up command)"
)]
pub struct ConnectError(pub(crate) String);

/// The Docker executor.
#[derive(Debug, Clone)]
pub struct DockerExecutor {
    docker: Docker,
    /// The per-run network, created on first use.
    networks: std::sync::Arc<Mutex<HashMap<RunId, String>>>,
    /// Container removals still under way.
    removals: std::sync::Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    /// Containers made ready ahead of their stages.
    warm: warm::WarmMap,
    /// Containers shared by `reuse: true` stages.
    shared: shared::SharedMap,
    /// Docker-link variables of each run's services (`links: true`).
    links: std::sync::Arc<Mutex<HashMap<RunId, Vec<sentinel_engine::exec::Var>>>>,
    /// Private pulls and endpoint pushes, by run.
    images: std::sync::Arc<Mutex<endpoint::Images>>,
    /// Each run's registry credentials (for its pushes and pulls).
    registries: std::sync::Arc<Mutex<HashMap<RunId, Vec<sentinel_engine::exec::RegistryAuth>>>>,
    /// Network namespaces kept ready for `network: none` containers.
    netns: netns::NetPool,
}

impl DockerExecutor {
    /// The run's registry credentials.
    pub(crate) async fn registry_auth(
        &self,
        run: &RunId,
    ) -> Vec<sentinel_engine::exec::RegistryAuth> {
        self.registries
            .lock()
            .await
            .get(run)
            .cloned()
            .unwrap_or_default()
    }
}

impl DockerExecutor {
    /// The first placement constraint this machine does not meet.
    async fn unmet_placement(&self, placement: &[String]) -> Option<String> {
        if placement.is_empty() {
            return None;
        }
        let info = self.docker.info().await.ok();
        let engine_labels = info
            .as_ref()
            .and_then(|i| i.labels.clone())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|l| {
                l.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect();
        let facts = sentinel_pipeline::placement::NodeFacts {
            hostname: info
                .as_ref()
                .and_then(|i| i.name.clone())
                .unwrap_or_default(),
            os: std::env::consts::OS.to_string(),
            arch: std::env::consts::ARCH.to_string(),
            engine_labels,
            ..Default::default()
        };
        sentinel_pipeline::placement::unmet(placement, &facts).map(str::to_string)
    }
}

/// Lower-case names for Docker objects of a run.
pub(crate) fn object_name(run: &RunId, suffix: &str) -> String {
    format!("sentinel-{}-{suffix}", run.as_str().to_ascii_lowercase())
}

pub(crate) fn labels(
    run: &RunId,
    owner: &Owner,
    kind: &str,
    stage: Option<&str>,
) -> HashMap<String, String> {
    let mut l = HashMap::from([
        (LABEL_RUN.to_string(), run.to_string()),
        (LABEL_OWNER.to_string(), owner.label()),
        (LABEL_KIND.to_string(), kind.to_string()),
    ]);
    if let Some(s) = stage {
        l.insert(LABEL_STAGE.to_string(), s.to_string());
    }
    l
}

fn label_filter(label: &str) -> Option<HashMap<String, Vec<String>>> {
    Some(HashMap::from([(
        "label".to_string(),
        vec![label.to_string()],
    )]))
}

impl DockerExecutor {
    /// Connects to the local Docker engine and negotiates the API version
    /// (the Debian daemon speaks 1.41).
    pub async fn connect() -> Result<Self, ConnectError> {
        let docker =
            Docker::connect_with_local_defaults().map_err(|e| ConnectError(e.to_string()))?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| ConnectError(e.to_string()))?;
        docker
            .ping()
            .await
            .map_err(|e| ConnectError(e.to_string()))?;
        Ok(Self {
            docker,
            networks: Default::default(),
            removals: Default::default(),
            warm: Default::default(),
            shared: Default::default(),
            links: Default::default(),
            registries: Default::default(),
            images: Default::default(),
            netns: Default::default(),
        })
    }

    /// Keeps up to `n` network namespaces ready for `network: none`
    /// containers, made while no run is ending (a server's choice: a
    /// one-off `sentinel run` has no idle time to make them in).
    pub fn with_ready_namespaces(mut self, n: usize) -> Self {
        self.netns = netns::NetPool::new(n);
        self
    }

    /// Waits until the namespaces being made ready are there.
    pub async fn settled(&self) {
        self.netns.settled().await;
    }

    /// Removes the namespaces kept ready (at a server's stop); returns how
    /// many holders were removed.
    pub async fn release_ready(&self) -> usize {
        self.netns.drain(&self.docker).await
    }

    /// Removes a container; the namespace holder it used is spent (removed
    /// after its run).
    pub(crate) async fn remove(&self, id: &str) -> Result<bool, bollard::errors::Error> {
        let removed = remove_container(&self.docker, id).await;
        self.netns.returned(id).await;
        removed
    }

    /// The underlying client (for tests and tools).
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    /// Removes every container and network matching `label` (`key=value`)
    /// for which `keep` is false; returns how many were removed.
    async fn remove_labelled(
        &self,
        label: &str,
        keep: impl Fn(&HashMap<String, String>) -> bool,
    ) -> usize {
        let mut removed = 0;
        let containers = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: label_filter(label),
                ..Default::default()
            }))
            .await
            .unwrap_or_default();
        for c in containers {
            if keep(&c.labels.clone().unwrap_or_default()) {
                continue;
            }
            let Some(id) = c.id else { continue };
            match self.remove(&id).await {
                Ok(true) => removed += 1,
                Ok(false) => {}
                Err(e) => tracing::warn!("cannot remove container {id}: {e}"),
            }
        }
        let networks = self
            .docker
            .list_networks(Some(ListNetworksOptions {
                filters: label_filter(label),
            }))
            .await
            .unwrap_or_default();
        for n in networks {
            // A swarm's networks are the Swarm executor's to remove.
            if keep(&n.labels.clone().unwrap_or_default()) || n.scope.as_deref() == Some("swarm") {
                continue;
            }
            let Some(id) = n.id else { continue };
            match self.docker.remove_network(&id).await {
                Ok(()) => removed += 1,
                Err(e) if is_not_found(&e) => {}
                Err(e) => tracing::warn!("cannot remove network {id}: {e}"),
            }
        }
        removed
    }
}

/// Removes a container (running or not) with its anonymous volumes;
/// `Ok(false)` when it was gone already.
pub(crate) async fn remove_container(
    docker: &Docker,
    id: &str,
) -> Result<bool, bollard::errors::Error> {
    let opts = RemoveContainerOptions {
        force: true,
        v: true,
        ..Default::default()
    };
    match docker.remove_container(id, Some(opts)).await {
        Ok(()) => Ok(true),
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

pub(crate) fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

#[async_trait]
impl Executor for DockerExecutor {
    async fn start_run(&self, ctx: &RunContext) -> Result<(), ExecError> {
        if !ctx.registries.is_empty() {
            self.registries
                .lock()
                .await
                .insert(ctx.run_id.clone(), ctx.registries.clone());
        }
        services::start(self, ctx).await
    }

    async fn run_stage(&self, mut job: StageJob, stop: CancellationToken) -> StageReport {
        if let Some(c) = self.unmet_placement(&job.limits.placement).await {
            return StageReport::of(sentinel_engine::exec::Outcome::StartFailed(format!(
                "this machine does not meet the placement `{c}`: the local Docker executor runs every stage here (run it with `--executor swarm` on a cluster whose nodes meet it)"
            )));
        }
        // A stage on the run's network sees its linked services' variables
        // (its own variables win).
        if job.limits.network == sentinel_pipeline::Network::Run
            && let Some(links) = self.links.lock().await.get(&job.run_id)
        {
            for v in links {
                if !job.env.iter().any(|e| e.name == v.name) {
                    job.env.push(v.clone());
                }
            }
        }
        match &job.work {
            sentinel_engine::exec::Work::Job(_) => job_run::run(self, job, stop).await,
            sentinel_engine::exec::Work::Build(_) => build::run(self, job, stop).await,
            _ => container::run(self, job, stop).await,
        }
    }

    async fn prewarm(&self, w: sentinel_engine::exec::WarmStage) {
        warm::prewarm(self, w).await
    }

    async fn end_run(&self, run_id: &RunId) {
        warm::end_run(self, run_id).await;
        shared::end_run(self, run_id).await;
        self.links.lock().await.remove(run_id);
        endpoint::end_run(self, run_id).await;
        self.registries.lock().await.remove(run_id);
        let pending: Vec<_> = self.removals.lock().await.drain(..).collect();
        for removal in pending {
            let _ = removal.await;
        }
        self.networks.lock().await.remove(run_id);
        self.remove_labelled(&format!("{LABEL_RUN}={run_id}"), |_| false)
            .await;
        self.netns.refill(&self.docker).await;
    }

    async fn reap(&self) -> usize {
        self.remove_labelled(LABEL_OWNER, |labels| {
            labels
                .get(LABEL_OWNER)
                .and_then(|o| Owner::from_label(o))
                // No owner that parses: not a container of a run (one
                // started from a committed image); not ours to remove.
                .is_none_or(|o| o.is_alive())
        })
        .await
    }
}
