//! Clean-up on the swarm: a run's services, secrets, networks and volumes
//! at its end, and those of dead owners at start-up. Services, secrets and
//! networks are the cluster's (the manager removes them); volumes are each
//! node's: the manager's are removed through its API, the other nodes'
//! by a one-shot global helper service on every node that is given the node's
//! Docker socket and removes the volumes labelled with the run, nothing
//! else.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use bollard::Docker;
use bollard::models::{Mount, MountType, TaskSpecContainerSpec};
use bollard::query_parameters::{
    ListContainersOptions, ListNetworksOptions, ListNodesOptions, ListSecretsOptions,
    ListServicesOptions, ListVolumesOptions, RemoveVolumeOptions,
};
use tokio_util::sync::CancellationToken;

use sentinel_api::RunId;
use sentinel_engine::lease::Owner;

use super::SwarmExecutor;
use super::task::{self, Job};
use crate::{LABEL_KIND, LABEL_OWNER, LABEL_RUN, is_not_found, object_name};

/// A sweep's labels: its owner and kind, no run (it removes the run's
/// containers, never its own).
fn sweep_labels() -> HashMap<String, String> {
    HashMap::from([
        (LABEL_OWNER.to_string(), Owner::current().label()),
        (LABEL_KIND.to_string(), "sweep".to_string()),
    ])
}

fn by_label(label: &str) -> Option<HashMap<String, Vec<String>>> {
    Some(HashMap::from([(
        "label".to_string(),
        vec![label.to_string()],
    )]))
}

/// A node's hostname (or its id when it cannot be read), for messages.
pub(crate) async fn node_name(docker: &Docker, id: &str) -> String {
    match docker.inspect_node(id).await {
        Ok(n) => n
            .description
            .and_then(|d| d.hostname)
            .map(|h| format!("node {h} ({})", &id[..id.len().min(12)]))
            .unwrap_or_else(|| format!("node {id}")),
        Err(_) => format!("node {id}"),
    }
}

/// Tries a removal every 200 ms, `tries` times at most, while Swarm
/// refuses it (a secret or network in use until its tasks are gone);
/// `true` when it removed the object, `false` when it was gone already or
/// still refused (said in the log).
async fn until_removed<F, Fut>(what: &str, tries: usize, remove: F) -> bool
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), bollard::errors::Error>>,
{
    for _ in 0..tries {
        match remove().await {
            Ok(()) => return true,
            Err(e) if is_not_found(&e) => return false,
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    tracing::warn!("cannot remove {what}");
    false
}

/// Removes a secret; quiet when it is gone.
pub(crate) async fn remove_secret(docker: &Docker, id: &str) {
    until_removed(&format!("the secret {id}"), 50, || docker.delete_secret(id)).await;
}

/// Removes a network once no task uses it; quiet when it is gone.
async fn remove_network(docker: &Docker, id: &str) {
    until_removed(&format!("the network {id}"), 100, || {
        docker.remove_network(id)
    })
    .await;
}

/// Everything of the runs matching `label` (`key[=value]`) whose labels
/// `dead` accepts.
#[derive(Default)]
struct Found {
    runs: BTreeSet<String>,
    services: Vec<String>,
    containers: Vec<String>,
    secrets: Vec<String>,
    networks: Vec<String>,
    volumes: Vec<String>,
}

/// The ids of `items` (labels, id) whose labels `dead` accepts; their runs
/// noted in `runs`.
fn dead_ones(
    runs: &mut BTreeSet<String>,
    dead: &impl Fn(&HashMap<String, String>) -> bool,
    items: impl IntoIterator<Item = (HashMap<String, String>, Option<String>)>,
) -> Vec<String> {
    items
        .into_iter()
        .filter(|(l, _)| dead(l))
        .filter_map(|(l, id)| {
            if let Some(r) = l.get(LABEL_RUN) {
                runs.insert(r.clone());
            }
            id
        })
        .collect()
}

async fn find(
    docker: &Docker,
    label: &str,
    dead: impl Fn(&HashMap<String, String>) -> bool,
) -> Found {
    let mut runs = BTreeSet::new();
    let services = docker
        .list_services(Some(ListServicesOptions {
            filters: by_label(label),
            ..Default::default()
        }))
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|s| (s.spec.and_then(|s| s.labels).unwrap_or_default(), s.id));
    let services = dead_ones(&mut runs, &dead, services);
    // Swarm leaves a removed service's ended containers: its tasks' are ours.
    let containers = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: by_label(label),
            ..Default::default()
        }))
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|c| (c.labels.unwrap_or_default(), c.id))
        .filter(|(l, _)| l.contains_key("com.docker.swarm.task.id"));
    let containers = dead_ones(&mut runs, &dead, containers);
    let secrets = docker
        .list_secrets(Some(ListSecretsOptions {
            filters: by_label(label),
        }))
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|s| (s.spec.and_then(|s| s.labels).unwrap_or_default(), s.id));
    let secrets = dead_ones(&mut runs, &dead, secrets);
    let networks = docker
        .list_networks(Some(ListNetworksOptions {
            filters: by_label(label),
        }))
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|n| (n.labels.unwrap_or_default(), n.id));
    let networks = dead_ones(&mut runs, &dead, networks);
    let volumes = docker
        .list_volumes(Some(ListVolumesOptions {
            filters: by_label(label),
        }))
        .await
        .ok()
        .and_then(|v| v.volumes)
        .unwrap_or_default()
        .into_iter()
        .map(|v| (v.labels, Some(v.name)));
    let volumes = dead_ones(&mut runs, &dead, volumes);
    Found {
        runs,
        services,
        containers,
        secrets,
        networks,
        volumes,
    }
}

/// Removes what was found, in the order Swarm needs: the services, their
/// containers once stopped (here, then on the other nodes with their
/// volumes), then the secrets, the networks (a network removed while a
/// container of it lives is left half-removed on its node) and the
/// volumes. Returns how many objects went.
async fn remove(ex: &SwarmExecutor, f: Found, other_nodes: bool) -> usize {
    let docker = &ex.local.docker;
    let mut removed = 0;
    for s in &f.services {
        task::remove(docker, s).await;
        removed += 1;
    }
    // Stopped by their removed services (1 s grace), then removed.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    for c in &f.containers {
        while std::time::Instant::now() < deadline {
            let running = docker
                .inspect_container(c, None)
                .await
                .ok()
                .and_then(|i| i.state)
                .and_then(|s| s.running)
                .unwrap_or(false);
            if !running {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if crate::remove_container(docker, c).await.unwrap_or(false) {
            removed += 1;
        }
    }
    if other_nodes {
        sweep_nodes(ex, &f.runs.iter().cloned().collect::<Vec<_>>()).await;
    }
    for s in &f.secrets {
        remove_secret(docker, s).await;
        removed += 1;
    }
    for n in &f.networks {
        remove_network(docker, n).await;
        removed += 1;
    }
    // A removed overlay network lingers on its nodes for a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !f.networks.is_empty() && std::time::Instant::now() < deadline {
        let listed = docker
            .list_networks(None::<ListNetworksOptions>)
            .await
            .unwrap_or_default();
        if !listed
            .iter()
            .any(|n| n.id.as_ref().is_some_and(|id| f.networks.contains(id)))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for v in &f.volumes {
        if remove_volume(docker, v).await {
            removed += 1;
        }
    }
    removed
}

async fn remove_volume(docker: &Docker, name: &str) -> bool {
    until_removed(&format!("the volume {name}"), 50, || {
        docker.remove_volume(name, Some(RemoveVolumeOptions { force: true }))
    })
    .await
}

/// Removes everything of a run.
pub(crate) async fn run(ex: &SwarmExecutor, run: &RunId) {
    let mut found = find(&ex.local.docker, &format!("{LABEL_RUN}={run}"), |_| true).await;
    found.runs.insert(run.to_string());
    // Only a run some of whose stages ran elsewhere left volumes elsewhere.
    let elsewhere = ex
        .nodes_used
        .lock()
        .await
        .remove(run)
        .is_some_and(|nodes| nodes.iter().any(|n| *n != ex.node_id));
    remove(ex, found, elsewhere).await;
}

/// Removes what dead owners left; returns how many objects went.
pub(crate) async fn reap(ex: &SwarmExecutor) -> usize {
    let found = find(&ex.local.docker, LABEL_OWNER, |l| {
        l.get(LABEL_OWNER)
            .and_then(|o| Owner::from_label(o))
            .is_some_and(|o| !o.is_alive())
    })
    .await;
    let any = !found.runs.is_empty();
    remove(ex, found, any).await
}

/// The number of nodes in the swarm.
async fn nodes(docker: &Docker) -> usize {
    docker
        .list_nodes(None::<ListNodesOptions>)
        .await
        .map(|n| n.len())
        .unwrap_or(1)
}

/// Removes the volumes of `runs` on every node but this one (a one-node
/// swarm has none): a one-shot global service of the helper image with the node's
/// Docker socket, which removes the volumes labelled with those runs.
async fn sweep_nodes(ex: &SwarmExecutor, runs: &[String]) {
    if runs.is_empty() || nodes(&ex.local.docker).await < 2 {
        return;
    }
    // Earlier sweeps' own containers first (a task cannot remove its own).
    let mut script = format!(
        "docker ps -aq --filter label={LABEL_KIND}=sweep --filter status=exited | xargs -r docker rm -f >/dev/null 2>&1\n\
         for i in $(seq 1 50); do left=0\n"
    );
    for r in runs {
        script.push_str(&format!(
            "docker ps -aq --filter label={LABEL_RUN}={r} | xargs -r docker rm -f >/dev/null 2>&1\n\
             for v in $(docker volume ls -q --filter label={LABEL_RUN}={r}); do docker volume rm -f \"$v\" >/dev/null 2>&1 || left=1; done\n"
        ));
    }
    script.push_str("[ $left = 0 ] && exit 0; sleep 0.2; done; exit 1\n");
    let mut raw = [0u8; 4];
    getrandom::fill(&mut raw).expect("the system's random source");
    let run: RunId = match runs[0].parse() {
        Ok(r) => r,
        Err(_) => return,
    };
    let name = object_name(&run, &format!("sweep-{}", hex::encode(raw)));
    let job = Job {
        name: name.clone(),
        labels: sweep_labels(),
        container: TaskSpecContainerSpec {
            image: Some(ex.helper.clone()),
            command: Some(vec!["sh".into(), "-c".into(), script]),
            labels: Some(sweep_labels()),
            mounts: Some(vec![Mount {
                target: Some("/var/run/docker.sock".into()),
                source: Some(ex.node_socket.clone()),
                typ: Some(MountType::BIND),
                ..Default::default()
            }]),
            ..Default::default()
        },
        resources: None,
        constraints: vec![format!("node.id != {}", ex.node_id)],
        networks: Vec::new(),
        global: true,
    };
    let id = match task::create(&ex.local.docker, job).await {
        Ok(id) => id,
        Err(e) => {
            tracing::warn!("cannot sweep the nodes' volumes: {e}");
            return;
        }
    };
    let others = nodes(&ex.local.docker).await.saturating_sub(1).max(1);
    let never = CancellationToken::new();
    let timer = {
        let never = never.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
            never.cancel();
        })
    };
    match task::finished(&ex.local.docker, &id, others, &never).await {
        Some(ended) => {
            for e in ended.iter().filter(|e| e.state != "complete") {
                tracing::warn!("a node's volumes were not all removed: {}", e.why());
            }
        }
        None => tracing::warn!("the nodes' volume sweep did not end within 60 s"),
    }
    timer.abort();
    task::remove(&ex.local.docker, &id).await;
}
