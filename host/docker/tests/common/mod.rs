//! What the Docker tests and benchmarks share: a stage job on a fresh
//! workspace of a small project, run as an unprivileged user with no
//! network.

use std::path::Path;
use std::sync::Arc;

use sentinel_api::{RunId, StageName};
use sentinel_engine::exec::{
    Chunk, Inputs, LocalWorkspace, RunContext, Source, StageJob, Var, Work,
};
use sentinel_engine::lease::Owner;
use sentinel_pipeline::{ContainerAction, Limits, Network, Shell};
use tokio::sync::mpsc;

/// The image `scripts/setup.sh` builds.
pub const IMAGE: &str = "sentinel/busybox:local";

/// A job for stage `stage` of a new run whose workspace is a copy of
/// `project` (under `runs`), with `env`; its log goes to `log`.
pub async fn stage_job(
    runs: &Path,
    project: &Path,
    stage: &str,
    env: Vec<Var>,
    log: mpsc::Sender<Chunk>,
) -> StageJob {
    let run_id: RunId = ulid::Ulid::new().to_string().parse().unwrap();
    let ctx = RunContext {
        run_id: run_id.clone(),
        owner: Owner::current(),
        runs_dir: runs.to_path_buf(),
        services: Vec::new(),
        registries: Vec::new(),
    };
    let source = Source {
        dir: project.to_path_buf(),
        skip: Vec::new(),
        git: false,
        restore: Vec::new(),
        user: "1000:1000".into(),
        dirs: Vec::new(),
    };
    let ws = LocalWorkspace::prepare(&ctx, &source).await.unwrap();
    StageJob {
        run_id,
        stage: stage.parse::<StageName>().unwrap(),
        owner: Owner::current(),
        work: Work::Container(ContainerAction {
            image: IMAGE.into(),
            image_ref: None,
            script: "echo one line".into(),
            docker: false,
            image_command: false,
            commit: None,
            shell: Shell::Strict,
        }),
        env,
        limits: Limits {
            timeout: Limits::DEFAULT_TIMEOUT,
            idle_timeout: None,
            memory: 256 << 20,
            cpus: None,
            network: Network::None,
            log_limit: Limits::DEFAULT_LOG_LIMIT,
            pids: 64,
            user: None,
            reuse: false,
            placement: Vec::new(),
        },
        user: "1000:1000".into(),
        workspace: Arc::new(ws),
        inputs: Inputs::default(),
        capture: None,
        log,
    }
}
