//! One container stage: check the image, lay out its inputs in the local
//! workspace (`out/` files, volumes at their paths), create the container
//! (unprivileged, limited, labelled; secret variables in a file its shell
//! reads, never in the container's configuration), attach before starting
//! so no output is lost, stream stdout/stderr to the engine, wait or stop,
//! read the exit code and whether Docker saw an OOM kill, capture the files it changed, and
//! always remove the container.

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{CreateContainerOptions, CreateImageOptions};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use sentinel_engine::exec::{
    ExecError, LocalWorkspace, Outcome, PRIVATE_MOUNT, StageJob, StageReport, Var, WORKSPACE_MOUNT,
    Work, env_file,
};
use sentinel_pipeline::{ContainerAction, Network};

use crate::{DockerExecutor, is_not_found, labels, object_name};

pub(crate) use crate::process::{Attached, Begin, attach, attach_options, run_created};

/// A failure whose message a stage's reason shows (Docker refused or failed).
pub(crate) fn fail(message: String) -> ExecError {
    ExecError::said(sentinel_engine::ErrorKind::Permanent, message)
}

/// Where a container finds the file of its secret variables.
pub(crate) const SECRETS_MOUNT: &str = "/run/sentinel/env";

/// Writes the secret variables of a container to a file of their own
/// (readable in the container; its folder closed to other users of the
/// host), to be bind-mounted read-only at [`SECRETS_MOUNT`]. `mode` is the
/// file's (`0o444`; a warm container's, filled in place later, `0o644`).
pub(crate) fn secrets_file(
    root: &std::path::Path,
    name: &str,
    vars: &[Var],
    mode: u32,
) -> std::io::Result<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let dir = root.join("secrets");
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    let path = dir.join(format!("{name}.env"));
    write_new(&path, env_file(vars).as_bytes(), mode)?;
    Ok(path)
}

/// Writes `body` to `path` as a new file with `mode` (replacing what was
/// there: a file left by an earlier attempt is never written through).
pub(crate) fn write_new(path: &std::path::Path, body: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    std::io::Write::write_all(&mut f, body)
}

/// A finished container stage's report: its named outputs and artifacts
/// from its private folder, the files it changed (when kept).
pub(crate) async fn report(
    ws: &LocalWorkspace,
    job: &StageJob,
    private: &std::path::Path,
    since: Option<std::time::SystemTime>,
    outcome: Outcome,
    image_id: String,
) -> StageReport {
    let (outputs, artifacts) = ws.take_private(private, false);
    let (files, warnings) = capture(ws, job, since).await;
    StageReport {
        outcome,
        image_id: Some(image_id),
        outputs,
        artifacts,
        files,
        warnings,
        steps: Vec::new(),
    }
}

/// Where, in a container's private folder, its shell leaves the number of
/// processes the kernel's OOM killer ended in the container.
pub(crate) const OOM_KILLS: &str = "oom-kills";

/// The entrypoint and command of a script. A shell of its own runs the
/// script (after reading the secret variables' file when there is one);
/// when the script fails, it copies the kernel's count of OOM kills in the
/// container's memory cgroup (v2 `memory.events`, v1 `memory.oom_control`)
/// to [`OOM_KILLS`]. That count is the kernel's word, read while the
/// container lives: Docker's own flag can miss an OOM kill on a busy host.
pub(crate) fn command(action: &ContainerAction, with_secrets: bool) -> (Vec<String>, Vec<String>) {
    // The image's own entrypoint and command: nothing set here.
    if action.image_command {
        return (Vec::new(), Vec::new());
    }
    let flags = action.shell.flags().join(" ");
    let outer = format!(
        "{}{OOM_COUNT}\nsh {flags} \"$1\"; rc=$?; \
         [ \"$rc\" -eq 0 ] || ooms > {PRIVATE_MOUNT}/{OOM_KILLS}; exit \"$rc\"",
        secrets_loader(with_secrets)
    );
    (
        vec!["sh".into(), "-c".into(), outer, "sentinel".into()],
        vec![action.script.clone()],
    )
}

/// A shell function `ooms` printing the kernel's count of OOM kills in the
/// container's memory cgroup (v2 `memory.events`, v1 `memory.oom_control`),
/// or `-` when it cannot be read.
pub(crate) const OOM_COUNT: &str = r#"ooms() {
  for f in /sys/fs/cgroup/memory.events /sys/fs/cgroup/memory/memory.oom_control; do
    [ -r "$f" ] || continue
    while read -r k v; do [ "$k" = oom_kill ] && { echo "$v"; return; }; done < "$f"
  done 2>/dev/null
  echo -
}"#;

/// What a container's shell runs first: reading the secret variables'
/// file, when the stage has secrets.
pub(crate) fn secrets_loader(with_secrets: bool) -> String {
    if with_secrets {
        format!(". {SECRETS_MOUNT} || exit 1; ")
    } else {
        String::new()
    }
}

/// Resolves an image to its id; tries a pull when it is not present, with
/// the run's credentials for the image's registry when it has them.
pub(crate) async fn image_id(
    ex: &DockerExecutor,
    image: &str,
    run: &sentinel_api::RunId,
) -> Result<String, ExecError> {
    match ex.docker.inspect_image(image).await {
        Ok(i) => return Ok(i.id.unwrap_or_default()),
        Err(e) if is_not_found(&e) => {}
        Err(e) => return Err(fail(format!("cannot inspect image `{image}`: {e}"))),
    }
    let opts = CreateImageOptions {
        from_image: Some(image.to_string()),
        ..Default::default()
    };
    let auth = ex.registry_auth(run).await;
    let creds =
        sentinel_engine::exec::RegistryAuth::for_image(&auth, image).map(crate::build::credentials);
    let creds_used = creds.is_some();
    let pull = async {
        let mut stream = ex.docker.create_image(Some(opts), None, creds);
        while let Some(item) = stream.next().await {
            item.map_err(|e| match e {
                bollard::errors::Error::DockerStreamError { error } => error,
                other => other.to_string(),
            })?;
        }
        Ok::<(), String>(())
    };
    let pulled = tokio::time::timeout(Duration::from_secs(120), pull)
        .await
        .unwrap_or_else(|_| Err("the pull timed out after 120 s".into()));
    match pulled {
        Ok(()) => {
            let id = ex
                .docker
                .inspect_image(image)
                .await
                .map(|i| i.id.unwrap_or_default())
                .map_err(|e| {
                    fail(format!(
                        "image `{image}` was pulled but cannot be inspected: {e}"
                    ))
                })?;
            // Pulled with the run's credentials: marked before the stage runs.
            if creds_used {
                crate::endpoint::mark_private(&ex.docker, &id, run).await;
            }
            Ok(id)
        }
        Err(e) if sentinel_engine::exec::image_host(image).is_some() => Err(fail(format!(
            "image `{image}` is not present on the Docker host: {}",
            crate::build::registry_error("pull", image, &e)
        ))),
        Err(e) => Err(fail(format!(
            "image `{image}` is not present on the Docker host and could not be pulled ({e}); build or load it first"
        ))),
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

/// A stage's variables for its container's configuration: the plain ones
/// (secret ones reach it through its shell), and `HOME=/tmp` unless set.
pub(crate) fn plain_env(job: &StageJob) -> Vec<String> {
    let mut env: Vec<String> = job
        .env
        .iter()
        .filter(|v| !v.secret)
        .map(|v| format!("{}={}", v.name, v.value))
        .collect();
    if !job.env.iter().any(|v| v.name == "HOME") {
        env.push("HOME=/tmp".into());
    }
    env
}

/// A stage's container, created and not yet started, with what it uses on
/// this machine.
pub(crate) struct Created {
    pub id: String,
    pub name: String,
    pub image_id: String,
    /// The stage's private folder (seen at [`PRIVATE_MOUNT`]).
    pub private: std::path::PathBuf,
    /// The file of its secret variables, removed when it ends.
    pub secrets: Option<std::path::PathBuf>,
}

/// How a stage's container is made: its image, process and whether its
/// standard input stays open (a job's agent reads its steps there).
pub(crate) struct Spec {
    pub image: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub stdin: bool,
    /// More folders of this machine to show (`host:container:ro`).
    pub binds: Vec<String>,
}

/// Creates a stage's container: checks the image, lays out its inputs,
/// and creates it unprivileged, limited and labelled. A failure is the
/// stage's report.
pub(crate) async fn create(
    ex: &DockerExecutor,
    job: &StageJob,
    ws: &LocalWorkspace,
    spec: Spec,
) -> Result<Created, StageReport> {
    let image_id = match image_id(ex, &spec.image, &job.run_id).await {
        Ok(id) => id,
        Err(e) => return Err(StageReport::of(Outcome::StartFailed(e.to_string()))),
    };
    let failed = |e: String| StageReport {
        outcome: Outcome::StartFailed(e),
        image_id: Some(image_id.clone()),
        ..StageReport::default()
    };
    let network = if job.limits.network == Network::Run {
        match crate::services::ensure_network(ex, &job.run_id, &job.owner).await {
            Ok(n) => Some(n),
            Err(e) => return Err(failed(e.to_string())),
        }
    } else {
        None
    };
    let (private, mut binds, secrets) = match prepare(ws, job).await {
        Ok(p) => p,
        Err(e) => return Err(failed(e.to_string())),
    };
    binds.extend(spec.binds);
    let env = plain_env(job);
    let name = object_name(&job.run_id, job.stage.as_str());
    // A `network: none` container joins a namespace made ready for it
    // (its own all the same: the holder is lent to it alone).
    let holder = match job.limits.network {
        Network::None => ex.netns.take(&image_id).await,
        _ => None,
    };
    let mode = match &holder {
        Some(h) => format!("container:{h}"),
        None => network_mode(network.as_deref(), job.limits.network),
    };
    let mut body = ContainerCreateBody {
        image: Some(spec.image.clone()),
        // Empty: the image's own (an empty list would clear it).
        entrypoint: (!spec.entrypoint.is_empty()).then_some(spec.entrypoint),
        cmd: (!spec.cmd.is_empty()).then_some(spec.cmd),
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
        attach_stdin: Some(spec.stdin),
        open_stdin: Some(spec.stdin),
        stdin_once: Some(false),
        tty: Some(false),
        host_config: Some(HostConfig {
            binds: Some(binds),
            memory: Some(job.limits.memory as i64),
            memory_swap: Some(job.limits.memory as i64),
            nano_cpus: job.limits.cpus.map(|c| (c * 1e9) as i64),
            pids_limit: Some(i64::from(job.limits.pids)),
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(vec!["no-new-privileges".into()]),
            privileged: Some(false),
            network_mode: Some(mode),
            // `exec`: Docker's tmpfs is `noexec` unless told, and build
            // tools run what they put in /tmp (`go test`, a step's helper).
            tmpfs: Some(HashMap::from([(
                "/tmp".to_string(),
                "rw,exec,nosuid,nodev,size=256m".to_string(),
            )])),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut created = create_named(ex, &name, body.clone()).await;
    if let Some(h) = holder {
        match &created {
            Ok(c) => ex.netns.lend(&c.id, h).await,
            Err(e) => {
                // A holder that cannot be joined (removed by hand?): the
                // container makes its own namespace.
                tracing::debug!("network holder {h} not joined: {e}");
                let _ = crate::remove_container(&ex.docker, &h).await;
                if let Some(hc) = body.host_config.as_mut() {
                    hc.network_mode = Some(network_mode(None, job.limits.network));
                }
                created = create_named(ex, &name, body).await;
            }
        }
    }
    match created {
        Ok(c) => Ok(Created {
            id: c.id,
            name,
            image_id,
            private,
            secrets,
        }),
        Err(e) => {
            remove_secrets(secrets);
            Err(failed(format!("cannot create the container: {e}")))
        }
    }
}

/// Creates a container named `name`, or `name-2`, `name-3`… while the name
/// is taken: an earlier attempt's container of the stage (`retry:`) may
/// still be being removed, off the critical path.
async fn create_named(
    ex: &DockerExecutor,
    name: &str,
    body: ContainerCreateBody,
) -> Result<bollard::models::ContainerCreateResponse, bollard::errors::Error> {
    let mut n = 1;
    loop {
        let options = CreateContainerOptions {
            name: Some(match n {
                1 => name.to_string(),
                n => format!("{name}-{n}"),
            }),
            ..Default::default()
        };
        match ex
            .docker
            .create_container(Some(options), body.clone())
            .await
        {
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            }) if n < 20 => n += 1,
            other => return other,
        }
    }
}

/// Removes a stage's container off the stage's critical path; `end_run`
/// waits for the removal.
pub(crate) async fn remove_later(ex: &DockerExecutor, id: String, name: String) {
    let ex2 = ex.clone();
    let removal = tokio::spawn(async move {
        if let Err(e) = ex2.remove(&id).await {
            tracing::warn!("cannot remove container {name}: {e}");
        }
    });
    ex.removals.lock().await.push(removal);
}

/// Runs one container stage to its end.
pub(crate) async fn run(
    ex: &DockerExecutor,
    job: StageJob,
    stop: CancellationToken,
) -> StageReport {
    let Work::Container(action) = job.work.clone() else {
        return StageReport::of(Outcome::StartFailed("not a container stage".into()));
    };
    if crate::shared::applies(&job) {
        return crate::shared::run(ex, job, stop).await;
    }
    if let Some(w) = crate::warm::take(ex, &job).await {
        return crate::warm::run(ex, job, w, stop).await;
    }
    let workspace = job.workspace.clone();
    let Some(ws) = workspace.local() else {
        return StageReport::of(Outcome::StartFailed(
            "the Docker executor runs stages on a workspace of this machine".into(),
        ));
    };
    // A stage committed as an image gets every variable through the file:
    // `docker commit` merges the container's configuration into the
    // image's, so it must hold none of the run's values.
    let mut job = job;
    if action.commit.is_some() {
        job.env.iter_mut().for_each(|v| v.secret = true);
    }
    let with_secrets = job.env.iter().any(|v| v.secret);
    if with_secrets && action.image_command {
        return StageReport::of(Outcome::StartFailed(
            "a stage that runs its image's own command gets no secrets: Sentinel gives them through its shell".into(),
        ));
    }
    let (entrypoint, cmd) = command(&action, with_secrets);
    let mut spec = Spec {
        image: action.image.clone(),
        entrypoint,
        cmd,
        stdin: false,
        binds: Vec::new(),
    };
    // `docker: true`: the stage's own endpoint, mounted with DOCKER_HOST.
    let endpoint = if action.docker {
        match crate::endpoint::for_stage(ex, &mut job, ws, &mut spec.binds).await {
            Ok(ep) => Some(ep),
            Err(e) => return StageReport::of(Outcome::StartFailed(e)),
        }
    } else {
        None
    };
    let Created {
        id,
        name,
        image_id,
        private,
        secrets,
    } = match create(ex, &job, ws, spec).await {
        Ok(c) => c,
        Err(report) => return report,
    };
    let since = job.capture.as_ref().and_then(|_| ws.mark().ok());
    let marker = job.limits.idle_timeout.is_some();
    let outcome = run_created(
        ex,
        &id,
        &private,
        job.log.clone(),
        marker,
        stop,
        Begin::Start,
    )
    .await;
    // `commit:` once the script succeeded: the container becomes an image
    // (with its image's configuration, none of the run's values).
    let mut outcome = outcome;
    let mut committed = None;
    if let (Some(to), Outcome::Exited { code: 0 }) = (&action.commit, &outcome) {
        match crate::commit::commit_stage(ex, &job, &id, &action.image, to).await {
            Ok(outputs) => committed = Some(outputs),
            Err(o) => outcome = o,
        }
    }
    remove_secrets(secrets);
    remove_later(ex, id, name).await;
    if let Some(ep) = endpoint {
        ep.stop().await;
    }
    let mut r = report(ws, &job, &private, since, outcome, image_id).await;
    if let Some(c) = committed {
        let mut text = r.outputs.unwrap_or_default();
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        r.outputs = Some(text + &c);
    }
    r
}

/// The files a stage created or changed since `since`, kept when its job
/// asks for them; what went wrong is a warning for its document.
pub(crate) async fn capture(
    ws: &LocalWorkspace,
    job: &StageJob,
    since: Option<std::time::SystemTime>,
) -> (Option<sentinel_engine::exec::FileSet>, Vec<String>) {
    let (Some(to), Some(t)) = (&job.capture, since) else {
        return (None, Vec::new());
    };
    let (dir, to) = (ws.dir.clone(), to.clone());
    let got =
        tokio::task::spawn_blocking(move || sentinel_engine::workspace::capture_dir(&dir, t, &to))
            .await;
    match got {
        Ok(Ok(Some(set))) => (Some(set), Vec::new()),
        Ok(Ok(None)) => (
            None,
            vec![format!(
                "its files are not kept for a re-run: they are more than {} bytes",
                sentinel_engine::workspace::CAPTURE_LIMIT
            )],
        ),
        Ok(Err(e)) => (
            None,
            vec![format!("its files could not be kept for a re-run: {e}")],
        ),
        Err(e) => (
            None,
            vec![format!("its files could not be kept for a re-run: {e}")],
        ),
    }
}

/// Lays out a stage's inputs on this machine: `out/` files, its private
/// folder, its secret variables' file and the binds that show them.
async fn prepare(
    ws: &LocalWorkspace,
    job: &StageJob,
) -> Result<(std::path::PathBuf, Vec<String>, Option<std::path::PathBuf>), ExecError> {
    ws.write_outputs(&job.inputs.outputs)
        .map_err(|e| fail(format!("cannot write out/: {e}")))?;
    let private = ws
        .container_private(&job.stage, &job.user)
        .map_err(|e| fail(format!("cannot prepare the stage's folder: {e}")))?;
    let mut binds = vec![
        format!("{}:{WORKSPACE_MOUNT}:rw", ws.dir.display()),
        format!("{}:{PRIVATE_MOUNT}:rw", private.display()),
    ];
    for v in &job.inputs.volumes {
        let Some(path) = &v.volume.path else { continue };
        let Some(files) = &v.files else {
            return Err(fail(format!(
                "the files of `{}` are not kept, so they cannot be shown at {path}",
                v.volume.stage
            )));
        };
        binds.push(format!("{}:{path}:ro", files.dir.display()));
    }
    let secret: Vec<Var> = job.env.iter().filter(|v| v.secret).cloned().collect();
    let secrets = if secret.is_empty() {
        None
    } else {
        let file = secrets_file(&ws.root, job.stage.as_str(), &secret, 0o444)
            .map_err(|e| fail(format!("cannot write the stage's secret variables: {e}")))?;
        binds.push(format!("{}:{SECRETS_MOUNT}:ro", file.display()));
        Some(file)
    };
    Ok((private, binds, secrets))
}

pub(crate) fn remove_secrets(file: Option<std::path::PathBuf>) {
    if let Some(f) = file {
        let _ = std::fs::remove_file(f);
    }
}
