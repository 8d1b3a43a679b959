//! Recovery after a crash: runs whose owner process died are marked
//! `interrupted` (stages too), that is published, and their resources
//! (containers, networks, run folders) are removed. A run paused at an
//! approval gate is no such run: it waits, holding nothing, and is left so. Every open run is
//! looked at, however old, and each is recovered on its own: one that
//! cannot be is reported, and neither the others nor new runs wait for it.

use std::collections::BTreeSet;

use chrono::Utc;
use sentinel_api::{FailureKind, RunId, RunSummary};

use crate::docs::apply_run_event;
use crate::ports::{LogBody, StorageError};
use crate::run::Engine;
use crate::transition::{RunEvent, StageEvent, transition};
use crate::workspace::RunDirs;

/// What a recovery did.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Runs marked `interrupted`.
    pub recovered: Vec<RunId>,
    /// Runs that could not be (they are looked at again next time).
    pub failed: Vec<(RunId, StorageError)>,
    /// Why the dead runs could not even be listed.
    pub listing: Option<StorageError>,
}

impl Recovery {
    /// Reports what happened on `say` (a line each), newest first.
    pub fn report(&self, mut say: impl FnMut(String)) {
        if let Some(e) = &self.listing {
            say(format!("cannot look for interrupted runs: {e}"));
        }
        for id in &self.recovered {
            say(format!(
                "run {id} was interrupted (its sentinel process died); marked `interrupted`"
            ));
        }
        for (id, e) in &self.failed {
            say(format!(
                "run {id} was interrupted but cannot be marked so now: {e}"
            ));
        }
    }
}

/// The runs whose process died, and why.
async fn dead_runs(engine: &Engine) -> Result<Vec<(RunId, String)>, StorageError> {
    let leases = engine.store.leases().await?;
    let leased: BTreeSet<RunId> = leases.iter().map(|l| l.run_id.clone()).collect();
    let mut dead: Vec<(RunId, String)> = leases
        .into_iter()
        .filter(|l| l.is_dead())
        .map(|l| {
            let why = format!("the sentinel process running it (pid {}) died", l.owner.pid);
            (l.run_id, why)
        })
        .collect();
    for run in engine.store.open_runs().await? {
        // A paused run holds no lease: it waits for its approval.
        if !leased.contains(&run.id) && run.status != sentinel_api::RunStatus::WaitingApproval {
            dead.push((
                run.id,
                "the sentinel process running it died before taking its lease".into(),
            ));
        }
    }
    Ok(dead)
}

/// Recovers every dead run, each on its own.
pub async fn recover(engine: &Engine) -> Recovery {
    let mut out = Recovery::default();
    let dead = match dead_runs(engine).await {
        Ok(d) => d,
        Err(e) => {
            out.listing = Some(e);
            return out;
        }
    };
    for (id, why) in dead {
        match interrupt(engine, &id, &why).await {
            Ok(true) => out.recovered.push(id),
            Ok(false) => {}
            Err(e) => {
                tracing::error!("run {id}: cannot mark it interrupted: {e}");
                out.failed.push((id, e));
            }
        }
    }
    out
}

/// Marks run `id` interrupted; false when it was paused at an approval
/// gate (then only what its process left behind goes).
async fn interrupt(engine: &Engine, id: &RunId, why: &str) -> Result<bool, StorageError> {
    let Some(mut run) = engine.store.get_run(id).await? else {
        engine.store.remove_lease(id).await?;
        return Ok(true);
    };
    if run.status == sentinel_api::RunStatus::WaitingApproval {
        engine.exec.end_run(id).await;
        engine.store.remove_lease(id).await?;
        return Ok(false);
    }
    let dirs = RunDirs::new(&engine.config.state_dir, id);
    let now = Utc::now();
    let mut stages = engine.store.get_stages(id).await?;
    for stage in stages.iter_mut() {
        if let Ok(to) = transition(stage.status, StageEvent::Interrupt) {
            stage.status = to;
            stage.reason = Some(why.to_string());
            stage.failure = Some(FailureKind::HostDied);
            stage.finished = Some(now);
            // What the stage logged before the crash is kept (it was masked as written).
            let log = dirs.log(&stage.name);
            if log.is_file() {
                match engine
                    .sink
                    .put_log(id, &stage.name, None, &LogBody::File(log))
                    .await
                {
                    Ok(key) => stage.log = Some(key),
                    Err(e) => {
                        tracing::warn!("cannot publish the partial log of `{}`: {e}", stage.name);
                        stage
                            .warnings
                            .push(format!("its partial log could not be published: {e}"));
                    }
                }
            }
        }
        engine.store.put_stage(stage).await?;
        engine.sink.put_stage(stage).await?;
    }
    run.refresh_stages(&stages);
    for entry in run.stages.iter_mut() {
        if !stages.iter().any(|s| s.name == entry.name)
            && let Ok(to) = transition(entry.status, StageEvent::Interrupt)
        {
            entry.status = to;
        }
    }
    let ended = (!run.status.is_final()).then(|| {
        apply_run_event(&mut run, RunEvent::Interrupt);
        run.reason = Some(why.to_string());
        run.finished = Some(now);
        crate::docs::event(None, run.status.as_str(), run.reason.clone())
    });
    engine.sink.put_run(&run).await?;
    engine.sink.update_index(&RunSummary::of(&run)).await?;
    match ended {
        // Its end and its history's last line, together.
        Some(e) => engine.store.end_run(&run, &e).await?,
        None => engine.store.put_run(&run, true).await?,
    }
    engine.exec.end_run(id).await;
    engine.store.remove_lease(id).await?;
    let root = dirs.root.clone();
    let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(root)).await;
    tracing::warn!("run {id} was interrupted: {why}");
    Ok(true)
}
