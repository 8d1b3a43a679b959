//! What a re-run keeps of the run it repeats: every stage that succeeded
//! there, except the stage it re-runs from and every stage after it, with
//! its outputs as they were (kept sealed in the store) and the files it made
//! (kept in the state folder). A stage whose outputs or files are no longer
//! kept runs again, with the reason. The server's re-run and `sentinel
//! rerun` both ask here, so they mean the same.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use sentinel_api::{RunId, StageName, StageStatus};
use sentinel_pipeline::Plan;

use crate::ports::Store;
use crate::run::Reused;
use crate::workspace::FileSet;

/// Stages kept from the earlier run, and why others that succeeded there
/// run again.
pub type Kept = (BTreeMap<StageName, Reused>, BTreeMap<StageName, String>);

/// The stages of `earlier` a re-run from `from` keeps.
pub async fn reused_from(
    store: &dyn Store,
    state_dir: &Path,
    earlier: &RunId,
    from: &StageName,
    plan: &Plan,
) -> Result<Kept, String> {
    if !plan.stages.iter().any(|s| &s.name == from) {
        return Err(format!("the pipeline has no stage `{from}` any more"));
    }
    reused_except(
        store,
        state_dir,
        earlier,
        BTreeSet::from([from.clone()]),
        plan,
    )
    .await
}

/// The stages of `earlier` a run keeps: every stage that succeeded there,
/// except those of `again` and the stages after them.
pub async fn reused_except(
    store: &dyn Store,
    state_dir: &Path,
    earlier: &RunId,
    mut again: BTreeSet<StageName>,
    plan: &Plan,
) -> Result<Kept, String> {
    // And everything that needs them, directly or not.
    loop {
        let before = again.len();
        for s in &plan.stages {
            if s.needs.iter().any(|n| again.contains(n)) {
                again.insert(s.name.clone());
            }
        }
        if again.len() == before {
            break;
        }
    }
    let docs = store
        .get_stages(earlier)
        .await
        .map_err(|err| err.to_string())?;
    let kept_dir = crate::prepare::kept_dir(state_dir, earlier);
    let mut reuse = BTreeMap::new();
    let mut not = BTreeMap::new();
    for d in docs {
        let Some(stage) = plan.stages.iter().find(|s| s.name == d.name) else {
            continue;
        };
        if d.status != StageStatus::Succeeded || again.contains(&d.name) {
            continue;
        }
        let outputs = store
            .kept_outputs(earlier, &d.name)
            .await
            .map_err(|err| err.to_string())?;
        let Some(outputs) = outputs else {
            not.insert(
                d.name,
                format!("its outputs in run {earlier} are no longer kept"),
            );
            continue;
        };
        let files = kept_dir.join(d.name.as_str());
        let needs_files =
            crate::prepare::capture_of(Path::new("/"), earlier, stage, true).is_some();
        let files = if files.is_dir() {
            Some(FileSet {
                dir: files,
                files: 0,
                bytes: 0,
            })
        } else if needs_files {
            not.insert(
                d.name,
                format!("the files it made in run {earlier} are no longer kept"),
            );
            continue;
        } else {
            None
        };
        let reused = Reused {
            run: earlier.clone(),
            output: outputs.output,
            outputs: outputs.outputs,
            files,
        };
        reuse.insert(d.name, reused);
    }
    Ok((reuse, not))
}
