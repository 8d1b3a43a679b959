//! The WebAssembly step runtime: WASI 0.2 command components in wasmtime,
//! sandboxed deny-by-default.
//!
//! A step gets exactly what its manifest declares and nothing else: an
//! environment of its namespaced settings and the `SENTINEL_*` context (never
//! the host's variables), the run workspace at `/workspace` read-only or
//! read-write (or not at all), a private `/sentinel` folder for its output
//! file and artifacts, and outgoing HTTP through `wasi:http` to the allowed
//! hosts only; no sockets (TCP, UDP and name lookups are denied outright,
//! not left to an address check). Its wall time is bounded by epoch
//! interruption, its memory by store limits, its output by a cap. It sees
//! the workspace through the run's [`Workspace`] handle: the folder itself
//! when the workspace is local, a copy otherwise.
//!
//! One [`wasmtime::Engine`] serves every step; components are compiled once
//! and cached on disk by their SHA-256 and the engine's compatibility hash,
//! and their `InstancePre` is kept in memory, so a cached step starts in
//! tens of microseconds.

mod http;
pub mod inspect;
mod output;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use sha2::Digest;
use tokio_util::sync::CancellationToken;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter, Store,
    UpdateDeadline,
};
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use sentinel_api::RunId;
use sentinel_engine::exec::{
    Chunk, ExecError, Executor, Outcome, PRIVATE_MOUNT, RunContext, StageJob, StageReport,
    StepWork, Stream, View, WORKSPACE_MOUNT, Work,
};
use sentinel_pipeline::WorkspaceAccess;

pub use http::allowed as http_allowed;

/// How many socket addresses a step's socket ever got as far as the address
/// check with (none should: TCP, UDP and name lookups are turned off before
/// any address is looked at). Observed by the sandbox's tests.
static SOCKET_CHECKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// See [`SOCKET_CHECKS`].
pub fn socket_checks() -> u64 {
    SOCKET_CHECKS.load(Ordering::SeqCst)
}

/// Steps that can be instantiated at once (pooling allocator slots).
const POOL_SLOTS: u32 = 64;

/// The largest memory a step may have, whatever its stage's `memory:` says.
pub const MAX_STEP_MEMORY: usize = 4 << 30;

/// How often the epoch advances (the granularity of deadlines and cancel).
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Why the runtime could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the WebAssembly runtime: {0}")]
pub struct SetupError(String);

/// Why a step could not be prepared to run.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PrepareError {
    #[error("cannot read {path}: {message}")]
    Read { path: String, message: String },
    #[error(
        "{path} changed since the pipeline was validated (digest {actual}, expected {expected})"
    )]
    Changed {
        path: String,
        actual: String,
        expected: String,
    },
    #[error("{path} is not a valid component: {message}")]
    Invalid { path: String, message: String },
    #[error("the step imports something Sentinel does not provide: {0}")]
    Imports(String),
    #[error("the component is not a WASI command: {0}")]
    NotCommand(String),
    #[error("the runtime failed: {0}")]
    Runtime(String),
}

struct Limiter {
    memory: usize,
    hit: bool,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let ok = desired <= self.memory;
        self.hit |= !ok;
        Ok(ok)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

struct Host {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    limits: Limiter,
    policy: http::Policy,
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for Host {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.policy,
        }
    }
}

/// The step runtime; cheap to clone.
#[derive(Clone)]
pub struct WasmExecutor {
    engine: Engine,
    linker: Arc<Linker<Host>>,
    cache_dir: PathBuf,
    compat: String,
    pres: Arc<Mutex<HashMap<String, CommandPre<Host>>>>,
    /// One compile per component at a time: a second step of the same
    /// component waits for the first's instead of compiling it again.
    compiling: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

impl std::fmt::Debug for WasmExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmExecutor")
            .field("cache_dir", &self.cache_dir)
            .finish()
    }
}

impl WasmExecutor {
    /// A runtime caching compiled components in `cache_dir`.
    pub fn new(cache_dir: &Path) -> Result<Self, SetupError> {
        let err = |e: &dyn std::fmt::Display| SetupError(e.to_string());
        let mut config = Config::new();
        config.epoch_interruption(true).wasm_component_model(true);
        // Pre-reserved instance slots: no mmap/munmap of linear memories per
        // step, which is what dominates starting small steps concurrently.
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(POOL_SLOTS)
            .total_core_instances(POOL_SLOTS * 4)
            .total_memories(POOL_SLOTS * 2)
            .total_tables(POOL_SLOTS * 4)
            .max_memory_size(MAX_STEP_MEMORY);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(|e| err(&e))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| err(&e))?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(|e| err(&e))?;
        std::fs::create_dir_all(cache_dir).map_err(|e| err(&e))?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        let compat = format!("{:016x}", h.finish());
        // The epoch ticker: deadlines and cancellation are checked at each tick.
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("sentinel-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(|e| err(&e))?;
        Ok(Self {
            engine,
            linker: Arc::new(linker),
            cache_dir: cache_dir.to_path_buf(),
            compat,
            pres: Default::default(),
            compiling: Default::default(),
        })
    }

    /// Compiles (or loads from the cache) and pre-instantiates a step.
    pub async fn prepare(
        &self,
        wasm: &Path,
        digest: &str,
    ) -> Result<CommandPreHandle, PrepareError> {
        let poisoned = |e: &dyn std::fmt::Display| PrepareError::Runtime(e.to_string());
        if let Some(pre) = self.pres.lock().map_err(|e| poisoned(&e))?.get(digest) {
            return Ok(CommandPreHandle(pre.clone()));
        }
        let gate = self
            .compiling
            .lock()
            .map_err(|e| poisoned(&e))?
            .entry(digest.to_string())
            .or_default()
            .clone();
        let _one = gate.lock().await;
        if let Some(pre) = self.pres.lock().map_err(|e| poisoned(&e))?.get(digest) {
            return Ok(CommandPreHandle(pre.clone()));
        }
        let this = self.clone();
        let (wasm, digest) = (wasm.to_path_buf(), digest.to_string());
        tokio::task::spawn_blocking(move || this.prepare_blocking(&wasm, &digest))
            .await
            .map_err(|e| poisoned(&e))?
    }

    fn prepare_blocking(
        &self,
        wasm: &Path,
        digest: &str,
    ) -> Result<CommandPreHandle, PrepareError> {
        let path = wasm.display().to_string();
        let bytes = std::fs::read(wasm).map_err(|e| PrepareError::Read {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let actual = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&bytes)));
        if actual != digest {
            return Err(PrepareError::Changed {
                path,
                actual,
                expected: digest.to_string(),
            });
        }
        let hexd = digest.trim_start_matches("sha256:");
        let cached = self.cache_dir.join(format!("{hexd}-{}.cwasm", self.compat));
        let component = match load_cached(&self.engine, &cached) {
            Some(c) => c,
            None => {
                let c =
                    Component::new(&self.engine, &bytes).map_err(|e| PrepareError::Invalid {
                        path: path.clone(),
                        message: format!("{e:#}"),
                    })?;
                if let Ok(ser) = c.serialize() {
                    let tmp = cached.with_extension(format!("tmp-{}", std::process::id()));
                    if std::fs::write(&tmp, ser).is_ok() {
                        let _ = std::fs::rename(&tmp, &cached);
                    }
                }
                c
            }
        };
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| PrepareError::Imports(format!("{e:#}")))?;
        let pre = CommandPre::new(pre).map_err(|e| PrepareError::NotCommand(format!("{e:#}")))?;
        self.pres
            .lock()
            .map_err(|e| PrepareError::Runtime(e.to_string()))?
            .insert(digest.to_string(), pre.clone());
        Ok(CommandPreHandle(pre))
    }

    /// Runs a prepared step with a job's sandbox.
    #[allow(clippy::too_many_arguments)]
    async fn run_prepared(
        &self,
        pre: CommandPreHandle,
        job: &StageJob,
        step: &StepWork,
        view: Option<&View>,
        private: &Path,
        stop: CancellationToken,
    ) -> Outcome {
        let cap = job.limits.log_limit;
        let stdout = output::LogStream::new(job.log.clone(), Stream::Stdout, cap);
        let stderr = output::LogStream::new(job.log.clone(), Stream::Stderr, cap);
        let mut b = WasiCtx::builder();
        b.envs(&job.env_pairs())
            .args(&[step.name.as_str()])
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            // No sockets at all: denied outright, not left to an address check.
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| {
                SOCKET_CHECKS.fetch_add(1, Ordering::SeqCst);
                Box::pin(async { false })
            });
        let perms = match step.workspace {
            WorkspaceAccess::None => None,
            WorkspaceAccess::Read => Some(FsPerms::ReadOnly),
            WorkspaceAccess::Write => Some(FsPerms::ReadWrite),
        };
        if let (Some(perms), Some(view)) = (perms, view)
            && let Err(e) = b.preopened_dir(&view.dir, WORKSPACE_MOUNT, perms)
        {
            return Outcome::StartFailed(format!("cannot open the workspace for the step: {e:#}"));
        }
        if let Err(e) = b.preopened_dir(private, PRIVATE_MOUNT, FsPerms::ReadWrite) {
            return Outcome::StartFailed(format!("cannot open the step's private folder: {e:#}"));
        }
        let policy = http::Policy {
            allow: step.http.clone(),
            refused: Default::default(),
        };
        let refused = policy.refused.clone();
        let host = Host {
            wasi: b.build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            limits: Limiter {
                memory: job.limits.memory as usize,
                hit: false,
            },
            policy,
        };
        let mut store = Store::new(&self.engine, host);
        store.limiter(|h| &mut h.limits);
        store.set_epoch_deadline(1);
        let watch = stop.clone();
        store.epoch_deadline_callback(move |_| {
            Ok(if watch.is_cancelled() {
                UpdateDeadline::Interrupt
            } else {
                UpdateDeadline::Yield(1)
            })
        });
        let result = async {
            let command = pre.0.instantiate_async(&mut store).await?;
            command.wasi_cli_run().call_run(&mut store).await
        }
        .await;
        let memory_hit = store.data().limits.hit;
        drop(store);
        let note = |line: String| Chunk {
            stream: Stream::Stderr,
            bytes: line.into_bytes(),
        };
        for host in refused.lock().map(|r| r.clone()).unwrap_or_default() {
            let line = format!(
                "[sentinel: HTTP request to {host} refused: not among the step's allowed hosts]\n"
            );
            let _ = job.log.send(note(line)).await;
        }
        for (name, s) in [("stdout", &stdout), ("stderr", &stderr)] {
            let dropped = s.counters.dropped.load(Ordering::Relaxed);
            if dropped > 0 {
                let line =
                    format!("\n[sentinel: {name} cut at {cap} bytes; {dropped} bytes dropped]\n");
                let _ = job.log.send(note(line)).await;
            }
        }
        match result {
            Ok(Ok(())) => Outcome::Exited { code: 0 },
            Ok(Err(())) => Outcome::Exited { code: 1 },
            Err(e) => {
                if let Some(exit) = e.downcast_ref::<I32Exit>() {
                    Outcome::Exited {
                        code: i64::from(exit.0),
                    }
                } else if stop.is_cancelled() {
                    Outcome::Stopped
                } else if memory_hit {
                    Outcome::MemoryLimit
                } else {
                    Outcome::Trap(
                        format!("{e:#}")
                            .lines()
                            .next()
                            .unwrap_or("trap")
                            .to_string(),
                    )
                }
            }
        }
    }
}

/// A pre-instantiated step.
#[derive(Clone)]
pub struct CommandPreHandle(CommandPre<Host>);

impl std::fmt::Debug for CommandPreHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CommandPreHandle")
    }
}

#[allow(unsafe_code)]
fn load_cached(engine: &Engine, path: &Path) -> Option<Component> {
    if !path.is_file() {
        return None;
    }
    // SAFETY: the file was written by `Component::serialize` of this engine
    // configuration (its name carries the component's digest and the
    // engine's compatibility hash) into Sentinel's own cache folder; wasmtime
    // additionally checks the header and refuses a mismatching engine.
    unsafe { Component::deserialize_file(engine, path) }.ok()
}

#[async_trait]
impl Executor for WasmExecutor {
    async fn start_run(&self, _ctx: &RunContext) -> Result<(), ExecError> {
        Ok(())
    }

    async fn run_stage(&self, job: StageJob, stop: CancellationToken) -> StageReport {
        let Work::Step(step) = job.work.clone() else {
            return StageReport::of(Outcome::StartFailed("not a WebAssembly step".into()));
        };
        let pre = match self.prepare(&step.wasm, &step.digest).await {
            Ok(pre) => pre,
            Err(e) => return StageReport::of(Outcome::StartFailed(e.to_string())),
        };
        let local = job.workspace.local();
        // Its private folder: one of the run's (an earlier step's, when left
        // clean), or one of its own beside a workspace elsewhere.
        let own = tempfile::Builder::new().prefix(".sentinel-step-").tempdir();
        let private = match (local, &own) {
            (Some(ws), _) => ws.step_private(&job.stage),
            (None, Ok(dir)) => std::fs::create_dir_all(dir.path().join("artifacts"))
                .map(|()| dir.path().to_path_buf()),
            (None, Err(e)) => Err(std::io::Error::other(e.to_string())),
        };
        let private = match private {
            Ok(p) => p,
            Err(e) => {
                return StageReport::of(Outcome::StartFailed(format!(
                    "cannot prepare the step's private folder: {e}"
                )));
            }
        };
        let write = step.workspace == WorkspaceAccess::Write;
        let view = if step.workspace == WorkspaceAccess::None {
            None
        } else {
            match job.workspace.open_view(write).await {
                Ok(v) => Some(v),
                Err(e) => {
                    return StageReport::of(Outcome::StartFailed(format!(
                        "cannot open the workspace for the step: {e}"
                    )));
                }
            }
        };
        let since = match (&job.capture, local) {
            (Some(_), Some(ws)) if write => ws.mark().ok(),
            _ => None,
        };
        let outcome = self
            .run_prepared(pre, &job, &step, view.as_ref(), &private, stop)
            .await;
        let mut warnings = Vec::new();
        if let Some(view) = view
            && let Err(e) = job.workspace.close_view(view).await
        {
            warnings.push(format!("its changes to the workspace were lost: {e}"));
        }
        let (outputs, artifacts) = match local {
            Some(ws) => ws.take_private(&private, true),
            None => (std::fs::read_to_string(private.join("output")).ok(), None),
        };
        let files = match (&job.capture, since, local) {
            (Some(to), Some(t), Some(ws)) => ws.capture(t, to).ok().flatten(),
            _ => None,
        };
        // The digest is recorded with the step reference; there is no image.
        StageReport {
            outcome,
            image_id: None,
            outputs,
            artifacts,
            files,
            warnings,
            steps: Vec::new(),
        }
    }

    async fn end_run(&self, _run_id: &RunId) {}

    async fn reap(&self) -> usize {
        0
    }
}
