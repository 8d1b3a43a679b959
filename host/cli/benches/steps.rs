//! Benchmark (not a test) of WebAssembly steps, in one run: the raw
//! instantiate-and-run of a cached component, a cached jq-pluck stage end to
//! end inside the engine (log, state and result documents included) against
//! the same work as a container stage, the first-run compile time, and the
//! wall time of 100- and 1,000-stage wasm-only DAGs (and the same DAGs of
//! no-op steps: the engine's own cost), each against its goal.
//! Run with `cargo bench -p sentinel --bench steps` after `scripts/build-steps.sh`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sentinel_api::{RunStatus, StageStatus};
use sentinel_docker::DockerExecutor;
use sentinel_engine::exec::{
    Dispatch, Executor, Inputs, LocalWorkspace, StageJob, StepWork, Var, Work,
};
use sentinel_engine::lease::Owner;
use sentinel_engine::{Engine, EngineConfig, Progress, ProgressFn, RunRequest, Signals};
use sentinel_pipeline::{DirCatalog, Limits, Network, WorkspaceAccess};
use sentinel_results::LocalSink;
use sentinel_store::SledStore;
use sentinel_wasm::WasmExecutor;
use tokio_util::sync::CancellationToken;

fn dist() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../steps/dist")
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Runs a pipeline; returns the wall time and each stage's running→final time.
async fn run(engine: &Engine, dir: &Path, yaml: &str) -> (Duration, Vec<Duration>) {
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    let catalog = DirCatalog { dirs: vec![dist()] };
    let plan =
        sentinel_pipeline::parse_str_with(yaml, "sentinel.yml", "bench", &catalog, &src).unwrap();
    let starts: Arc<Mutex<BTreeMap<String, Instant>>> = Default::default();
    let spans: Arc<Mutex<Vec<Duration>>> = Default::default();
    let progress: ProgressFn = {
        let (starts, spans) = (starts.clone(), spans.clone());
        Arc::new(move |p| {
            if let Progress::Stage { name, status, .. } = p {
                if status == StageStatus::Running {
                    starts
                        .lock()
                        .unwrap()
                        .insert(name.to_string(), Instant::now());
                } else if status.is_final()
                    && let Some(t) = starts.lock().unwrap().get(name.as_str())
                {
                    spans.lock().unwrap().push(t.elapsed());
                }
            }
        })
    };
    let req = RunRequest::local(plan, src);
    let t = Instant::now();
    let doc = engine.run(req, progress, Signals::default()).await.unwrap();
    let wall = t.elapsed();
    assert_eq!(doc.status, RunStatus::Succeeded, "{:?}", doc.reason);
    let spans = spans.lock().unwrap().clone();
    (wall, spans)
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // State and results live beside the project, as `sentinel run` keeps
        // them (`<dir>/.sentinel`), not in the system's temporary folder;
        // SENTINEL_BENCH_DIR picks another place (to compare file systems).
        let base = std::env::var("SENTINEL_BENCH_DIR").unwrap_or_else(|_| env!("CARGO_TARGET_TMPDIR").to_string());
        let tmp = tempfile::tempdir_in(&base).unwrap();
        // What creating a file costs there: short steps are bound by it.
        let probe = tmp.path().join("probe");
        std::fs::create_dir_all(&probe).unwrap();
        let t = Instant::now();
        for i in 0..200 {
            std::fs::write(probe.join(i.to_string()), b"x").unwrap();
        }
        let create = t.elapsed() / 200;
        std::fs::remove_dir_all(&probe).unwrap();
        let wasm = WasmExecutor::new(&tmp.path().join("cache")).unwrap();

        // First-run compile of jq-pluck (empty cache), then a cached load.
        let jq = sentinel_pipeline::step::load_local(&dist().join("jq-pluck/step.wasm")).expect("run scripts/build-steps.sh");
        let t = Instant::now();
        wasm.prepare(&jq.wasm, &jq.digest).await.unwrap();
        let compile = t.elapsed();
        let fresh = WasmExecutor::new(&tmp.path().join("cache")).unwrap();
        let t = Instant::now();
        fresh.prepare(&jq.wasm, &jq.digest).await.unwrap();
        let from_disk = t.elapsed();

        // Raw instantiate-and-run of a cached component (a no-op command).
        let noop = sentinel_pipeline::step::load_local(&dist().join("guests/noop/step.wasm")).unwrap();
        let ws: Arc<dyn sentinel_engine::Workspace> = Arc::new(LocalWorkspace::at(tmp.path().join("raw")));
        std::fs::create_dir_all(tmp.path().join("raw/workspace")).unwrap();
        let exec: Arc<dyn Executor> = Arc::new(wasm.clone());
        let mut raw = Vec::new();
        for i in 0..2000 {
            let (tx, mut rx) = tokio::sync::mpsc::channel(8);
            let job = StageJob {
                run_id: "01JDX3K6Q2T8W9V5M4N3P2R1S0".parse().unwrap(),
                stage: "noop".parse().unwrap(),
                owner: Owner::current(),
                work: Work::Step(StepWork { name: "probe".into(), wasm: noop.wasm.clone(), digest: noop.digest.clone(), workspace: WorkspaceAccess::Read, http: vec![] }),
                env: vec![],
                limits: Limits { timeout: Duration::from_secs(10), idle_timeout: None, memory: 64 << 20, cpus: None, network: Network::None, log_limit: 1 << 20, pids: 1, user: None, reuse: false, placement: Vec::new() },
                user: String::new(),
                workspace: ws.clone(),
                inputs: Inputs::default(),
                capture: None,
                log: tx,
            };
            let t = Instant::now();
            exec.run_stage(job, CancellationToken::new()).await;
            if i >= 100 {
                raw.push(t.elapsed());
            }
            while rx.try_recv().is_ok() {}
        }
        let raw_p50 = pct(&mut raw, 0.5);

        // The same for jq-pluck itself: the guest's own work (jaq compiles the
        // filter at every start; the jq-defined prelude only when the filter
        // names one of its definitions).
        let mut raw_jq = Vec::new();
        for i in 0..300 {
            let (tx, mut rx) = tokio::sync::mpsc::channel(8);
            let job = StageJob {
                run_id: "01JDX3K6Q2T8W9V5M4N3P2R1S0".parse().unwrap(),
                stage: "pluck".parse().unwrap(),
                owner: Owner::current(),
                work: Work::Step(StepWork { name: "jq-pluck".into(), wasm: jq.wasm.clone(), digest: jq.digest.clone(), workspace: WorkspaceAccess::Read, http: vec![] }),
                env: vec![
                    Var::plain("SENTINEL_JQ_PLUCK_FILTER", ".Credentials.AccessKeyId"),
                    Var::plain("SENTINEL_JQ_PLUCK_INPUT", r#"{"Credentials":{"AccessKeyId":"ASIAEXAMPLE"}}"#),
                    Var::plain("SENTINEL_JQ_PLUCK_RAW", "true"),
                ],
                limits: Limits { timeout: Duration::from_secs(10), idle_timeout: None, memory: 64 << 20, cpus: None, network: Network::None, log_limit: 1 << 20, pids: 1, user: None, reuse: false, placement: Vec::new() },
                user: String::new(),
                workspace: ws.clone(),
                inputs: Inputs::default(),
                capture: None,
                log: tx,
            };
            let t = Instant::now();
            exec.run_stage(job, CancellationToken::new()).await;
            if i >= 20 {
                raw_jq.push(t.elapsed());
            }
            while rx.try_recv().is_ok() {}
        }
        let raw_jq_p50 = pct(&mut raw_jq, 0.5);

        // Engines: steps only, and containers + steps.
        let store = SledStore::try_open(&tmp.path().join("db")).unwrap();
        let docker = DockerExecutor::connect().await.expect("Docker (run scripts/setup.sh)");
        let engine = |jobs: usize, root: &str| Engine {
            exec: Arc::new(Dispatch { containers: Arc::new(docker.clone()), steps: Arc::new(wasm.clone()) }),
            store: Arc::new(store.clone()),
            sink: Arc::new(LocalSink::new(tmp.path().join(root).join("results"))),
            config: EngineConfig { jobs, state_dir: tmp.path().join(root).join("state"), keep_workspace: false, keep_files: EngineConfig::KEEP_FILES },
        };
        let input = r#"{"Credentials":{"AccessKeyId":"ASIAEXAMPLE","SecretAccessKey":"x"}}"#;
        let mut pluck = String::from("version: 1\nbox: sentinel/busybox:local\ndefaults: {network: none}\nstages:\n");
        for i in 0..50 {
            pluck.push_str(&format!("  p{i}:\n    step: jq-pluck@1\n    with: {{input: '{input}', filter: .Credentials.AccessKeyId, raw: 'true'}}\n"));
        }
        let e1 = engine(1, "pluck");
        let _ = run(&e1, &tmp.path().join("warm"), &pluck).await;
        let mut stage_spans = Vec::new();
        for i in 0..6 {
            stage_spans.extend(run(&e1, &tmp.path().join(format!("pluck-{i}")), &pluck).await.1);
        }
        let (p50, p99) = (pct(&mut stage_spans.clone(), 0.5), pct(&mut stage_spans, 0.99));

        let container = format!(
            "version: 1\nbox: sentinel/busybox:local\ndefaults: {{network: none}}\nstages:\n  c:\n    run: echo '{input}' | sed -e 's/.*AccessKeyId\":\"//' -e 's/\".*//'\n"
        );
        let mut cspans = Vec::new();
        for i in 0..10 {
            cspans.extend(run(&e1, &tmp.path().join(format!("c-{i}")), &container).await.1);
        }
        let c50 = pct(&mut cspans, 0.5);

        // DAGs of n stages: ten chains side by side, each stage after the
        // one ten before it; jq-pluck, then no-op steps (the engine's own cost).
        let noop_wasm = dist().join("guests/noop/step.wasm");
        let dag_of = |n: usize, step: &dyn Fn(usize) -> String| {
            let mut dag = String::from("version: 1\nstages:\n");
            for i in 0..n {
                let after = if i < 10 { String::new() } else { format!(", after: [s{}]", i - 10) };
                dag.push_str(&format!("  s{i}: {{{}{after}}}\n", step(i)));
            }
            dag
        };
        let pluck_step = |i: usize| format!("step: jq-pluck@1, with: {{input: '{{\"v\": {i}}}', filter: .v}}");
        let noop_step = |_: usize| format!("step: '{}'", noop_wasm.display());
        let e8 = engine(8, "dag");
        // SENTINEL_BENCH_NOOP_DAG_RUNS=N repeats the no-op DAGs (for profiling the engine).
        let runs = std::env::var("SENTINEL_BENCH_NOOP_DAG_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
        let mut dags = Vec::new();
        for (n, kind, step, rounds) in [
            (100, "pluck", &pluck_step as &dyn Fn(usize) -> String, 5),
            (1000, "pluck", &pluck_step, 3),
            (100, "noop", &noop_step, runs),
            (1000, "noop", &noop_step, runs.min(3)),
        ] {
            let dag = dag_of(n, step);
            let _ = run(&e8, &tmp.path().join(format!("{kind}-{n}-warm")), &dag).await;
            let mut walls = Vec::new();
            for i in 0..rounds {
                walls.push(run(&e8, &tmp.path().join(format!("{kind}-{n}-{i}")), &dag).await.0);
            }
            dags.push(pct(&mut walls, 0.5));
        }
        let (wall, wall_1000, nwall, nwall_1000) = (dags[0], dags[1], dags[2], dags[3]);

        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!("WebAssembly steps (wasmtime 48), this machine, state in {base}:");
        println!("  creating a small file in that folder (context)   : {:>9.1} µs", us(create));
        println!("  first-run compile of jq-pluck ({} KiB)           : {:>9.1} ms", std::fs::metadata(&jq.wasm).unwrap().len() / 1024, compile.as_secs_f64() * 1e3);
        println!("  load of the cached compiled jq-pluck             : {:>9.1} ms", from_disk.as_secs_f64() * 1e3);
        println!("  instantiate + run of a cached no-op step, p50    : {:>9.1} µs", us(raw_p50));
        println!("  instantiate + run of cached jq-pluck (the guest's own time), p50: {:>9.1} µs", us(raw_jq_p50));
        println!("  the same pluck as a container stage, p50         : {:>9.1} µs", us(c50));
        println!("goals (figure, limit, ratio to the limit: at most 1.00 meets it):");
        println!("  1. jq-pluck stage in the engine, p50             : {:>9.1} µs  <= 500 µs   {:.2}", us(p50), us(p50) / 500.0);
        println!("     jq-pluck stage in the engine, p99             : {:>9.1} µs  <= 2000 µs  {:.2}", us(p99), us(p99) / 2000.0);
        println!("     stage p50 / the guest's own time              : {:>9.2}x   <= 2.5x     {:.2}", p50.as_secs_f64() / raw_jq_p50.as_secs_f64(), p50.as_secs_f64() / raw_jq_p50.as_secs_f64() / 2.5);
        println!("     container stage p50 / step stage p50          : {:>9.0}x   >= 600x     {:.2}", c50.as_secs_f64() / p50.as_secs_f64(), 600.0 / (c50.as_secs_f64() / p50.as_secs_f64()));
        println!("  2. 100-stage jq-pluck DAG, --jobs 8, median      : {:>9.1} ms  < 100 ms    {:.2}", ms(wall), ms(wall) / 100.0);
        println!("     1,000-stage jq-pluck DAG, --jobs 8, median    : {:>9.1} ms  < 1000 ms   {:.2}", ms(wall_1000), ms(wall_1000) / 1000.0);
        println!("     the engine's own cost (no-op steps), 100      : {:>9.1} ms  = {:.3} ms per stage", ms(nwall), ms(nwall) / 100.0);
        println!("     the engine's own cost (no-op steps), 1,000    : {:>9.1} ms  = {:.3} ms per stage", ms(nwall_1000), ms(nwall_1000) / 1000.0);
    });
}
