//! The Swarm executor: a run's container stages and services as Docker
//! Swarm services spread over a cluster's nodes, with the local Docker
//! executor's behaviour.
//!
//! - A stage is a one-shot service of one task (restart `none`; not a
//!   `replicated-job`, whose removal Docker 20.10 does not carry out):
//!   its exit code is the task's, its log the service's, a timeout or a
//!   cancel removes it. Limits are Swarm resources (memory, CPUs, pids);
//!   every capability is dropped; `placement:` constraints place it.
//! - The workspace stays on the server ([`transfer`]): a helper task fills
//!   two volumes of the stage's node (the workspace, the private folder)
//!   from a per-stage URL, the stage runs on that node with them, and a
//!   second helper sends them back. No host folder is ever mounted.
//! - Secret variables are a Swarm secret per stage, read by the stage's
//!   shell; `docker service inspect` and `docker inspect` show none.
//! - Services are services on the run's overlay network, reachable by
//!   name, ready when their readiness command (a health check) passes.
//! - Everything carries the run and owner labels: [`SwarmExecutor::end_run`]
//!   removes a run's services, secrets, networks and volumes (a one-shot
//!   global service
//!   on every node for theirs), [`SwarmExecutor::reap`] those of dead owners.

mod clean;
mod services;
mod spec;
pub(crate) mod stage;
mod task;
pub(crate) mod transfer;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use bollard::Docker;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use sentinel_api::RunId;
use sentinel_engine::exec::{
    ExecError, Executor, Outcome, RunContext, StageJob, StageReport, Work,
};

use crate::ConnectError;

/// The image the helper tasks run (`sh`, `tar`, `wget`; the docker CLI
/// for clean-ups on other nodes); every node must have it or pull it.
pub const DEFAULT_HELPER_IMAGE: &str = "sentinel/docker-cli:local";

/// How a Swarm executor is set up.
#[derive(Debug, Clone, Default)]
pub struct SwarmConfig {
    /// Where the workspace archive server listens, an address every node
    /// reaches (port 0: any free port). Default: this machine's address on
    /// Docker's default bridge, which only this machine's tasks reach (a
    /// one-node swarm).
    pub listen: Option<SocketAddr>,
    /// The helper image (default [`DEFAULT_HELPER_IMAGE`]).
    pub helper_image: Option<String>,
    /// Where each node's Docker socket is, for the clean-up helper
    /// (default `/var/run/docker.sock`; Swarm's templates such as
    /// `{{.Node.ID}}` are expanded per node).
    pub node_socket: Option<String>,
}

/// The Swarm executor.
#[derive(Debug, Clone)]
pub struct SwarmExecutor {
    /// The manager's own Docker: the client of every Swarm call; jobs and
    /// image builds run there.
    pub(crate) local: crate::DockerExecutor,
    pub(crate) transfer: Arc<transfer::Transfer>,
    pub(crate) helper: String,
    /// Each node's Docker socket (a template).
    pub(crate) node_socket: String,
    /// The id of the manager node this executor talks to.
    pub(crate) node_id: String,
    /// The nodes each run's stages ran on (other nodes' volumes need a sweep).
    pub(crate) nodes_used: Arc<Mutex<HashMap<RunId, std::collections::BTreeSet<String>>>>,
    /// Each run's overlay network, created on first use.
    pub(crate) networks: Arc<Mutex<HashMap<RunId, String>>>,
    /// Removals under way off the stages' critical path.
    pub(crate) removals: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl SwarmExecutor {
    /// Connects to the local Docker engine, which must be a Swarm manager,
    /// and starts the workspace archive server.
    pub async fn connect(config: SwarmConfig) -> Result<Self, ConnectError> {
        Self::with_local(crate::DockerExecutor::connect().await?, config).await
    }

    /// The same on an executor of the manager's Docker already connected
    /// (a server's, with its namespaces kept ready for jobs).
    pub async fn with_local(
        local: crate::DockerExecutor,
        config: SwarmConfig,
    ) -> Result<Self, ConnectError> {
        let docker = &local.docker;
        let info = docker
            .info()
            .await
            .map_err(|e| ConnectError(e.to_string()))?;
        let swarm = info.swarm.unwrap_or_default();
        let node_id = swarm.node_id.clone().unwrap_or_default();
        let active = swarm
            .local_node_state
            .is_some_and(|s| s.to_string() == "active");
        if !active || swarm.control_available != Some(true) {
            return Err(ConnectError(
                "this Docker engine is not a Swarm manager (run `docker swarm init`, or point DOCKER_HOST at a manager)".into(),
            ));
        }
        let listen = match config.listen {
            Some(a) => a,
            None => default_listen(docker).await?,
        };
        let transfer = transfer::Transfer::start(listen).await.map_err(|e| {
            ConnectError(format!(
                "cannot listen on {listen} for the workspace archives: {e}"
            ))
        })?;
        Ok(Self {
            local,
            transfer: Arc::new(transfer),
            helper: config
                .helper_image
                .unwrap_or_else(|| DEFAULT_HELPER_IMAGE.to_string()),
            node_id,
            node_socket: config
                .node_socket
                .unwrap_or_else(|| "/var/run/docker.sock".to_string()),
            nodes_used: Arc::default(),
            networks: Arc::default(),
            removals: Arc::default(),
        })
    }

    /// The underlying client (for tests and tools).
    pub fn client(&self) -> &Docker {
        &self.local.docker
    }

    /// Where the workspace archive server listens.
    pub fn archive_address(&self) -> String {
        self.transfer.base()
    }

    /// Runs `f` off the critical path; `end_run` waits for it.
    pub(crate) async fn later(&self, f: impl std::future::Future<Output = ()> + Send + 'static) {
        self.removals.lock().await.push(tokio::spawn(f));
    }
}

/// This machine's address on Docker's default bridge, any port.
async fn default_listen(docker: &Docker) -> Result<SocketAddr, ConnectError> {
    let net = docker
        .inspect_network(
            "bridge",
            None::<bollard::query_parameters::InspectNetworkOptions>,
        )
        .await
        .map_err(|e| ConnectError(format!("cannot inspect the bridge network: {e}")))?;
    let gateway = net
        .ipam
        .and_then(|i| i.config)
        .unwrap_or_default()
        .into_iter()
        .find_map(|c| c.gateway)
        .ok_or_else(|| ConnectError("the bridge network has no gateway address".into()))?;
    format!("{gateway}:0")
        .parse()
        .map_err(|e| ConnectError(format!("bridge gateway `{gateway}`: {e}")))
}

#[async_trait]
impl Executor for SwarmExecutor {
    async fn start_run(&self, ctx: &RunContext) -> Result<(), ExecError> {
        // The manager's Docker pushes and pulls with the run's credentials.
        if !ctx.registries.is_empty() {
            self.local
                .registries
                .lock()
                .await
                .insert(ctx.run_id.clone(), ctx.registries.clone());
        }
        services::start(self, ctx).await
    }

    async fn run_stage(&self, job: StageJob, stop: CancellationToken) -> StageReport {
        match &job.work {
            Work::Container(_) => stage::run(self, job, stop).await,
            // A job's agent talks to its container's standard input, and a
            // build needs the engine that keeps its image: the manager's.
            Work::Job(_) | Work::Build(_) => self.local.run_stage(job, stop).await,
            Work::Step(_) => StageReport::of(Outcome::StartFailed(
                "a WebAssembly step runs in Sentinel's own sandbox, not on a swarm".into(),
            )),
        }
    }

    async fn end_run(&self, run_id: &RunId) {
        let pending: Vec<_> = self.removals.lock().await.drain(..).collect();
        for removal in pending {
            let _ = removal.await;
        }
        self.networks.lock().await.remove(run_id);
        clean::run(self, run_id).await;
        self.local.end_run(run_id).await;
    }

    async fn reap(&self) -> usize {
        clean::reap(self).await + self.local.reap().await
    }
}
