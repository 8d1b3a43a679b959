//! Committing a job's container as an image (`commit: repo:tag`). `docker
//! commit` would copy the container's configuration — the run's variables,
//! Sentinel's agent as the entrypoint, its labels — so the image is given
//! the base image's configuration instead: its env, user, entrypoint,
//! command, working folder and labels. The job's variables reach its
//! container through a file, never its configuration, so none of their
//! values can be merged in. Sentinel's labels are blanked (a container
//! started from the image later is no run's), and the image says where it
//! came from in `dev.sentinel.committed-from`.

use bollard::models::ContainerConfig;
use bollard::query_parameters::CommitContainerOptions;

use crate::build::split_ref;
use crate::{DockerExecutor, LABEL_KIND, LABEL_OWNER, LABEL_RUN, LABEL_STAGE};

/// The label naming the run and stage an image was committed from.
pub const LABEL_COMMITTED_FROM: &str = "dev.sentinel.committed-from";

/// A shell's usual search path, for a base image that sets none.
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Commits `container` as `to`, with `base`'s configuration; returns the
/// new image's id.
pub(crate) async fn commit(
    ex: &DockerExecutor,
    container: &str,
    base: &str,
    to: &str,
    from: &str,
) -> Result<String, String> {
    let image = ex
        .docker
        .inspect_image(base)
        .await
        .map_err(|e| format!("cannot inspect `{base}`: {e}"))?;
    let cfg = image.config.unwrap_or_default();
    let mut labels = cfg.labels.clone().unwrap_or_default();
    for key in [LABEL_RUN, LABEL_OWNER, LABEL_KIND, LABEL_STAGE] {
        labels.insert(key.to_string(), String::new());
    }
    labels.insert(LABEL_COMMITTED_FROM.to_string(), from.to_string());
    // An empty list would let Docker take the container's own.
    let env = match cfg.env.filter(|e| !e.is_empty()) {
        Some(env) => env,
        None => vec![DEFAULT_PATH.to_string()],
    };
    // An empty (not absent) entrypoint: Docker takes the container's own
    // (the agent) for an absent one.
    let entrypoint = Some(cfg.entrypoint.unwrap_or_default());
    let cmd = match cfg.cmd {
        Some(c) if !c.is_empty() => Some(c),
        _ if entrypoint.as_ref().is_some_and(|e| !e.is_empty()) => Some(Vec::new()),
        _ => Some(vec!["sh".to_string()]),
    };
    let config = ContainerConfig {
        user: Some(
            cfg.user
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| "0".into()),
        ),
        env: Some(env),
        entrypoint,
        cmd,
        working_dir: Some(
            cfg.working_dir
                .filter(|w| !w.is_empty())
                .unwrap_or_else(|| "/".into()),
        ),
        labels: Some(labels),
        exposed_ports: cfg.exposed_ports,
        volumes: cfg.volumes,
        stop_signal: cfg.stop_signal,
        healthcheck: cfg.healthcheck,
        ..Default::default()
    };
    let (repo, tag) = split_ref(to);
    let opts = CommitContainerOptions {
        container: Some(container.to_string()),
        repo: Some(repo.to_string()),
        tag: Some(tag.to_string()),
        comment: Some(format!("committed by Sentinel from {from}")),
        pause: true,
        ..Default::default()
    };
    let done = ex
        .docker
        .commit_container(opts, config)
        .await
        .map_err(|e| e.to_string())?;
    Ok(done.id)
}

/// Commits a stage's (or job's) container once it succeeded, saying so in
/// its log; the outputs naming the image, or the outcome saying why not.
pub(crate) async fn commit_stage(
    ex: &DockerExecutor,
    job: &sentinel_engine::exec::StageJob,
    container: &str,
    base: &str,
    to: &str,
) -> Result<String, sentinel_engine::exec::Outcome> {
    let from = format!("{}/{}", job.run_id, job.stage);
    match commit(ex, container, base, to, &from).await {
        Ok(image) => {
            let note = format!("── committed the container as {to} ({image})\n");
            let _ = job
                .log
                .send(sentinel_engine::exec::Chunk {
                    stream: sentinel_engine::exec::Stream::Stderr,
                    bytes: note.into_bytes(),
                })
                .await;
            Ok(format!("image={to}\nimage_id={image}\n"))
        }
        Err(e) => Err(sentinel_engine::exec::Outcome::Error(format!(
            "cannot commit the container as `{to}`: {e}"
        ))),
    }
}
