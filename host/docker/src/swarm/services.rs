//! A run's overlay network and its services on Swarm: each service a
//! Swarm service of one task on the run's attachable overlay network,
//! reachable by its name, its readiness command a health check (Swarm
//! reports the task `running` only once the check passed), its secret
//! variables a Swarm secret its shell reads.

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::{
    HealthConfig, NetworkAttachmentConfig, NetworkCreateRequest, ServiceSpec, ServiceSpecMode,
    ServiceSpecModeReplicated, TaskSpec, TaskSpecContainerSpec, TaskSpecResources,
    TaskSpecRestartPolicy, TaskSpecRestartPolicyConditionEnum,
};
use sentinel_api::RunId;
use sentinel_engine::ErrorKind;
use sentinel_engine::exec::{ExecError, RunContext, Var, env_file};
use sentinel_engine::lease::Owner;
use sentinel_pipeline::ServicePlan;
use tokio_util::sync::CancellationToken;

use super::SwarmExecutor;
use crate::container::SECRETS_MOUNT;
use crate::{labels, object_name};

/// Creates an overlay network (`internal`: with no way out).
pub(crate) async fn create_overlay(
    ex: &SwarmExecutor,
    name: &str,
    internal: bool,
    labels: &HashMap<String, String>,
) -> Result<(), String> {
    ex.local
        .docker
        .create_network(NetworkCreateRequest {
            name: name.into(),
            driver: Some("overlay".into()),
            attachable: Some(true),
            internal: Some(internal),
            labels: Some(labels.clone()),
            ..Default::default()
        })
        .await
        .map(|_| ())
        .map_err(|e| format!("cannot create the network {name}: {e}"))
}

/// The run's overlay network, created on first use.
pub(crate) async fn ensure_network(
    ex: &SwarmExecutor,
    run: &RunId,
    owner: &Owner,
) -> Result<String, String> {
    let mut networks = ex.networks.lock().await;
    if let Some(n) = networks.get(run) {
        return Ok(n.clone());
    }
    let name = object_name(run, "overlay");
    create_overlay(ex, &name, false, &labels(run, owner, "network", None)).await?;
    networks.insert(run.clone(), name.clone());
    Ok(name)
}

/// Starts every service and waits until each is ready.
pub(crate) async fn start(ex: &SwarmExecutor, ctx: &RunContext) -> Result<(), ExecError> {
    if ctx.services.is_empty() {
        return Ok(());
    }
    let network = ensure_network(ex, &ctx.run_id, &ctx.owner)
        .await
        .map_err(|e| ExecError::said(ErrorKind::Transient, e))?;
    let mut started = Vec::new();
    for (svc, env) in &ctx.services {
        let id = start_one(ex, ctx, &network, svc, env).await.map_err(|e| {
            ExecError::said(ErrorKind::Permanent, format!("service `{}`: {e}", svc.name))
        })?;
        started.push((svc, id));
    }
    for (svc, id) in started {
        wait_ready(ex, &id, svc).await.map_err(|e| {
            ExecError::said(ErrorKind::Permanent, format!("service `{}` {e}", svc.name))
        })?;
    }
    Ok(())
}

async fn start_one(
    ex: &SwarmExecutor,
    ctx: &RunContext,
    network: &str,
    svc: &ServicePlan,
    env: &[Var],
) -> Result<String, String> {
    let l = labels(&ctx.run_id, &ctx.owner, "service", Some(&svc.name));
    let secret: Vec<Var> = env.iter().filter(|v| v.secret).cloned().collect();
    let (command, args, secrets) = if secret.is_empty() {
        match &svc.command {
            Some(c) => (
                Some(vec!["sh".into(), "-c".into()]),
                Some(vec![c.clone()]),
                None,
            ),
            None => (None, None, None),
        }
    } else {
        let name = object_name(&ctx.run_id, &format!("svc-{}-env", svc.name));
        let id = super::stage::create_secret(ex, &name, env_file(&secret).as_bytes(), &l).await?;
        // The image's own command after the file is read, as locally: the
        // manager inspects the image, so it must have it.
        let (entrypoint, cmd) =
            crate::services::wrapped(&ex.local, &svc.image, svc.command.as_ref())
                .await
                .map_err(|e| e.to_string())?;
        (
            Some(entrypoint),
            Some(cmd),
            Some(vec![super::spec::secret_ref(
                &id,
                &name,
                SECRETS_MOUNT,
                (0, 0),
                0o444,
            )]),
        )
    };
    let health = svc.ready.as_ref().map(|cmd| HealthConfig {
        test: Some(vec!["CMD-SHELL".into(), cmd.clone()]),
        interval: Some(Duration::from_millis(250).as_nanos() as i64),
        timeout: Some(Duration::from_secs(10).as_nanos() as i64),
        retries: Some(100_000),
        ..Default::default()
    });
    let spec = ServiceSpec {
        name: Some(object_name(&ctx.run_id, &format!("svc-{}", svc.name))),
        labels: Some(l.clone()),
        mode: Some(ServiceSpecMode {
            replicated: Some(ServiceSpecModeReplicated { replicas: Some(1) }),
            ..Default::default()
        }),
        task_template: Some(TaskSpec {
            container_spec: Some(TaskSpecContainerSpec {
                image: Some(svc.image.clone()),
                command,
                args,
                env: Some(
                    env.iter()
                        .filter(|v| !v.secret)
                        .map(|v| format!("{}={}", v.name, v.value))
                        .collect(),
                ),
                hostname: Some(svc.name.clone()),
                labels: Some(l.clone()),
                secrets,
                health_check: health,
                stop_grace_period: Some(1_000_000_000),
                ..Default::default()
            }),
            resources: Some(TaskSpecResources {
                limits: Some(bollard::models::Limit {
                    pids: Some(1024),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            restart_policy: Some(TaskSpecRestartPolicy {
                condition: Some(TaskSpecRestartPolicyConditionEnum::NONE),
                ..Default::default()
            }),
            networks: Some(vec![NetworkAttachmentConfig {
                target: Some(network.into()),
                aliases: Some(vec![svc.name.clone()]),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        // Its name resolves to its task's address (no virtual IP: that
        // needs IPVS in every node's kernel), as a container's does.
        endpoint_spec: Some(bollard::models::EndpointSpec {
            mode: Some(bollard::models::EndpointSpecModeEnum::DNSRR),
            ..Default::default()
        }),
        ..Default::default()
    };
    ex.local
        .docker
        .create_service(spec, None)
        .await
        .map_err(|e| format!("cannot create: {e}"))?
        .id
        .ok_or_else(|| "created without an id".to_string())
}

/// Waits until the service's task runs (its health check passed).
async fn wait_ready(ex: &SwarmExecutor, id: &str, svc: &ServicePlan) -> Result<(), String> {
    let timeout = CancellationToken::new();
    let t2 = timeout.clone();
    let limit = svc.ready_timeout;
    let timer = tokio::spawn(async move {
        tokio::time::sleep(limit).await;
        t2.cancel();
    });
    let got = super::task::started(&ex.local.docker, id, &timeout).await;
    timer.abort();
    match got {
        Some(Ok(_)) => Ok(()),
        Some(Err(end)) => Err(match end.exit_code {
            Some(code) => format!("exited (code {code}) before it was ready"),
            None => format!("could not start: {}", end.why()),
        }),
        None => Err(format!(
            "did not become ready within {}{}",
            humantime::format_duration(limit),
            svc.ready
                .as_ref()
                .map(|c| format!(" (`{c}` never succeeded)"))
                .unwrap_or_default()
        )),
    }
}
