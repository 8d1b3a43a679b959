//! Runs real step components (built by `scripts/build-steps.sh`) through the
//! runtime, the way the engine does: a log channel, a local workspace (with
//! the step's private folder beside it), and a stop token fired at the
//! deadline.

#![allow(dead_code)]

pub mod http;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sentinel_engine::Executor;
use sentinel_engine::exec::{
    Chunk, Inputs, LocalWorkspace, Outcome, StageJob, StepWork, Stream, Var, Work,
};
use sentinel_engine::lease::Owner;
use sentinel_pipeline::step::{ResolvedStep, load_local};
use sentinel_pipeline::{Limits, Network, WorkspaceAccess};
use sentinel_wasm::WasmExecutor;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub fn dist() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../steps/dist")
}

/// A test guest or bundled step, or a failure saying how to build it.
pub fn component(rel: &str) -> ResolvedStep {
    let wasm = dist().join(rel).join("step.wasm");
    assert!(
        wasm.is_file(),
        "{} is missing: run `scripts/build-steps.sh` (it builds the steps for wasm32-wasip2)",
        wasm.display()
    );
    load_local(&wasm).unwrap()
}

pub fn executor() -> &'static WasmExecutor {
    static EXEC: std::sync::OnceLock<WasmExecutor> = std::sync::OnceLock::new();
    EXEC.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("sentinel-wasm-test-cache-{}", std::process::id()));
        WasmExecutor::new(&dir).unwrap()
    })
}

pub struct Run {
    pub outcome: Outcome,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub took: Duration,
    /// The workspace folder (kept until the run is dropped).
    pub workspace: PathBuf,
    /// What the step wrote to `$SENTINEL_OUTPUT`.
    pub outputs: Option<String>,
    _root: tempfile::TempDir,
}

pub struct Spec {
    pub env: Vec<(String, String)>,
    pub workspace: WorkspaceAccess,
    pub http: Vec<String>,
    pub timeout: Duration,
    pub memory: u64,
    pub log_limit: u64,
    /// Prepares the workspace folder before the run.
    pub setup: Box<dyn FnOnce(&Path)>,
}

impl Default for Spec {
    fn default() -> Self {
        Self {
            env: vec![],
            workspace: WorkspaceAccess::Read,
            http: vec![],
            timeout: Duration::from_secs(30),
            memory: 64 << 20,
            log_limit: 4 << 20,
            setup: Box::new(|_| {}),
        }
    }
}

pub async fn run(step: &ResolvedStep, spec: Spec) -> Run {
    let root = tempfile::tempdir().unwrap();
    let ws = LocalWorkspace::at(root.path().to_path_buf());
    std::fs::create_dir_all(&ws.dir).unwrap();
    (spec.setup)(&ws.dir);
    let workspace = ws.dir.clone();
    let (tx, mut rx) = mpsc::channel::<Chunk>(64);
    let collector = tokio::spawn(async move {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        while let Some(c) = rx.recv().await {
            match c.stream {
                Stream::Stdout => out.extend_from_slice(&c.bytes),
                Stream::Stderr => err.extend_from_slice(&c.bytes),
            }
        }
        (out, err)
    });
    let job = StageJob {
        run_id: "01JDX3K6Q2T8W9V5M4N3P2R1S0".parse().unwrap(),
        stage: "probe".parse().unwrap(),
        owner: Owner::current(),
        work: Work::Step(StepWork {
            name: step.manifest.name.clone(),
            wasm: step.wasm.clone(),
            digest: step.digest.clone(),
            workspace: spec.workspace,
            http: spec.http,
        }),
        env: spec
            .env
            .into_iter()
            .map(|(k, v)| Var::plain(k, v))
            .collect(),
        limits: Limits {
            timeout: spec.timeout,
            idle_timeout: None,
            memory: spec.memory,
            cpus: None,
            network: Network::None,
            log_limit: spec.log_limit,
            pids: 1,
            user: None,
            reuse: false,
            placement: Vec::new(),
        },
        user: String::new(),
        workspace: Arc::new(ws),
        inputs: Inputs::default(),
        capture: None,
        log: tx,
    };
    let stop = CancellationToken::new();
    let timer = {
        let stop = stop.clone();
        let timeout = spec.timeout;
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            stop.cancel();
        })
    };
    let exec: Arc<dyn Executor> = Arc::new(executor().clone());
    let t = Instant::now();
    let report = exec.run_stage(job, stop).await;
    let took = t.elapsed();
    timer.abort();
    let (stdout, stderr) = collector.await.unwrap();
    Run {
        outcome: report.outcome,
        stdout,
        stderr,
        took,
        workspace,
        outputs: report.outputs,
        _root: root,
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Asserts that the step exited 0, showing its stderr otherwise.
pub fn assert_ok(r: &Run) {
    assert_eq!(
        r.outcome,
        Outcome::Exited { code: 0 },
        "{}",
        text(&r.stderr)
    );
}
