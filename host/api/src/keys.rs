//! Where each document lives in the results layout, relative to the prefix.
//! The local folder and the S3 bucket use exactly these keys.

use crate::{RunId, StageName};

/// Runs per index page.
pub const INDEX_PAGE_SIZE: usize = 100;

/// `runs/index.json` for page 0, `runs/index-N.json` after it.
pub fn index_page(page: u32) -> String {
    if page == 0 {
        "runs/index.json".to_string()
    } else {
        format!("runs/index-{page}.json")
    }
}

/// `deployments/index.json`: what is deployed where now, and the newest deployments.
pub const DEPLOYMENTS: &str = "deployments/index.json";

/// `run/<runId>/` — the folder of one run.
pub fn run_dir(run: &RunId) -> String {
    format!("run/{run}")
}

/// `run/<runId>/run.json`.
pub fn run_doc(run: &RunId) -> String {
    format!("run/{run}/run.json")
}

/// `run/<runId>/<stage>.json`.
pub fn stage_doc(run: &RunId, stage: &StageName) -> String {
    format!("run/{run}/{stage}.json")
}

/// `run/<runId>/<stage>.log`.
pub fn stage_log(run: &RunId, stage: &StageName) -> String {
    format!("run/{run}/{stage}.log")
}

/// A stage's log file name, relative to its run's folder: `<stage>.log`,
/// or `<stage>.attempt-<n>.log` for an earlier attempt of a retried stage.
pub fn log_name(stage: &StageName, attempt: Option<u32>) -> String {
    match attempt {
        None => format!("{stage}.log"),
        Some(n) => format!("{stage}.attempt-{n}.log"),
    }
}

/// `run/<runId>/<stage>.log`, or an earlier attempt's
/// `run/<runId>/<stage>.attempt-<n>.log`.
pub fn attempt_log(run: &RunId, stage: &StageName, attempt: Option<u32>) -> String {
    format!("run/{run}/{}", log_name(stage, attempt))
}

/// `run/<runId>/<stage>.zip`.
pub fn stage_artifacts(run: &RunId, stage: &StageName) -> String {
    format!("run/{run}/{stage}.zip")
}
