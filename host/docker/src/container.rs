//! One container stage: check the image, create the container (unprivileged,
//! limited, labelled), attach before starting so no output is lost, stream
//! stdout/stderr to the engine, wait or stop, read the exit code and the
//! OOM flag, and always remove the container.

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptions, CreateImageOptions, KillContainerOptions,
    RemoveContainerOptions,
};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use sentinel_engine::exec::{
    Chunk, Outcome, PRIVATE_MOUNT, StageJob, StageReport, Stream, WORKSPACE_MOUNT,
};
use sentinel_pipeline::Network;

use crate::{DockerExecutor, is_not_found, labels, object_name};

/// Resolves an image to its id; tries a pull when it is not present.
pub(crate) async fn image_id(ex: &DockerExecutor, image: &str) -> Result<String, String> {
    match ex.docker.inspect_image(image).await {
        Ok(i) => return Ok(i.id.unwrap_or_default()),
        Err(e) if is_not_found(&e) => {}
        Err(e) => return Err(format!("cannot inspect image `{image}`: {e}")),
    }
    let opts = CreateImageOptions {
        from_image: Some(image.to_string()),
        ..Default::default()
    };
    let pull = async {
        let mut stream = ex.docker.create_image(Some(opts), None, None);
        while let Some(item) = stream.next().await {
            item.map_err(|e| e.to_string())?;
        }
        Ok::<(), String>(())
    };
    let pulled = tokio::time::timeout(Duration::from_secs(120), pull)
        .await
        .unwrap_or_else(|_| Err("the pull timed out after 120 s".into()));
    match pulled {
        Ok(()) => ex
            .docker
            .inspect_image(image)
            .await
            .map(|i| i.id.unwrap_or_default())
            .map_err(|e| format!("image `{image}` was pulled but cannot be inspected: {e}")),
        Err(e) => Err(format!(
            "image `{image}` is not present on the Docker host and could not be pulled ({e}); build or load it first"
        )),
    }
}

fn network_mode(ex_network: Option<&str>, wanted: Network) -> String {
    match (wanted, ex_network) {
        (Network::None, _) => "none".into(),
        (Network::Bridge, _) => "bridge".into(),
        (Network::Run, Some(n)) => n.into(),
        (Network::Run, None) => "bridge".into(),
    }
}

/// Runs one container stage to its end.
pub(crate) async fn run(
    ex: &DockerExecutor,
    job: StageJob,
    stop: CancellationToken,
) -> StageReport {
    let image_id = match image_id(ex, &job.image).await {
        Ok(id) => id,
        Err(e) => {
            return StageReport {
                outcome: Outcome::StartFailed(e),
                image_id: None,
            };
        }
    };
    let network = if job.limits.network == Network::Run {
        match crate::services::ensure_network(ex, &job.run_id, &job.owner).await {
            Ok(n) => Some(n),
            Err(e) => {
                return StageReport {
                    outcome: Outcome::StartFailed(e),
                    image_id: Some(image_id),
                };
            }
        }
    } else {
        None
    };
    let mut env: Vec<String> = job.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if !job.env.iter().any(|(k, _)| k == "HOME") {
        env.push("HOME=/tmp".into());
    }
    let name = object_name(&job.run_id, job.stage.as_str());
    let body = ContainerCreateBody {
        image: Some(job.image.clone()),
        entrypoint: Some(vec!["sh".into(), "-e".into(), "-c".into()]),
        cmd: Some(vec![job.script.clone()]),
        env: Some(env),
        user: Some(job.user.clone()),
        working_dir: Some(WORKSPACE_MOUNT.into()),
        labels: Some(labels(
            &job.run_id,
            &job.owner,
            "stage",
            Some(job.stage.as_str()),
        )),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        tty: Some(false),
        host_config: Some(HostConfig {
            binds: Some(vec![
                format!("{}:{WORKSPACE_MOUNT}:rw", job.workspace.display()),
                format!("{}:{PRIVATE_MOUNT}:rw", job.private_dir.display()),
            ]),
            memory: Some(job.limits.memory as i64),
            memory_swap: Some(job.limits.memory as i64),
            nano_cpus: job.limits.cpus.map(|c| (c * 1e9) as i64),
            pids_limit: Some(i64::from(job.limits.pids)),
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(vec!["no-new-privileges".into()]),
            privileged: Some(false),
            network_mode: Some(network_mode(network.as_deref(), job.limits.network)),
            tmpfs: Some(HashMap::from([(
                "/tmp".to_string(),
                "rw,nosuid,nodev,size=256m".to_string(),
            )])),
            ..Default::default()
        }),
        ..Default::default()
    };
    let created = ex
        .docker
        .create_container(
            Some(CreateContainerOptions {
                name: Some(name.clone()),
                ..Default::default()
            }),
            body,
        )
        .await;
    let id = match created {
        Ok(c) => c.id,
        Err(e) => {
            return StageReport {
                outcome: Outcome::StartFailed(format!("cannot create the container: {e}")),
                image_id: Some(image_id),
            };
        }
    };
    let outcome = run_created(ex, &id, job, stop).await;
    // Removal is off the stage's critical path; `end_run` waits for it.
    let docker = ex.docker.clone();
    let removal = tokio::spawn(async move {
        let opts = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        if let Err(e) = docker.remove_container(&id, Some(opts)).await
            && !is_not_found(&e)
        {
            tracing::warn!("cannot remove container {name}: {e}");
        }
    });
    ex.removals.lock().await.push(removal);
    StageReport {
        outcome,
        image_id: Some(image_id),
    }
}

async fn run_created(
    ex: &DockerExecutor,
    id: &str,
    job: StageJob,
    stop: CancellationToken,
) -> Outcome {
    let attach = AttachContainerOptions {
        stream: true,
        stdout: true,
        stderr: true,
        logs: false,
        ..Default::default()
    };
    let mut output = match ex.docker.attach_container(id, Some(attach)).await {
        Ok(a) => a.output,
        Err(e) => return Outcome::StartFailed(format!("cannot attach to the container: {e}")),
    };
    let log = job.log.clone();
    drop(job);
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
    if let Err(e) = ex.docker.start_container(id, None).await {
        pump.abort();
        return Outcome::StartFailed(format!("cannot start the container: {e}"));
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
        return Outcome::Stopped;
    }
    // Docker learns of an OOM kill from a separate event that can come after
    // the exit, and on cgroup v1 sometimes never sets the flag. Only the
    // kernel's OOM killer or Sentinel sends SIGKILL to a stage, and Sentinel
    // did not (it was not stopped): so a SIGKILL exit (137) is an OOM kill.
    let mut attempts = 0;
    loop {
        let state = match ex.docker.inspect_container(id, None).await {
            Ok(info) => info.state.unwrap_or_default(),
            Err(e) => return Outcome::Error(format!("cannot inspect the finished container: {e}")),
        };
        let code = state.exit_code.unwrap_or(-1);
        if state.oom_killed == Some(true) || (code == 137 && attempts >= 5) {
            return Outcome::OomKilled;
        }
        if code != 137 {
            return Outcome::Exited { code };
        }
        attempts += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
