//! Shared by the container benchmarks: one run of a pipeline through the
//! engine with an executor, timed from the run's start to its end.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sentinel_api::RunStatus;
use sentinel_engine::{Engine, EngineConfig, Executor, ProgressFn, RunRequest, Signals};
use sentinel_results::LocalSink;
use sentinel_store::SledStore;

/// The median of some timings.
pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Runs `yaml` in `dir` with `jobs` stages at once on `exec`; asserts it
/// succeeded and returns how long it took.
pub async fn engine_run<E: Executor + Clone + 'static>(
    dir: &Path,
    yaml: &str,
    jobs: usize,
    exec: &E,
    store: &SledStore,
) -> Duration {
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("sentinel.yml"), yaml).unwrap();
    let plan = sentinel_pipeline::parse_str(yaml, "sentinel.yml", "bench").unwrap();
    let engine = Engine {
        exec: Arc::new(exec.clone()),
        store: Arc::new(store.clone()),
        sink: Arc::new(LocalSink::new(dir.join("results"))),
        config: EngineConfig {
            jobs,
            state_dir: dir.join("state"),
            keep_workspace: false,
            keep_files: sentinel_engine::EngineConfig::KEEP_FILES,
        },
    };
    let progress: ProgressFn = Arc::new(|_| {});
    let req = RunRequest::local(plan, src);
    let t = Instant::now();
    let run = engine.run(req, progress, Signals::default()).await.unwrap();
    let took = t.elapsed();
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.reason);
    took
}
