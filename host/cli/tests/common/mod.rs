//! Helpers shared by the end-to-end tests: a real Docker engine, a real sled
//! database and a real results folder, in temporary folders.

#![allow(dead_code)]

pub mod browser;
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
    let engine = Engine {
        exec: Arc::new(match opts.docker {
            Some(d) => d,
            None => docker().await,
        }),
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

/// Containers and networks that carry the project's labels, optionally of one run.
pub async fn leftovers(run: Option<&str>) -> Vec<String> {
    let out = std::process::Command::new("docker")
        .args(["ps", "-a", "--format", "{{.Names}} {{.Labels}}"])
        .output()
        .expect("docker CLI");
    let nets = std::process::Command::new("docker")
        .args(["network", "ls", "--format", "{{.Name}} {{.Labels}}"])
        .output()
        .expect("docker CLI");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&nets.stdout);
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
