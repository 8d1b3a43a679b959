//! Network namespaces kept ready: making a container's own network
//! namespace is about half of what Docker spends starting a `network: none`
//! container on a small host. A server keeps a few *holders* ready while it
//! is idle — each a stopped-at-a-read `sh` in its own empty, loopback-only
//! namespace (no network, every capability dropped, unprivileged user,
//! read-only, tiny limits) — and a `network: none` stage joins one
//! (`container:<holder>`) instead of making its own. A holder is lent to
//! exactly one stage container and removed with it, so a stage still sees a
//! namespace of its own that no other stage, run or process ever shares.
//! A spent holder (its container gone) is never lent again; spent holders
//! are removed — tearing a namespace down costs about as much as making
//! one — and the pool refilled after a run ends, off every run's critical
//! path. With none ready a stage makes its namespace as before.

use std::collections::HashMap;
use std::sync::Arc;

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::CreateContainerOptions;
use tokio::sync::Mutex;

use sentinel_engine::lease::Owner;

use crate::{LABEL_KIND, LABEL_OWNER};

/// The `dev.sentinel.kind` of a holder.
pub(crate) const KIND: &str = "netns";

#[derive(Debug, Default)]
struct State {
    /// Holders ready to lend, by container id.
    ready: Vec<String>,
    /// Holders lent, by the id of the stage container using each.
    lent: HashMap<String, String>,
    /// Holders whose container is gone, to remove.
    spent: Vec<String>,
    /// The image holders are made from: one a stage ran (it has `sh`).
    image: Option<String>,
    /// A refill under way.
    filling: Option<Arc<tokio::sync::Notify>>,
}

/// The holders of one executor.
#[derive(Debug, Clone, Default)]
pub(crate) struct NetPool {
    target: usize,
    state: Arc<Mutex<State>>,
}

impl NetPool {
    pub(crate) fn new(target: usize) -> Self {
        Self {
            target,
            state: Default::default(),
        }
    }

    /// A ready holder for a `network: none` container of `image` (which
    /// later holders are made from), if there is one.
    pub(crate) async fn take(&self, image: &str) -> Option<String> {
        if self.target == 0 {
            return None;
        }
        let mut s = self.state.lock().await;
        s.image = Some(image.to_string());
        s.ready.pop()
    }

    /// Records that `container` uses `holder` (removed with it).
    pub(crate) async fn lend(&self, container: &str, holder: String) {
        self.state
            .lock()
            .await
            .lent
            .insert(container.to_string(), holder);
    }

    /// `container` is gone: the holder it used is spent.
    pub(crate) async fn returned(&self, container: &str) {
        let mut s = self.state.lock().await;
        if let Some(h) = s.lent.remove(container) {
            s.spent.push(h);
        }
    }

    /// Removes the spent holders and makes holders until `target` are
    /// ready, in the background; a refill already under way takes on what
    /// was added since it began.
    pub(crate) async fn refill(&self, docker: &bollard::Docker) {
        let mut s = self.state.lock().await;
        if s.filling.is_some() || (s.spent.is_empty() && s.ready.len() >= self.target) {
            return;
        }
        let done = Arc::new(tokio::sync::Notify::new());
        s.filling = Some(done.clone());
        drop(s);
        let (docker, state, target) = (docker.clone(), self.state.clone(), self.target);
        tokio::spawn(async move {
            // One holder at a time, spent ones first, until nothing is left
            // to do — checked under the lock that ends the refill, so what
            // a run's end adds meanwhile is never left waiting.
            let mut can_make = true;
            loop {
                let (spent, image) = {
                    let mut s = state.lock().await;
                    let image = s
                        .image
                        .clone()
                        .filter(|_| can_make && s.ready.len() < target);
                    if s.spent.is_empty() && image.is_none() {
                        s.filling = None;
                        break;
                    }
                    (std::mem::take(&mut s.spent), image)
                };
                for h in spent {
                    if let Err(e) = crate::remove_container(&docker, &h).await {
                        tracing::warn!("cannot remove network holder {h}: {e}");
                    }
                }
                if let Some(image) = image {
                    match make(&docker, &image).await {
                        Ok(id) => state.lock().await.ready.push(id),
                        Err(e) => {
                            tracing::debug!("no network namespace made ready: {e}");
                            can_make = false;
                        }
                    }
                }
            }
            done.notify_waiters();
        });
    }

    /// Waits for a refill under way to finish.
    pub async fn settled(&self) {
        loop {
            let waiting = {
                let s = self.state.lock().await;
                let Some(done) = s.filling.clone() else {
                    return;
                };
                let w = done.notified_owned();
                drop(s);
                w
            };
            waiting.await;
        }
    }

    /// Removes every holder, ready or lent.
    pub(crate) async fn drain(&self, docker: &bollard::Docker) -> usize {
        self.settled().await;
        let ids: Vec<String> = {
            let mut s = self.state.lock().await;
            let mut ids: Vec<String> = s.ready.drain(..).collect();
            ids.append(&mut s.spent);
            ids.extend(s.lent.drain().map(|(_, h)| h));
            ids
        };
        let mut removed = 0;
        for id in ids {
            if let Ok(true) = crate::remove_container(docker, &id).await {
                removed += 1;
            }
        }
        removed
    }
}

/// Creates and starts one holder.
async fn make(docker: &bollard::Docker, image: &str) -> Result<String, bollard::errors::Error> {
    let labels = HashMap::from([
        (LABEL_OWNER.to_string(), Owner::current().label()),
        (LABEL_KIND.to_string(), KIND.to_string()),
    ]);
    let body = ContainerCreateBody {
        image: Some(image.to_string()),
        // `sh` reading a standard input that stays open and silent: it
        // waits there, using nothing, until it is removed.
        entrypoint: Some(vec!["sh".into()]),
        cmd: Some(Vec::new()),
        user: Some("65534:65534".into()),
        labels: Some(labels),
        open_stdin: Some(true),
        stdin_once: Some(false),
        tty: Some(false),
        host_config: Some(HostConfig {
            network_mode: Some("none".into()),
            readonly_rootfs: Some(true),
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(vec!["no-new-privileges".into()]),
            privileged: Some(false),
            pids_limit: Some(16),
            memory: Some(32 << 20),
            memory_swap: Some(32 << 20),
            ..Default::default()
        }),
        ..Default::default()
    };
    let created = docker
        .create_container(None::<CreateContainerOptions>, body)
        .await?;
    if let Err(e) = docker.start_container(&created.id, None).await {
        let _ = crate::remove_container(docker, &created.id).await;
        return Err(e);
    }
    Ok(created.id)
}
