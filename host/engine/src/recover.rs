//! Recovery after a crash: runs whose owner process died are marked
//! `interrupted` (stages too), that is published, and their resources
//! (containers, networks, run folders) are removed.

use std::collections::BTreeSet;

use chrono::Utc;
use sentinel_api::{FailureKind, RunId, RunSummary};

use crate::docs::apply_run_event;
use crate::ports::{LogBody, StorageError};
use crate::run::Engine;
use crate::transition::{RunEvent, StageEvent, transition};
use crate::workspace::RunDirs;

/// Recovers every dead run; returns their ids.
pub async fn recover(engine: &Engine) -> Result<Vec<RunId>, StorageError> {
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
    for run in engine.store.list_runs(1000).await? {
        if !run.status.is_final() && !leased.contains(&run.id) {
            dead.push((
                run.id,
                "the sentinel process running it died before taking its lease".into(),
            ));
        }
    }
    let mut recovered = Vec::new();
    for (id, why) in dead {
        interrupt(engine, &id, &why).await?;
        recovered.push(id);
    }
    Ok(recovered)
}

async fn interrupt(engine: &Engine, id: &RunId, why: &str) -> Result<(), StorageError> {
    let Some(mut run) = engine.store.get_run(id).await? else {
        engine.store.remove_lease(id).await?;
        return Ok(());
    };
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
                    .put_log(id, &stage.name, &LogBody::File(log))
                    .await
                {
                    Ok(key) => stage.log = Some(key),
                    Err(e) => {
                        tracing::warn!("cannot publish the partial log of `{}`: {e}", stage.name)
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
    if !run.status.is_final() {
        apply_run_event(&mut run, RunEvent::Interrupt);
        run.reason = Some(why.to_string());
        run.finished = Some(now);
        let e = crate::docs::event(None, run.status.as_str(), run.reason.clone());
        engine.store.append_event(id, &e).await?;
    }
    engine.sink.put_run(&run).await?;
    engine.sink.update_index(&RunSummary::of(&run)).await?;
    engine.store.put_run(&run, true).await?;
    engine.exec.end_run(id).await;
    engine.store.remove_lease(id).await?;
    let root = dirs.root.clone();
    let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(root)).await;
    tracing::warn!("run {id} was interrupted: {why}");
    Ok(())
}
