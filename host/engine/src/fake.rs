//! Test doubles for the scheduler's tests: an executor that interprets a tiny
//! command language instead of starting processes, and in-memory store and
//! results sink. They stand in for the real parts only in engine tests;
//! Docker, sled and the results folder have tests of their own.
//!
//! The fake executor reads the stage's `run:` script, one command a line:
//! `echo TEXT`, `err TEXT` (stderr), `env NAME` (prints a variable),
//! `sleep MS`, `exit CODE`, `oom`, `fail-start MESSAGE`, `output KEY=VALUE`,
//! `artifact NAME TEXT`, `write PATH TEXT` (a file of the workspace),
//! `cat PATH` (prints a file of the workspace), `flood BYTES` (prints that
//! many bytes), `rmlog` (removes the stage's live log file, as a full or
//! failing disk would lose it), `first N COMMAND` (runs COMMAND the first
//! N times the stage reaches this line — for retries; the count lives in
//! the workspace), `lost MESSAGE` (the executor lost the stage: an
//! executor error). It works on the real
//! [`LocalWorkspace`]: `out/` files, captures and private folders are the
//! engine's own.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use sentinel_api::{IndexPage, RunDoc, RunId, RunSummary, StageDoc, StageName, keys};
use tokio_util::sync::CancellationToken;

use crate::error::ExecError;
use crate::exec::{Chunk, Executor, Outcome, RunContext, StageJob, StageReport, Stream, Work};
use crate::lease::Lease;
use crate::ports::{Event, KeptOutputs, ResultsSink, StorageError, Store};

/// A run document for tests: a local run of pipeline `p` in `status`.
pub fn run_doc(id: &RunId, status: sentinel_api::RunStatus) -> RunDoc {
    RunDoc {
        schema: sentinel_api::SCHEMA_VERSION,
        id: id.clone(),
        pipeline: "p".into(),
        status,
        reason: None,
        trigger: sentinel_api::Trigger {
            kind: sentinel_api::TriggerKind::Local,
            by: None,
        },
        git: None,
        created: chrono::Utc::now(),
        started: None,
        finished: None,
        duration_ms: None,
        stages: vec![],
        sentinel: "0".into(),
        from_run: None,
        deploy: None,
        upstream: None,
        pull_request: None,
    }
}

/// An executor that interprets the fake command language.
#[derive(Debug, Default)]
pub struct FakeExecutor {
    running: AtomicUsize,
    /// The most stages that ran at once.
    pub max_running: AtomicUsize,
    /// Stage names in the order they started.
    pub started: Mutex<Vec<String>>,
    /// Runs whose resources were removed.
    pub ended: Mutex<Vec<RunId>>,
    /// When set, `start_run` fails with this message.
    pub fail_start_run: Mutex<Option<String>>,
}

#[async_trait]
impl Executor for FakeExecutor {
    async fn start_run(&self, _ctx: &RunContext) -> Result<(), ExecError> {
        match self.fail_start_run.lock().unwrap().clone() {
            Some(m) => Err(ExecError::said(crate::ErrorKind::Permanent, m)),
            None => Ok(()),
        }
    }

    async fn run_stage(&self, job: StageJob, stop: CancellationToken) -> StageReport {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_running.fetch_max(now, Ordering::SeqCst);
        self.started.lock().unwrap().push(job.stage.to_string());
        let report = self.run_local(&job, &stop).await;
        self.running.fetch_sub(1, Ordering::SeqCst);
        report
    }

    async fn end_run(&self, run_id: &RunId) {
        self.ended.lock().unwrap().push(run_id.clone());
    }

    async fn reap(&self) -> usize {
        0
    }
}

impl FakeExecutor {
    /// Runs a job on its local workspace, as a local executor does.
    async fn run_local(&self, job: &StageJob, stop: &CancellationToken) -> StageReport {
        let Some(ws) = job.workspace.local() else {
            return StageReport::of(Outcome::StartFailed(
                "the fake executor needs a local workspace".into(),
            ));
        };
        if let Err(e) = ws.write_outputs(&job.inputs.outputs) {
            return StageReport::of(Outcome::StartFailed(format!("out/: {e}")));
        }
        let private = match ws.container_private(&job.stage, "") {
            Ok(p) => p,
            Err(e) => return StageReport::of(Outcome::StartFailed(e.to_string())),
        };
        let since = job.capture.as_ref().and_then(|_| ws.mark().ok());
        let outcome = interpret(job, &private, ws, stop).await;
        let (outputs, artifacts) = ws.take_private(&private, false);
        let files = match (&job.capture, since) {
            (Some(to), Some(t)) => ws.capture(t, to).ok().flatten(),
            _ => None,
        };
        StageReport {
            outcome,
            image_id: Some("sha256:fake".into()),
            outputs,
            artifacts,
            files,
            warnings: Vec::new(),
            steps: Vec::new(),
        }
    }
}

async fn interpret(
    job: &StageJob,
    private: &Path,
    ws: &crate::workspace::LocalWorkspace,
    stop: &CancellationToken,
) -> Outcome {
    let workspace = &ws.dir;
    let script = match &job.work {
        Work::Container(c) => c.script.clone(),
        Work::Job(j) => j
            .steps
            .iter()
            .map(|s| match &s.run {
                crate::exec::JobStepRun::Script(script) => script.as_str(),
                crate::exec::JobStepRun::Wasm { .. } => "fail-start the fake executor runs no step",
            })
            .collect::<Vec<_>>()
            .join("\n"),
        Work::Step(s) => format!("fail-start the fake executor runs no step ({})", s.name),
        Work::Build(_) => "fail-start the fake executor builds no image".to_string(),
    };
    let send = |stream, text: String| {
        let log = job.log.clone();
        async move {
            let _ = log
                .send(Chunk {
                    stream,
                    bytes: text.into_bytes(),
                })
                .await;
        }
    };
    let in_ws = |p: &str| -> PathBuf { workspace.join(p) };
    for (n, line) in script.lines().enumerate() {
        let (mut cmd, mut arg) = line.trim().split_once(' ').unwrap_or((line.trim(), ""));
        if cmd == "first" {
            let (times, rest) = arg.split_once(' ').unwrap_or((arg, ""));
            let counter = in_ws(&format!(".first-{}-{n}", job.stage));
            let seen: u32 = std::fs::read_to_string(&counter)
                .ok()
                .and_then(|t| t.trim().parse().ok())
                .unwrap_or(0);
            let _ = std::fs::write(&counter, (seen + 1).to_string());
            if seen >= times.parse().unwrap_or(0) {
                continue;
            }
            (cmd, arg) = rest.split_once(' ').unwrap_or((rest, ""));
        }
        match cmd {
            "" => {}
            "echo" => send(Stream::Stdout, format!("{arg}\n")).await,
            "err" => send(Stream::Stderr, format!("{arg}\n")).await,
            "env" => {
                let v = job
                    .env
                    .iter()
                    .rev()
                    .find(|v| v.name == arg)
                    .map(|v| v.value.clone())
                    .unwrap_or_default();
                send(Stream::Stdout, format!("{v}\n")).await;
            }
            "sleep" => {
                let ms = arg.parse().unwrap_or(0);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(ms)) => {}
                    _ = stop.cancelled() => return Outcome::Stopped,
                }
            }
            "exit" => {
                return Outcome::Exited {
                    code: arg.parse().unwrap_or(1),
                };
            }
            "oom" => return Outcome::OomKilled,
            "fail-start" => return Outcome::StartFailed(arg.to_string()),
            "lost" => return Outcome::Error(arg.to_string()),
            "output" => {
                let path = private.join("output");
                let mut text = std::fs::read_to_string(&path).unwrap_or_default();
                text.push_str(arg);
                text.push('\n');
                if std::fs::write(&path, text).is_err() {
                    return Outcome::Error("cannot write the output file".into());
                }
            }
            "artifact" => {
                let (name, text) = arg.split_once(' ').unwrap_or((arg, ""));
                if std::fs::write(private.join("artifacts").join(name), text).is_err() {
                    return Outcome::Error("cannot write an artifact".into());
                }
            }
            "write" => {
                let (path, text) = arg.split_once(' ').unwrap_or((arg, ""));
                let target = in_ws(path);
                if let Some(parent) = target.parent() {
                    let _ = std::fs::create_dir_all(parent);
                }
                if std::fs::write(target, text).is_err() {
                    return Outcome::Error(format!("cannot write {path}"));
                }
            }
            "flood" => {
                let n: usize = arg.parse().unwrap_or(0);
                send(Stream::Stdout, "x".repeat(n) + "\n").await;
            }
            "rmlog" => {
                // Let the log writer catch up, then take its file away.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let file = ws.root.join("logs").join(format!("{}.log", job.stage));
                if std::fs::remove_file(&file).is_err() {
                    return Outcome::Error(format!("rmlog: no {}", file.display()));
                }
            }
            "cat" => match std::fs::read_to_string(in_ws(arg)) {
                Ok(text) => send(Stream::Stdout, text).await,
                Err(e) => {
                    send(Stream::Stderr, format!("cat {arg}: {e}\n")).await;
                    return Outcome::Exited { code: 1 };
                }
            },
            other => {
                return Outcome::StartFailed(format!("fake executor: unknown command `{other}`"));
            }
        }
        if stop.is_cancelled() {
            return Outcome::Stopped;
        }
    }
    Outcome::Exited { code: 0 }
}

/// An in-memory store.
#[derive(Debug, Default)]
pub struct MemStore {
    runs: Mutex<BTreeMap<RunId, RunDoc>>,
    stages: Mutex<BTreeMap<(RunId, StageName), StageDoc>>,
    events: Mutex<BTreeMap<RunId, Vec<Event>>>,
    leases: Mutex<BTreeMap<RunId, Lease>>,
    kept: Mutex<BTreeMap<(RunId, StageName), KeptOutputs>>,
}

#[async_trait]
impl Store for MemStore {
    async fn put_run(&self, run: &RunDoc, _durable: bool) -> Result<(), StorageError> {
        self.runs
            .lock()
            .unwrap()
            .insert(run.id.clone(), run.clone());
        Ok(())
    }
    async fn end_run(&self, run: &RunDoc, event: &Event) -> Result<(), StorageError> {
        let mut runs = self.runs.lock().unwrap();
        let mut events = self.events.lock().unwrap();
        runs.insert(run.id.clone(), run.clone());
        events
            .entry(run.id.clone())
            .or_default()
            .push(event.clone());
        Ok(())
    }
    async fn put_stage(&self, stage: &StageDoc) -> Result<(), StorageError> {
        self.stages
            .lock()
            .unwrap()
            .insert((stage.run_id.clone(), stage.name.clone()), stage.clone());
        Ok(())
    }
    async fn append_event(&self, run: &RunId, event: &Event) -> Result<(), StorageError> {
        self.events
            .lock()
            .unwrap()
            .entry(run.clone())
            .or_default()
            .push(event.clone());
        Ok(())
    }
    async fn get_run(&self, id: &RunId) -> Result<Option<RunDoc>, StorageError> {
        Ok(self.runs.lock().unwrap().get(id).cloned())
    }
    async fn get_stages(&self, id: &RunId) -> Result<Vec<StageDoc>, StorageError> {
        Ok(self
            .stages
            .lock()
            .unwrap()
            .iter()
            .filter(|((r, _), _)| r == id)
            .map(|(_, s)| s.clone())
            .collect())
    }
    async fn get_events(&self, id: &RunId) -> Result<Vec<Event>, StorageError> {
        Ok(self
            .events
            .lock()
            .unwrap()
            .get(id)
            .cloned()
            .unwrap_or_default())
    }
    async fn list_runs(&self, limit: usize) -> Result<Vec<RunDoc>, StorageError> {
        self.list_runs_before(None, limit).await
    }
    async fn list_runs_before(
        &self,
        before: Option<&RunId>,
        limit: usize,
    ) -> Result<Vec<RunDoc>, StorageError> {
        Ok(self
            .runs
            .lock()
            .unwrap()
            .values()
            .rev()
            .filter(|r| before.is_none_or(|b| r.id < *b))
            .take(limit)
            .cloned()
            .collect())
    }
    async fn delete_run(&self, id: &RunId) -> Result<(), StorageError> {
        self.runs.lock().unwrap().remove(id);
        self.stages.lock().unwrap().retain(|(r, _), _| r != id);
        self.events.lock().unwrap().remove(id);
        self.leases.lock().unwrap().remove(id);
        self.kept.lock().unwrap().retain(|(r, _), _| r != id);
        Ok(())
    }
    async fn open_runs(&self) -> Result<Vec<RunDoc>, StorageError> {
        Ok(self
            .runs
            .lock()
            .unwrap()
            .values()
            .filter(|r| !r.status.is_final())
            .cloned()
            .collect())
    }
    async fn keep_outputs(
        &self,
        run: &RunId,
        stage: &StageName,
        kept: &KeptOutputs,
    ) -> Result<(), StorageError> {
        self.kept
            .lock()
            .unwrap()
            .insert((run.clone(), stage.clone()), kept.clone());
        Ok(())
    }
    async fn kept_outputs(
        &self,
        run: &RunId,
        stage: &StageName,
    ) -> Result<Option<KeptOutputs>, StorageError> {
        Ok(self
            .kept
            .lock()
            .unwrap()
            .get(&(run.clone(), stage.clone()))
            .cloned())
    }
    async fn put_lease(&self, lease: &Lease) -> Result<(), StorageError> {
        self.leases
            .lock()
            .unwrap()
            .insert(lease.run_id.clone(), lease.clone());
        Ok(())
    }
    async fn remove_lease(&self, run: &RunId) -> Result<(), StorageError> {
        self.leases.lock().unwrap().remove(run);
        Ok(())
    }
    async fn leases(&self) -> Result<Vec<Lease>, StorageError> {
        Ok(self.leases.lock().unwrap().values().cloned().collect())
    }
}

/// An in-memory results sink that remembers the order of its writes.
#[derive(Debug, Default)]
pub struct MemSink {
    pub objects: Mutex<BTreeMap<String, Vec<u8>>>,
    /// Keys in the order they were written.
    pub writes: Mutex<Vec<String>>,
    index: Mutex<Vec<RunSummary>>,
    /// While set, every write fails as if the sink could not be reached.
    pub away: std::sync::atomic::AtomicBool,
    /// Runs whose every write is refused for good (as a bucket refuses a
    /// request it will never accept).
    pub refused: Mutex<Vec<RunId>>,
}

impl MemSink {
    fn put(&self, key: String, bytes: Vec<u8>) -> Result<(), StorageError> {
        self.reachable()?;
        if self
            .refused
            .lock()
            .unwrap()
            .iter()
            .any(|r| key.contains(r.as_str()))
        {
            return Err(StorageError::permanent(
                format!("put {key}"),
                "403 Forbidden",
            ));
        }
        self.writes.lock().unwrap().push(key.clone());
        self.objects.lock().unwrap().insert(key, bytes);
        Ok(())
    }

    fn reachable(&self) -> Result<(), StorageError> {
        if self.away.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StorageError::transient("put", "the sink cannot be reached"));
        }
        Ok(())
    }

    fn get<T: serde::de::DeserializeOwned>(&self, key: &str) -> Option<T> {
        self.object(key)
            .and_then(|b| serde_json::from_slice(&b).ok())
    }

    fn object(&self, key: &str) -> Option<Vec<u8>> {
        self.objects.lock().unwrap().get(key).cloned()
    }
}

#[async_trait]
impl ResultsSink for MemSink {
    async fn put_log(
        &self,
        run: &RunId,
        stage: &StageName,
        attempt: Option<u32>,
        log: &crate::log::LogBody,
    ) -> Result<String, StorageError> {
        let bytes = match log {
            crate::log::LogBody::File(f) => {
                std::fs::read(f).map_err(|e| StorageError::io("read log", e))?
            }
            crate::log::LogBody::Memory(b) => b.clone(),
        };
        self.put(keys::attempt_log(run, stage, attempt), bytes)?;
        Ok(keys::log_name(stage, attempt))
    }
    async fn put_artifacts(
        &self,
        run: &RunId,
        stage: &StageName,
        dir: &Path,
    ) -> Result<Option<String>, StorageError> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map_err(|e| StorageError::io("read artifacts", e))?
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        if names.is_empty() {
            return Ok(None);
        }
        names.sort();
        self.put(
            keys::stage_artifacts(run, stage),
            names.join("\n").into_bytes(),
        )?;
        Ok(Some(format!("{stage}.zip")))
    }
    async fn put_stage(&self, doc: &StageDoc) -> Result<(), StorageError> {
        self.put(
            keys::stage_doc(&doc.run_id, &doc.name),
            serde_json::to_vec(doc).unwrap_or_default(),
        )
    }
    async fn put_run(&self, doc: &RunDoc) -> Result<(), StorageError> {
        self.put(
            keys::run_doc(&doc.id),
            serde_json::to_vec(doc).unwrap_or_default(),
        )
    }
    async fn update_index(&self, summary: &RunSummary) -> Result<(), StorageError> {
        self.reachable()?;
        if self.refused.lock().unwrap().contains(&summary.id) {
            return Err(StorageError::permanent("update the index", "403 Forbidden"));
        }
        let mut index = self.index.lock().unwrap();
        RunSummary::upsert(&mut index, summary.clone());
        let page = IndexPage {
            schema: 1,
            page: 0,
            pages: 1,
            next: None,
            runs: index.clone(),
        };
        drop(index);
        self.put(
            keys::index_page(0),
            serde_json::to_vec(&page).unwrap_or_default(),
        )
    }
    async fn remove_from_index(&self, run: &RunId) -> Result<(), StorageError> {
        self.reachable()?;
        self.index.lock().unwrap().retain(|r| &r.id != run);
        Ok(())
    }
    async fn remove_run(&self, run: &RunId) -> Result<u64, StorageError> {
        self.reachable()?;
        let prefix = format!("{}/", keys::run_dir(run));
        let mut objects = self.objects.lock().unwrap();
        let before = objects.len();
        objects.retain(|k, _| !k.starts_with(&prefix));
        Ok((before - objects.len()) as u64)
    }
    async fn get_run(&self, run: &RunId) -> Result<Option<RunDoc>, StorageError> {
        Ok(self.get(&keys::run_doc(run)))
    }
    async fn get_stage(
        &self,
        run: &RunId,
        stage: &StageName,
    ) -> Result<Option<StageDoc>, StorageError> {
        Ok(self.get(&keys::stage_doc(run, stage)))
    }
    async fn get_log(
        &self,
        run: &RunId,
        stage: &StageName,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.object(&keys::stage_log(run, stage)))
    }
    async fn get_artifacts(
        &self,
        run: &RunId,
        stage: &StageName,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.object(&keys::stage_artifacts(run, stage)))
    }
    async fn list_index(&self, limit: usize) -> Result<Vec<RunSummary>, StorageError> {
        Ok(self
            .index
            .lock()
            .unwrap()
            .iter()
            .take(limit)
            .cloned()
            .collect())
    }
    fn location(&self) -> String {
        "memory".into()
    }
}
