//! One container stage on Swarm: its workspace and private folder packed
//! for it, a helper task filling two volumes on a node that meets its
//! placement, the stage's own task on that node (unprivileged, limited,
//! its secrets in a Swarm secret), a helper task sending the volumes back,
//! the changes applied to the run's workspace, and every service, secret
//! and network of the stage removed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use bollard::models::{NetworkAttachmentConfig, SecretSpec};
use tokio_util::sync::CancellationToken;

use sentinel_engine::exec::{LocalWorkspace, Outcome, StageJob, StageReport, Var, Work, env_file};
use sentinel_pipeline::Network;

use super::task::{self, Ended, Job};
use super::{SwarmExecutor, spec, transfer};
use crate::container::{OOM_KILLS, SECRETS_MOUNT, command};
use crate::{labels, object_name};

/// The names and files of one stage's attempt.
struct Slot {
    /// A short random id naming its objects.
    id: String,
    /// Its archives and the token of their URL.
    files: transfer::Slot,
    dir: PathBuf,
    labels: HashMap<String, String>,
}

impl Slot {
    fn name(&self, job: &StageJob, suffix: &str) -> String {
        let base = object_name(&job.run_id, &self.id);
        if suffix.is_empty() {
            base
        } else {
            format!("{base}-{suffix}")
        }
    }
}

/// Runs file work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

fn fail(message: impl Into<String>) -> StageReport {
    StageReport::of(Outcome::StartFailed(message.into()))
}

/// Creates a Swarm secret holding `data`; returns its id.
pub(crate) async fn create_secret(
    ex: &SwarmExecutor,
    name: &str,
    data: &[u8],
    labels: &HashMap<String, String>,
) -> Result<String, String> {
    ex.local
        .docker
        .create_secret(SecretSpec {
            name: Some(name.into()),
            labels: Some(labels.clone()),
            data: Some(base64::engine::general_purpose::STANDARD.encode(data)),
            ..Default::default()
        })
        .await
        .map(|r| r.id)
        .map_err(|e| format!("cannot create the secret {name}: {e}"))
}

/// Runs one container stage on the swarm.
pub(crate) async fn run(ex: &SwarmExecutor, job: StageJob, stop: CancellationToken) -> StageReport {
    let Work::Container(action) = job.work.clone() else {
        return fail("not a container stage");
    };
    let Some(ws) = job.workspace.local() else {
        return fail("the Swarm executor keeps a run's workspace on this machine");
    };
    if action.docker {
        return fail("a `docker: true` stage needs the local Docker executor");
    }
    if action.commit.is_some() {
        return fail("a stage committed as an image needs the local Docker executor");
    }
    if let Some(v) = job.inputs.volumes.iter().find(|v| v.volume.path.is_some()) {
        return fail(format!(
            "the files of `{}` cannot be shown at a path on a Swarm node (only in the workspace)",
            v.volume.stage
        ));
    }
    let with_secrets = job.env.iter().any(|v| v.secret);
    if with_secrets && action.image_command {
        return fail(
            "a stage that runs its image's own command gets no secrets: Sentinel gives them through its shell",
        );
    }
    let (mut entrypoint, cmd) = command(&action, with_secrets);
    if let Some(outer) = entrypoint.get_mut(2) {
        *outer = spec::nnp_check() + outer;
    }
    if let Err(e) = ws.write_outputs(&job.inputs.outputs) {
        return fail(format!("cannot write out/: {e}"));
    }
    let private = match ws.container_private(&job.stage, &job.user) {
        Ok(p) => p,
        Err(e) => return fail(format!("cannot prepare the stage's folder: {e}")),
    };
    let mut raw = [0u8; 4];
    getrandom::fill(&mut raw).expect("the system's random source");
    let id = hex::encode(raw);
    let dir = ws.root.join("swarm").join(&id);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        return fail(format!("cannot prepare the stage's archive: {e}"));
    }
    let slot = Slot {
        files: ex.transfer.open(&dir).await,
        labels: labels(&job.run_id, &job.owner, "stage", Some(job.stage.as_str())),
        id,
        dir,
    };
    let mut made = Made::default();
    let report = run_slot(
        ex, &job, ws, &slot, &private, entrypoint, cmd, &stop, &mut made,
    )
    .await;
    ex.transfer.close(&slot.files.token).await;
    made.remove_later(ex).await;
    let _ = std::fs::remove_dir_all(&slot.dir);
    report
}

/// What a stage made on the swarm, removed when it ends.
#[derive(Default)]
struct Made {
    services: Vec<String>,
    secrets: Vec<String>,
}

impl Made {
    async fn remove_later(self, ex: &SwarmExecutor) {
        let docker = ex.local.docker.clone();
        ex.later(async move {
            for s in &self.services {
                task::remove(&docker, s).await;
            }
            for s in &self.secrets {
                super::clean::remove_secret(&docker, s).await;
            }
            // Its network goes at the run's end, after its containers.
        })
        .await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_slot(
    ex: &SwarmExecutor,
    job: &StageJob,
    ws: &LocalWorkspace,
    slot: &Slot,
    private: &Path,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    stop: &CancellationToken,
    made: &mut Made,
) -> StageReport {
    let (uid, gid) = sentinel_engine::workspace::parse_user(&job.user);
    let (w, p, to) = (
        ws.dir.clone(),
        private.to_path_buf(),
        slot.files.fill.clone(),
    );
    let sent = match blocking(move || transfer::pack(&w, &p, uid, gid, &to)).await {
        Ok(m) => m,
        Err(e) => return fail(format!("cannot pack the workspace: {e}")),
    };
    let where_ = ex.transfer.shell_vars(&slot.files.token);
    let t_name = slot.name(job, "t");
    let t_id = match create_secret(ex, &t_name, where_.as_bytes(), &slot.labels).await {
        Ok(id) => id,
        Err(e) => return fail(e),
    };
    made.secrets.push(t_id.clone());
    let secret_vars: Vec<Var> = job.env.iter().filter(|v| v.secret).cloned().collect();
    let env_secret = if secret_vars.is_empty() {
        None
    } else {
        let name = slot.name(job, "env");
        match create_secret(ex, &name, env_file(&secret_vars).as_bytes(), &slot.labels).await {
            Ok(id) => {
                made.secrets.push(id.clone());
                Some(spec::secret_ref(
                    &id,
                    &name,
                    SECRETS_MOUNT,
                    (uid, gid),
                    0o400,
                ))
            }
            Err(e) => return fail(e),
        }
    };
    let networks = match job.limits.network {
        Network::Bridge => Vec::new(),
        Network::Run => match super::services::ensure_network(ex, &job.run_id, &job.owner).await {
            Ok(n) => vec![NetworkAttachmentConfig {
                target: Some(n),
                ..Default::default()
            }],
            Err(e) => return fail(e),
        },
        // No network: a network of its own with no way out and no one else.
        Network::None => {
            let name = slot.name(job, "none");
            match super::services::create_overlay(ex, &name, true, &slot.labels).await {
                Ok(()) => {
                    vec![NetworkAttachmentConfig {
                        target: Some(name),
                        ..Default::default()
                    }]
                }
                Err(e) => return fail(e),
            }
        }
    };
    let (w_vol, p_vol) = (slot.name(job, "w"), slot.name(job, "p"));
    let helper = |script: &str, suffix: &str, node: Option<&str>| {
        spec::Helper {
            name: slot.name(job, suffix),
            labels: &slot.labels,
            image: &ex.helper,
            script,
            volumes: (&w_vol, &p_vol),
            transfer: (&t_id, &t_name),
            constraints: match node {
                Some(n) => vec![format!("node.id == {n}")],
                None => job.limits.placement.clone(),
            },
        }
        .job()
    };
    // 1. The workspace to a node that meets the stage's placement.
    let node = match helper_run(
        ex,
        &job.run_id,
        helper(spec::FILL, "fill", None),
        made,
        stop,
    )
    .await
    {
        HelperEnd::Done(node) => node,
        HelperEnd::Stopped => return StageReport::of(Outcome::Stopped),
        HelperEnd::Failed(why) if why.contains("no suitable node") => {
            return fail(format!(
                "no node of the swarm meets the placement `{}` ({why})",
                job.limits.placement.join(", ")
            ));
        }
        HelperEnd::Failed(why) => {
            return fail(format!("cannot bring the workspace to a Swarm node: {why}"));
        }
    };
    // 2. The stage on that node.
    let stage = spec::stage_job(
        job,
        slot.name(job, ""),
        &slot.labels,
        (&w_vol, &p_vol),
        (entrypoint, cmd),
        env_secret,
        networks,
        &node,
    );
    let since = job.capture.as_ref().and_then(|_| ws.mark().ok());
    let ended = match stage_run(ex, job, stage, made, stop).await {
        Some(e) => e,
        None => return StageReport::of(Outcome::Stopped),
    };
    // 3. The volumes back, whatever the script did.
    let drained = if ended.ran() {
        match helper_run(
            ex,
            &job.run_id,
            helper(spec::DRAIN, "drain", Some(&node)),
            made,
            stop,
        )
        .await
        {
            HelperEnd::Done(_) => {
                let (from, staging) = (slot.files.drained.clone(), slot.dir.join("back"));
                let (w, p) = (ws.dir.clone(), private.to_path_buf());
                blocking(move || transfer::apply(&from, &staging, &w, &p, &sent))
                    .await
                    .map_err(|e| e.to_string())
            }
            HelperEnd::Stopped => return StageReport::of(Outcome::Stopped),
            HelperEnd::Failed(why) => Err(why),
        }
    } else {
        Ok(())
    };
    let node_name = super::clean::node_name(&ex.local.docker, &node).await;
    let outcome = outcome(job, &ended, private, &node_name);
    if let Err(why) = drained {
        return StageReport::of(Outcome::Error(format!(
            "the stage ran on {node_name}, but its workspace could not be brought back: {why}"
        )));
    }
    let (outputs, artifacts) = ws.take_private(private, false);
    let (files, warnings) = crate::container::capture(ws, job, since).await;
    StageReport {
        outcome,
        image_id: None,
        outputs,
        artifacts,
        files,
        warnings,
        steps: Vec::new(),
    }
}

/// How a stage's task ended, in the executor's words.
fn outcome(job: &StageJob, ended: &Ended, private: &Path, node: &str) -> Outcome {
    if !ended.ran() {
        let why = ended.why();
        let image = spec::action_image(job);
        if why.contains("No such image") || why.contains("pull") {
            return Outcome::StartFailed(format!(
                "image `{image}` is not present on {node} and could not be pulled ({why}); build or load it on every node first"
            ));
        }
        return Outcome::StartFailed(format!("Swarm could not run the stage on {node}: {why}"));
    }
    let code = ended.exit_code.unwrap_or(-1);
    if private.join(spec::NO_NNP).exists() {
        return Outcome::StartFailed(format!(
            "{node} runs containers without no-new-privileges: set \"no-new-privileges\": true in its daemon.json (Swarm services cannot ask for it)"
        ));
    }
    let kernel = std::fs::read_to_string(private.join(OOM_KILLS))
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok());
    match code {
        0 => Outcome::Exited { code },
        _ if kernel.is_some_and(|n| n > 0) => Outcome::OomKilled,
        137 => Outcome::Signalled { code, signal: 9 },
        _ => Outcome::Exited { code },
    }
}

enum HelperEnd {
    Done(String),
    Stopped,
    Failed(String),
}

/// Runs a helper task to its end.
async fn helper_run(
    ex: &SwarmExecutor,
    run: &sentinel_api::RunId,
    job: Job,
    made: &mut Made,
    stop: &CancellationToken,
) -> HelperEnd {
    let id = match task::create(&ex.local.docker, job).await {
        Ok(id) => id,
        Err(e) => return HelperEnd::Failed(e),
    };
    made.services.push(id.clone());
    let Some(ended) = task::finished(&ex.local.docker, &id, 1, stop).await else {
        task::remove(&ex.local.docker, &id).await;
        return HelperEnd::Stopped;
    };
    let Some(end) = ended.into_iter().next() else {
        return HelperEnd::Failed("its task vanished".into());
    };
    // Its volumes are on that node now, whatever happened.
    if let Some(node) = end.node.clone().filter(|n| !n.is_empty()) {
        ex.nodes_used
            .lock()
            .await
            .entry(run.clone())
            .or_default()
            .insert(node);
    }
    if end.state == "complete" {
        return HelperEnd::Done(end.node.unwrap_or_default());
    }
    let said = task::output(&ex.local.docker, &id).await;
    HelperEnd::Failed(if said.is_empty() {
        end.why()
    } else {
        format!("{} ({said})", end.why())
    })
}

/// Runs the stage's task, its output followed into the log; `None` when
/// it was stopped (the service is removed at once).
async fn stage_run(
    ex: &SwarmExecutor,
    job: &StageJob,
    spec: Job,
    made: &mut Made,
    stop: &CancellationToken,
) -> Option<Ended> {
    let id = match task::create(&ex.local.docker, spec).await {
        Ok(id) => id,
        Err(e) => {
            return Some(Ended {
                state: "rejected".into(),
                err: Some(e),
                ..Default::default()
            });
        }
    };
    made.services.push(id.clone());
    let follow = task::follow(&ex.local.docker, &id, job.log.clone());
    // Stopped: what it printed is read before its service (and log) goes.
    match task::started(&ex.local.docker, &id, stop).await {
        None => {
            follow.finish(&ex.local.docker, &id, &job.log).await;
            task::remove(&ex.local.docker, &id).await;
            return None;
        }
        Some(Ok(_)) => {
            if job.limits.idle_timeout.is_some() {
                crate::process::say_started(&job.log).await;
            }
        }
        Some(Err(_)) => {}
    }
    let Some(ended) = task::finished(&ex.local.docker, &id, 1, stop).await else {
        follow.finish(&ex.local.docker, &id, &job.log).await;
        task::remove(&ex.local.docker, &id).await;
        return None;
    };
    follow.finish(&ex.local.docker, &id, &job.log).await;
    ended.into_iter().next()
}
