//! The run's network and its services (wercker's sidecars): containers
//! started before the stages on a per-run network, reachable by their name,
//! with an optional readiness command retried until it succeeds. A service's
//! secret variables reach it the way a stage's do: in a file its shell
//! reads before it runs the image's own command (so a service with secrets
//! needs `sh` in its image), never in the container's configuration.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, EndpointSettings, HostConfig, NetworkCreateRequest, NetworkingConfig,
};
use bollard::query_parameters::CreateContainerOptions;
use futures_util::StreamExt;

use sentinel_api::RunId;
use sentinel_engine::ErrorKind;
use sentinel_engine::exec::{ExecError, RunContext, Var};
use sentinel_engine::lease::Owner;
use sentinel_pipeline::ServicePlan;

use crate::container::{SECRETS_MOUNT, fail, image_id, secrets_file};
use crate::{DockerExecutor, labels, object_name};

/// The run's network, created on first use.
pub(crate) async fn ensure_network(
    ex: &DockerExecutor,
    run: &RunId,
    owner: &Owner,
) -> Result<String, ExecError> {
    let mut networks = ex.networks.lock().await;
    if let Some(n) = networks.get(run) {
        return Ok(n.clone());
    }
    let name = object_name(run, "net");
    let req = NetworkCreateRequest {
        name: name.clone(),
        driver: Some("bridge".into()),
        labels: Some(labels(run, owner, "network", None)),
        ..Default::default()
    };
    ex.docker
        .create_network(req)
        .await
        .map_err(|e| fail(format!("cannot create the run's network: {e}")))?;
    networks.insert(run.clone(), name.clone());
    Ok(name)
}

/// Starts every service and waits until each is ready.
pub(crate) async fn start(ex: &DockerExecutor, ctx: &RunContext) -> Result<(), ExecError> {
    if ctx.services.is_empty() {
        return Ok(());
    }
    let network = ensure_network(ex, &ctx.run_id, &ctx.owner)
        .await
        .map_err(|e| ExecError::said(ErrorKind::Transient, e.to_string()))?;
    let mut started = Vec::new();
    let mut links = Vec::new();
    for (svc, env) in &ctx.services {
        let id = start_one(ex, ctx, &network, svc, env).await.map_err(|e| {
            ExecError::said(ErrorKind::Permanent, format!("service `{}`: {e}", svc.name))
        })?;
        if svc.links {
            links.extend(link_vars(ex, &id, &network, &svc.name).await);
        }
        started.push((svc, id));
    }
    if !links.is_empty() {
        ex.links.lock().await.insert(ctx.run_id.clone(), links);
    }
    for (svc, id) in started {
        if let Some(cmd) = &svc.ready {
            wait_ready(ex, &id, cmd, svc.ready_timeout)
                .await
                .map_err(|e| {
                    ExecError::said(ErrorKind::Permanent, format!("service `{}` {e}", svc.name))
                })?;
        }
    }
    Ok(())
}

/// The variables Docker's links gave a container linked to a service, from
/// its address on the run's network and the ports its image exposes:
/// `<NAME>_PORT=tcp://ADDR:P` (the lowest port), and for each port
/// `<NAME>_PORT_<P>_TCP=tcp://ADDR:P`, `…_ADDR`, `…_PORT`, `…_PROTO`.
async fn link_vars(ex: &DockerExecutor, id: &str, network: &str, name: &str) -> Vec<Var> {
    let Ok(info) = ex.docker.inspect_container(id, None).await else {
        return Vec::new();
    };
    let ip = info
        .network_settings
        .and_then(|n| n.networks)
        .and_then(|n| n.get(network).and_then(|e| e.ip_address.clone()))
        .unwrap_or_default();
    let mut ports: Vec<(u16, String)> = info
        .config
        .and_then(|c| c.exposed_ports)
        .unwrap_or_default()
        .iter()
        .filter_map(|p| {
            let (port, proto) = p.split_once('/').unwrap_or((p, "tcp"));
            Some((port.parse().ok()?, proto.to_string()))
        })
        .collect();
    ports.sort();
    link_env(name, &ip, &ports)
}

/// The link variables of service `name` at `ip` with `ports`.
pub(crate) fn link_env(name: &str, ip: &str, ports: &[(u16, String)]) -> Vec<Var> {
    if ip.is_empty() {
        return Vec::new();
    }
    let prefix: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    let mut vars = Vec::new();
    for (i, (port, proto)) in ports.iter().enumerate() {
        let url = format!("{proto}://{ip}:{port}");
        if i == 0 {
            vars.push(Var::plain(format!("{prefix}_PORT"), url.clone()));
        }
        let base = format!("{prefix}_PORT_{port}_{}", proto.to_ascii_uppercase());
        vars.push(Var::plain(format!("{base}_ADDR"), ip));
        vars.push(Var::plain(format!("{base}_PORT"), port.to_string()));
        vars.push(Var::plain(format!("{base}_PROTO"), proto.clone()));
        vars.push(Var::plain(base, url));
    }
    vars
}

/// The image's own entrypoint and command, run after the secrets file is read.
pub(crate) async fn wrapped(
    ex: &DockerExecutor,
    image: &str,
    command: Option<&String>,
) -> Result<(Vec<String>, Vec<String>), ExecError> {
    let mut argv = match command {
        Some(c) => vec!["sh".to_string(), "-c".to_string(), c.clone()],
        None => {
            let config = ex
                .docker
                .inspect_image(image)
                .await
                .map_err(|e| fail(format!("cannot inspect image `{image}`: {e}")))?
                .config
                .unwrap_or_default();
            let mut argv = config.entrypoint.unwrap_or_default();
            argv.extend(config.cmd.unwrap_or_default());
            argv
        }
    };
    if argv.is_empty() {
        argv = vec!["sh".into()];
    }
    let loader = format!(". {SECRETS_MOUNT} && exec \"$@\"");
    Ok((
        vec!["sh".into(), "-c".into(), loader, "sentinel".into()],
        argv,
    ))
}

async fn start_one(
    ex: &DockerExecutor,
    ctx: &RunContext,
    network: &str,
    svc: &ServicePlan,
    env: &[Var],
) -> Result<String, ExecError> {
    image_id(ex, &svc.image, &ctx.run_id).await?;
    let secret: Vec<Var> = env.iter().filter(|v| v.secret).cloned().collect();
    let mut binds = Vec::new();
    let (entrypoint, cmd) = if secret.is_empty() {
        match &svc.command {
            Some(c) => (
                Some(vec!["sh".to_string(), "-c".to_string()]),
                Some(vec![c.clone()]),
            ),
            None => (None, None),
        }
    } else {
        let root = ctx.runs_dir.join(ctx.run_id.as_str());
        let file = secrets_file(&root, &format!("service-{}", svc.name), &secret, 0o444)
            .map_err(|e| fail(format!("cannot write its secret variables: {e}")))?;
        binds.push(format!("{}:{SECRETS_MOUNT}:ro", file.display()));
        let (e, c) = wrapped(ex, &svc.image, svc.command.as_ref()).await?;
        (Some(e), Some(c))
    };
    let body = ContainerCreateBody {
        image: Some(svc.image.clone()),
        entrypoint,
        cmd,
        env: Some(
            env.iter()
                .filter(|v| !v.secret)
                .map(|v| format!("{}={}", v.name, v.value))
                .collect(),
        ),
        labels: Some(labels(&ctx.run_id, &ctx.owner, "service", Some(&svc.name))),
        hostname: Some(svc.name.clone()),
        host_config: Some(HostConfig {
            binds: (!binds.is_empty()).then_some(binds),
            network_mode: Some(network.to_string()),
            security_opt: Some(vec!["no-new-privileges".into()]),
            privileged: Some(false),
            pids_limit: Some(1024),
            ..Default::default()
        }),
        networking_config: Some(NetworkingConfig {
            endpoints_config: Some(HashMap::from([(
                network.to_string(),
                EndpointSettings {
                    aliases: Some(vec![svc.name.clone()]),
                    ..Default::default()
                },
            )])),
        }),
        ..Default::default()
    };
    let name = object_name(&ctx.run_id, &format!("svc-{}", svc.name));
    let created = ex
        .docker
        .create_container(
            Some(CreateContainerOptions {
                name: Some(name),
                ..Default::default()
            }),
            body,
        )
        .await
        .map_err(|e| fail(format!("cannot create the container: {e}")))?;
    ex.docker
        .start_container(&created.id, None)
        .await
        .map_err(|e| fail(format!("cannot start: {e}")))?;
    Ok(created.id)
}

/// Runs `cmd` in the service until it exits 0, or fails after `timeout`.
async fn wait_ready(
    ex: &DockerExecutor,
    id: &str,
    cmd: &str,
    timeout: Duration,
) -> Result<(), ExecError> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        let info = ex
            .docker
            .inspect_container(id, None)
            .await
            .map_err(|e| fail(format!("cannot be inspected: {e}")))?;
        let state = info.state.unwrap_or_default();
        if state.running != Some(true) {
            return Err(fail(format!(
                "exited (code {}) before it was ready",
                state.exit_code.unwrap_or(-1)
            )));
        }
        let exec = ex
            .docker
            .create_exec(
                id,
                CreateExecOptions {
                    cmd: Some(vec!["sh", "-c", cmd]),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| fail(format!("readiness check cannot run: {e}")))?;
        if let Ok(StartExecResults::Attached { mut output, .. }) =
            ex.docker.start_exec(&exec.id, None).await
        {
            let mut text = Vec::new();
            while let Some(Ok(chunk)) = output.next().await {
                text.extend_from_slice(&chunk.into_bytes());
            }
            last = String::from_utf8_lossy(&text)
                .trim()
                .chars()
                .take(500)
                .collect();
        }
        let code = ex
            .docker
            .inspect_exec(&exec.id)
            .await
            .ok()
            .and_then(|i| i.exit_code);
        if code == Some(0) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let detail = if last.is_empty() {
                String::new()
            } else {
                format!(": {last}")
            };
            return Err(fail(format!(
                "did not become ready within {} (`{cmd}` exited {}){detail}",
                humantime::format_duration(timeout),
                code.map_or("abnormally".to_string(), |c| c.to_string())
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn link_variables_are_the_ones_docker_gave() {
        let vars = super::link_env(
            "redis-db",
            "172.18.0.2",
            &[(6379, "tcp".into()), (16379, "tcp".into())],
        );
        let got: Vec<String> = vars
            .iter()
            .map(|v| format!("{}={}", v.name, v.value))
            .collect();
        for want in [
            "REDIS_DB_PORT=tcp://172.18.0.2:6379",
            "REDIS_DB_PORT_6379_TCP=tcp://172.18.0.2:6379",
            "REDIS_DB_PORT_6379_TCP_ADDR=172.18.0.2",
            "REDIS_DB_PORT_6379_TCP_PORT=6379",
            "REDIS_DB_PORT_6379_TCP_PROTO=tcp",
            "REDIS_DB_PORT_16379_TCP_ADDR=172.18.0.2",
        ] {
            assert!(got.contains(&want.to_string()), "{want} in {got:?}");
        }
        assert!(super::link_env("x", "", &[(1, "tcp".into())]).is_empty());
    }
}
