//! Container stages made ready ahead: while a stage's dependencies run, its
//! container is created and started with a shell that waits on its
//! standard input, so that when the stage's turn comes only its variables
//! are written (to the file its shell reads — none is ever in the
//! container's configuration) and a line tells it to go. The script runs
//! exactly as in a container started then: same command, same limits,
//! same user, its standard input empty. A stage whose container was not
//! made ready, or no longer fits what the stage needs, runs the usual way;
//! one that never runs is removed with the run.

use std::path::PathBuf;

use sentinel_api::{RunId, StageName};
use sentinel_engine::exec::{Inputs, Outcome, StageJob, StageReport, WarmStage, Work, env_file};
use sentinel_pipeline::{ContainerAction, Limits};
use tokio_util::sync::CancellationToken;

use crate::DockerExecutor;
use crate::container::{
    Attached, Begin, SECRETS_MOUNT, Spec, attach, command, create, remove_later, report,
    run_created, secrets_file,
};

/// A container started ahead and waiting for its stage.
#[derive(Debug)]
pub(crate) struct Warm {
    id: String,
    name: String,
    image_id: String,
    private: PathBuf,
    /// The file of the stage's variables (empty until its turn).
    env_file: PathBuf,
    action: ContainerAction,
    limits: Limits,
    user: String,
    /// Its streams, attached while it waits.
    attached: Attached,
}

/// Where the warm containers of the runs are, by run and stage.
pub(crate) type WarmMap = std::sync::Arc<
    tokio::sync::Mutex<
        std::collections::HashMap<(RunId, StageName), tokio::task::JoinHandle<Option<Warm>>>,
    >,
>;

/// Starts making a stage's container ready, in the background.
pub(crate) async fn prewarm(ex: &DockerExecutor, w: WarmStage) {
    if !matches!(w.work, Work::Container(_)) || w.workspace.local().is_none() {
        return;
    }
    if w.limits.reuse {
        // The run's shared container, made now if it is not there yet.
        let job = pseudo_job(&w);
        let ex = ex.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::shared::get(&ex, &job).await {
                tracing::debug!("shared container not made ahead: {e}");
            }
        });
        return;
    }
    let key = (w.run_id.clone(), w.stage.clone());
    let mut map = ex.warm.lock().await;
    if map.contains_key(&key) {
        return;
    }
    let ex2 = ex.clone();
    map.insert(key, tokio::spawn(async move { make(&ex2, w).await }));
}

/// The command of a warm container: the stage's own, after a line on
/// standard input (which the script then does not see).
fn warm_command(action: &ContainerAction) -> (Vec<String>, Vec<String>) {
    let (mut entrypoint, cmd) = command(action, true);
    entrypoint[2] = format!(
        "IFS= read -r _ || exit 1; exec </dev/null; {}",
        entrypoint[2]
    );
    (entrypoint, cmd)
}

async fn make(ex: &DockerExecutor, w: WarmStage) -> Option<Warm> {
    let Work::Container(action) = &w.work else {
        return None;
    };
    let ws = w.workspace.local()?;
    let env_file = secrets_file(&ws.root, w.stage.as_str(), &[], 0o644).ok()?;
    let job = pseudo_job(&w);
    let (entrypoint, cmd) = warm_command(action);
    let spec = Spec {
        image: action.image.clone(),
        entrypoint,
        cmd,
        stdin: true,
        binds: vec![format!("{}:{SECRETS_MOUNT}:ro", env_file.display())],
    };
    let created = match create(ex, &job, ws, spec).await {
        Ok(c) => c,
        Err(report) => {
            tracing::debug!(stage = %w.stage, "not made ready: {:?}", report.outcome);
            let _ = std::fs::remove_file(&env_file);
            return None;
        }
    };
    let attached = match ex.docker.start_container(&created.id, None).await {
        Ok(()) => attach(ex, &created.id, true).await,
        Err(e) => Err(e.to_string()),
    };
    let attached = match attached {
        Ok(a) => a,
        Err(e) => {
            tracing::debug!(stage = %w.stage, "not made ready: {e}");
            remove_later(ex, created.id, created.name).await;
            let _ = std::fs::remove_file(&env_file);
            return None;
        }
    };
    Some(Warm {
        id: created.id,
        name: created.name,
        image_id: created.image_id,
        private: created.private,
        env_file,
        action: action.clone(),
        limits: w.limits,
        user: w.user,
        attached,
    })
}

/// The stage as a job with no variable at all (they come through the file
/// at the stage's turn) and no inputs.
fn pseudo_job(w: &WarmStage) -> StageJob {
    let (log, _) = tokio::sync::mpsc::channel(1);
    StageJob {
        run_id: w.run_id.clone(),
        stage: w.stage.clone(),
        owner: w.owner.clone(),
        work: w.work.clone(),
        env: Vec::new(),
        limits: w.limits.clone(),
        user: w.user.clone(),
        workspace: w.workspace.clone(),
        inputs: Inputs::default(),
        capture: None,
        log,
    }
}

/// The stage's warm container, when one was made, fits the stage and still
/// waits; a misfit (or one a restarted daemon stopped) is removed before
/// the stage makes its own (same name).
pub(crate) async fn take(ex: &DockerExecutor, job: &StageJob) -> Option<Warm> {
    let handle = ex
        .warm
        .lock()
        .await
        .remove(&(job.run_id.clone(), job.stage.clone()))?;
    let warm = handle.await.ok()??;
    let fits = matches!(&job.work, Work::Container(a) if *a == warm.action)
        && job.limits == warm.limits
        && job.user == warm.user
        && job.inputs.volumes.iter().all(|v| v.volume.path.is_none());
    // Still waiting for its go: a daemon restarted since stopped it.
    let alive = fits
        && ex
            .docker
            .inspect_container(&warm.id, None)
            .await
            .ok()
            .and_then(|i| i.state?.running)
            .unwrap_or(false);
    if alive {
        return Some(warm);
    }
    discard(ex, warm).await;
    None
}

async fn discard(ex: &DockerExecutor, warm: Warm) {
    if let Err(e) = ex.remove(&warm.id).await {
        tracing::warn!("cannot remove container {}: {e}", warm.name);
    }
    let _ = std::fs::remove_file(&warm.env_file);
}

/// Removes what was made ready for a run and not used.
pub(crate) async fn end_run(ex: &DockerExecutor, run: &RunId) {
    let handles: Vec<_> = {
        let mut map = ex.warm.lock().await;
        let keys: Vec<_> = map.keys().filter(|(r, _)| r == run).cloned().collect();
        keys.into_iter().filter_map(|k| map.remove(&k)).collect()
    };
    for h in handles {
        if let Ok(Some(warm)) = h.await {
            discard(ex, warm).await;
        }
    }
}

/// Runs a stage in its warm container: its `out/` files and variables
/// written, then the go.
pub(crate) async fn run(
    ex: &DockerExecutor,
    job: StageJob,
    warm: Warm,
    stop: CancellationToken,
) -> StageReport {
    let Some(ws) = job.workspace.local() else {
        discard(ex, warm).await;
        return StageReport::of(Outcome::StartFailed(
            "the workspace is not on this machine".into(),
        ));
    };
    let ready = ws
        .write_outputs(&job.inputs.outputs)
        .map_err(|e| format!("cannot write out/: {e}"))
        .and_then(|()| {
            fill(&warm.env_file, &job)
                .map_err(|e| format!("cannot write the stage's variables: {e}"))
        });
    if let Err(e) = ready {
        let image_id = warm.image_id.clone();
        discard(ex, warm).await;
        return StageReport {
            outcome: Outcome::StartFailed(e),
            image_id: Some(image_id),
            ..StageReport::default()
        };
    }
    let since = job.capture.as_ref().and_then(|_| ws.mark().ok());
    let marker = job.limits.idle_timeout.is_some();
    let outcome = run_created(
        ex,
        &warm.id,
        &warm.private,
        job.log.clone(),
        marker,
        stop,
        Begin::Go(warm.attached),
    )
    .await;
    let _ = std::fs::remove_file(&warm.env_file);
    remove_later(ex, warm.id, warm.name).await;
    report(ws, &job, &warm.private, since, outcome, warm.image_id).await
}

/// Writes every variable of the stage into its file, in place.
fn fill(path: &std::path::Path, job: &StageJob) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)?;
    // Read by the container's shell through the same page cache: no need
    // to wait for the disk.
    f.write_all(env_file(&job.env).as_bytes())
}
