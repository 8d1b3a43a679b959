//! Helpers shared by the end-to-end tests: a real Docker engine, a real sled
//! database and a real results folder, in temporary folders.

#![allow(dead_code)]

pub mod browser;
pub mod daemon;
pub mod server;
pub mod steps;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sentinel_api::{RunDoc, StageDoc};
use sentinel_docker::DockerExecutor;
use sentinel_engine::{Engine, EngineConfig, ProgressFn, ResultsSink, RunRequest, Signals};
use sentinel_results::LocalSink;
use sentinel_store::SledStore;

/// The image every Docker test uses; built by `scripts/setup.sh`.
pub const IMAGE: &str = "sentinel/busybox:local";

/// Connects to Docker and checks the test image, or fails saying how to get them.
pub async fn docker() -> DockerExecutor {
    let d = DockerExecutor::connect().await.unwrap_or_else(|e| {
        panic!("{e}\nthese tests need a Docker engine: run `scripts/setup.sh` (installs docker.io, starts dockerd, builds {IMAGE})")
    });
    if d.client().inspect_image(IMAGE).await.is_err() {
        panic!("the image {IMAGE} is missing: run `scripts/setup.sh` to build it");
    }
    d
}

/// One test project: a source folder, a state folder and a results folder.
pub struct Project {
    pub tmp: tempfile::TempDir,
    pub source: PathBuf,
    pub state: PathBuf,
    pub results: PathBuf,
}

impl Project {
    pub fn new(pipeline: &str) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let source = tmp.path().join("src");
        std::fs::create_dir_all(&source).unwrap();
        std::fs::write(source.join("sentinel.yml"), pipeline).unwrap();
        std::fs::write(source.join("README.txt"), "source file\n").unwrap();
        Self {
            state: tmp.path().join("state"),
            results: tmp.path().join("results"),
            source,
            tmp,
        }
    }

    pub fn sink(&self) -> LocalSink {
        LocalSink::new(&self.results)
    }

    pub async fn stage(&self, run: &RunDoc, name: &str) -> StageDoc {
        self.sink()
            .get_stage(&run.id, &name.parse().unwrap())
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("no document for stage {name}"))
    }

    pub fn log(&self, run: &RunDoc, name: &str) -> String {
        std::fs::read_to_string(self.results.join(format!("run/{}/{name}.log", run.id)))
            .unwrap_or_default()
    }

    /// The first file under the project's folders holding `needle`, if any.
    pub fn file_holding(&self, needle: &[u8]) -> Option<PathBuf> {
        self.all_files()
            .into_iter()
            .find(|(_, b)| contains(b, needle))
            .map(|(p, _)| p)
    }

    /// Every file under the project's folders, as bytes.
    pub fn all_files(&self) -> Vec<(PathBuf, Vec<u8>)> {
        walkdir::WalkDir::new(self.tmp.path())
            .into_iter()
            .flatten()
            .filter(|e| e.file_type().is_file())
            .map(|e| {
                (
                    e.path().to_path_buf(),
                    std::fs::read(e.path()).unwrap_or_default(),
                )
            })
            .collect()
    }
}

/// Whether this test binary runs its container stages on the swarm.
static SWARM: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes `run` use the Swarm executor (the swarm test binary does).
pub fn use_swarm() {
    SWARM.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Whether `run` uses the Swarm executor.
pub fn on_swarm() -> bool {
    SWARM.load(std::sync::atomic::Ordering::SeqCst)
}

/// A timing margin: `local` as given on the local executor, `swarm` on the
/// swarm (whose stages start in seconds: helper tasks carry the workspace).
pub fn slack(local: u64, swarm: u64) -> u64 {
    if on_swarm() { swarm } else { local }
}

/// The Swarm executor of the tests (this machine's one-node swarm, set up
/// by `scripts/swarm.sh`), or a failure saying how to get it.
pub async fn swarm() -> sentinel_docker::SwarmExecutor {
    sentinel_docker::SwarmExecutor::connect(Default::default())
        .await
        .unwrap_or_else(|e| {
            panic!("{e}\nthe Swarm tests need this machine's Docker in a swarm: run `scripts/setup.sh` (it runs scripts/swarm.sh)")
        })
}

/// Options of a test run.
#[derive(Default)]
pub struct Opts {
    pub secrets: BTreeMap<String, String>,
    pub signals: Signals,
    pub jobs: usize,
    /// The cache stages with `cache:` use.
    pub cache: Option<sentinel_engine::cache::CacheAccess>,
    /// The executor (default: a new one, as `sentinel run` makes).
    pub docker: Option<DockerExecutor>,
}

/// Runs the project's pipeline with the real Docker executor, sled and results folder.
pub async fn run(project: &Project, opts: Opts) -> RunDoc {
    let plan = sentinel_pipeline::load(&project.source.join("sentinel.yml"))
        .unwrap_or_else(|e| panic!("{e}"));
    let exec: Arc<dyn sentinel_engine::Executor> = match opts.docker {
        Some(d) => Arc::new(d),
        None if on_swarm() => Arc::new(swarm().await),
        None => Arc::new(docker().await),
    };
    let engine = Engine {
        exec,
        store: Arc::new(SledStore::try_open(&project.state).unwrap()),
        sink: Arc::new(project.sink()),
        config: EngineConfig {
            jobs: opts.jobs.max(1),
            state_dir: project.state.clone(),
            keep_workspace: false,
            keep_files: sentinel_engine::EngineConfig::KEEP_FILES,
        },
    };
    let progress: ProgressFn = Arc::new(|_| {});
    let req = RunRequest {
        secrets: opts.secrets,
        cache: opts.cache,
        ..RunRequest::local(plan, project.source.clone())
    };
    engine
        .run(req, progress, opts.signals)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Containers, networks, volumes and (on a swarm) services and secrets that
/// carry the project's labels, optionally of one run.
pub async fn leftovers(run: Option<&str>) -> Vec<String> {
    let list = |args: &[&str]| {
        std::process::Command::new("docker")
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .expect("docker CLI")
    };
    let mut text = list(&["ps", "-a", "--format", "{{.Names}} {{.Labels}}"]);
    text += &list(&["network", "ls", "--format", "{{.Name}} {{.Labels}}"]);
    text += &list(&["volume", "ls", "--format", "{{.Name}} {{.Labels}}"]);
    if on_swarm() {
        // Services and secrets list no labels: each is named after its run.
        let named = list(&["service", "ls", "--format", "{{.Name}}"])
            + &list(&["secret", "ls", "--format", "{{.Name}}"]);
        for l in named.lines() {
            if let Some(rest) = l.strip_prefix("sentinel-") {
                let run = rest
                    .split('-')
                    .next()
                    .unwrap_or_default()
                    .to_ascii_uppercase();
                text += &format!("{l} dev.sentinel.run={run}\n");
            }
        }
    }
    text.lines()
        .filter(|l| l.contains("dev.sentinel.run="))
        .filter(|l| run.is_none_or(|r| l.contains(&format!("dev.sentinel.run={r}"))))
        .map(str::to_string)
        .collect()
}

/// A pipeline header for tests: the busybox box, no network.
pub fn pipeline(stages: &str) -> String {
    format!(
        "version: 1\nbox: {IMAGE}\ndefaults:\n  network: none\n  timeout: 60s\nstages:\n{stages}"
    )
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// A small xorshift for crash tests' random moments (seeded from the clock
/// and printed, to replay a failure).
pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// A case of a suite run concurrently with the others.
pub type Case = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>;

/// Runs `cases` concurrently, printing `ok   NAME` for each that passed;
/// the failures, each as `NAME: why`.
pub async fn run_cases(cases: Vec<(&'static str, Case)>) -> Vec<String> {
    let names: Vec<&str> = cases.iter().map(|(n, _)| *n).collect();
    let results =
        futures_util::future::join_all(cases.into_iter().map(|(_, c)| tokio::spawn(c))).await;
    let mut failures = Vec::new();
    for (name, r) in names.iter().zip(results) {
        match r {
            Ok(Ok(())) => eprintln!("ok   {name}"),
            Ok(Err(e)) => failures.push(format!("{name}: {e}")),
            Err(e) => failures.push(format!("{name}: panicked: {e}")),
        }
    }
    failures
}

/// Builds the `(name, case)` list of a suite from case functions.
#[macro_export]
macro_rules! cases {
    ($($case:ident),* $(,)?) => {
        vec![$((stringify!($case), Box::pin($case()) as $crate::common::Case)),*]
    };
}

/// Runs a suite's cases concurrently, then fails listing the cases that
/// failed, and any container, network, volume (or, on a swarm, service or
/// secret) with the project's labels left once all are done.
pub async fn run_suite(what: &str, cases: Vec<(&'static str, Case)>) {
    let count = cases.len();
    let failures = run_cases(cases).await;
    let left = leftovers(None).await;
    assert!(
        failures.is_empty(),
        "{} of {count} {what} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        left.is_empty(),
        "objects with the project's labels remain: {left:?}"
    );
}
