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

/// Removes a secret; quiet when it is gone.
pub(crate) async fn remove_secret(docker: &Docker, id: &str) {
    // A secret is in use until its service is gone from the cluster.
    for _ in 0..50 {
        match docker.delete_secret(id).await {
            Ok(()) => return,
            Err(e) if is_not_found(&e) => return,
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    tracing::warn!("cannot remove the secret {id}");
}

/// Removes a network once no task uses it; quiet when it is gone.
pub(crate) async fn remove_network(docker: &Docker, id: &str) {
    for _ in 0..100 {
        match docker.remove_network(id).await {
            Ok(()) => return,
            Err(e) if is_not_found(&e) => return,
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    tracing::warn!("cannot remove the network {id}");
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

async fn find(
    docker: &Docker,
    label: &str,
    dead: impl Fn(&HashMap<String, String>) -> bool,
) -> Found {
    let mut f = Found::default();
    let keep = |l: &HashMap<String, String>,
                id: Option<String>,
                to: fn(&mut Found) -> &mut Vec<String>,
                f: &mut Found| {
        if !dead(l) {
            return;
        }
        if let Some(r) = l.get(LABEL_RUN) {
            f.runs.insert(r.clone());
        }
        if let Some(id) = id {
            to(f).push(id);
        }
    };
    for s in docker
        .list_services(Some(ListServicesOptions {
            filters: by_label(label),
            ..Default::default()
        }))
        .await
        .unwrap_or_default()
    {
        let l = s
            .spec
            .as_ref()
            .and_then(|s| s.labels.clone())
            .unwrap_or_default();
        keep(&l, s.id, |f| &mut f.services, &mut f);
    }
    // Swarm leaves a removed service's ended containers: its tasks' are ours.
    for c in docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: by_label(label),
            ..Default::default()
        }))
        .await
        .unwrap_or_default()
    {
        let l = c.labels.clone().unwrap_or_default();
        if l.contains_key("com.docker.swarm.task.id") {
            keep(&l, c.id, |f| &mut f.containers, &mut f);
        }
    }
    for s in docker
        .list_secrets(Some(ListSecretsOptions {
            filters: by_label(label),
        }))
        .await
        .unwrap_or_default()
    {
        let l = s
            .spec
            .as_ref()
            .and_then(|s| s.labels.clone())
            .unwrap_or_default();
        keep(&l, s.id, |f| &mut f.secrets, &mut f);
    }
    for n in docker
        .list_networks(Some(ListNetworksOptions {
            filters: by_label(label),
        }))
        .await
        .unwrap_or_default()
    {
        let l = n.labels.clone().unwrap_or_default();
        keep(&l, n.id, |f| &mut f.networks, &mut f);
    }
    for v in docker
        .list_volumes(Some(ListVolumesOptions {
            filters: by_label(label),
        }))
        .await
        .ok()
        .and_then(|v| v.volumes)
        .unwrap_or_default()
    {
        keep(&v.labels, Some(v.name), |f| &mut f.volumes, &mut f);
    }
    f
}

/// Removes what was found, in the order Swarm needs: the services, their
/// containers once stopped (here, then on the other nodes with their
/// volumes), then the secrets, the networks (a network removed while a
/// container of it lives is left half-removed on its node) and the
/// volumes. Returns how many objects went.
async fn remove(ex: &SwarmExecutor, f: Found, other_nodes: bool) -> usize {
    let docker = &ex.docker;
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
    for _ in 0..50 {
        match docker
            .remove_volume(name, Some(RemoveVolumeOptions { force: true }))
            .await
        {
            Ok(()) => return true,
            Err(e) if is_not_found(&e) => return false,
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    tracing::warn!("cannot remove the volume {name}");
    false
}

/// Removes everything of a run.
pub(crate) async fn run(ex: &SwarmExecutor, run: &RunId) {
    let mut found = find(&ex.docker, &format!("{LABEL_RUN}={run}"), |_| true).await;
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
    let found = find(&ex.docker, LABEL_OWNER, |l| {
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
    if runs.is_empty() || nodes(&ex.docker).await < 2 {
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
    let id = match task::create(&ex.docker, job).await {
        Ok(id) => id,
        Err(e) => {
            tracing::warn!("cannot sweep the nodes' volumes: {e}");
            return;
        }
    };
    let others = nodes(&ex.docker).await.saturating_sub(1).max(1);
    let never = CancellationToken::new();
    let timer = {
        let never = never.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
            never.cancel();
        })
    };
    match task::finished(&ex.docker, &id, others, &never).await {
        Some(ended) => {
            for e in ended.iter().filter(|e| e.state != "complete") {
                tracing::warn!("a node's volumes were not all removed: {}", e.why());
            }
        }
        None => tracing::warn!("the nodes' volume sweep did not end within 60 s"),
    }
    timer.abort();
    task::remove(&ex.docker, &id).await;
}
