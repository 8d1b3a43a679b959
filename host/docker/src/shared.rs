//! Container stages with `reuse: true`: one warm container per run and
//! per image, user, limits and network, in which an agent shell runs each
//! stage as its own process when told (`run <stage>` on its standard input;
//! several at once), saying `end <stage> <code>` when it ends. A stage's
//! files (its script, its variables — removed as soon as its shell has
//! read them —, its output streams) are in its private folder, seen in the
//! container at `/sentinel-stages/<stage>`; `$SENTINEL_OUTPUT`,
//! `$SENTINEL_ARTIFACTS` and `$SENTINEL_CACHE_DIR` point there. Stopping a
//! stage kills the processes that carry its `SENTINEL_STAGE`. The stages
//! share the container's file system outside the workspace, its memory,
//! CPU and process limits, and its OOM killer.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use sentinel_api::RunId;
use sentinel_engine::exec::{
    Chunk, Inputs, Outcome, PRIVATE_MOUNT, StageJob, StageReport, Stream, Var, Work, env_file,
};
use sentinel_pipeline::Limits;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Mutex, OnceCell, oneshot};
use tokio_util::sync::CancellationToken;

use crate::DockerExecutor;
use crate::container::{OOM_COUNT, Spec, create, report, write_new};

/// Where a shared container sees the run's stage folders.
const STAGES_MOUNT: &str = "/sentinel-stages";

/// The agent: runs each stage in the background, says when it ended (and
/// how many OOM kills the container saw meanwhile), kills a stage's
/// processes when told.
fn agent() -> String {
    format!(
        r#"{OOM_COUNT}
run() {{
  d={STAGES_MOUNT}/$1
  (
    b=$(ooms)
    (
      cd /workspace || exit 1
      . "$d/.env" || exit 1
      rm -f "$d/.env"
      exec </dev/null >>"$d/.out" 2>>"$d/.err"
      sh $(cat "$d/.flags") "$(cat "$d/.script")"
    )
    rc=$?
    if [ "$rc" -ne 0 ]; then a=$(ooms); [ "$a" = "$b" ] || echo "$a $b" > "$d/.oom"; fi
    echo "end $1 $rc"
  ) &
}}
stop() {{
  for p in /proc/[0-9]*; do
    if tr '\0' '\n' < "$p/environ" 2>/dev/null | grep -qx "SENTINEL_STAGE=$1"; then kill -9 "${{p#/proc/}}" 2>/dev/null; fi
  done
}}
while read -r cmd name; do
  case "$cmd" in
    run) run "$name" ;;
    kill) stop "$name" ;;
  esac
done
"#
    )
}

/// A run's shared container.
pub(crate) struct Shared {
    id: String,
    image_id: String,
    input: Mutex<Pin<Box<dyn AsyncWrite + Send>>>,
    /// Stages running, by name: told their exit code (or why there is none).
    waiters: std::sync::Mutex<HashMap<String, oneshot::Sender<Result<i64, String>>>>,
    alive: AtomicBool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("id", &self.id).finish()
    }
}

type Cell = Arc<OnceCell<Option<Arc<Shared>>>>;

/// The shared containers, by run and by what they are made of.
pub(crate) type SharedMap = Arc<Mutex<HashMap<(RunId, String), Cell>>>;

/// What containers may be shared: the same image, user, limits and network.
fn key(image: &str, user: &str, l: &Limits) -> String {
    format!(
        "{image}|{user}|{}|{:?}|{}|{}",
        l.memory,
        l.cpus,
        l.pids,
        l.network.as_str()
    )
}

/// True when a stage runs in a shared container.
pub(crate) fn applies(job: &StageJob) -> bool {
    job.limits.reuse
        && matches!(job.work, Work::Container(_))
        && job.inputs.volumes.iter().all(|v| v.volume.path.is_none())
        && job.workspace.local().is_some()
}

/// The run's shared container for `job`, made (once) when there is none
/// or the last one died.
pub(crate) async fn get(ex: &DockerExecutor, job: &StageJob) -> Result<Arc<Shared>, String> {
    let Work::Container(action) = &job.work else {
        return Err("not a container stage".into());
    };
    let k = (
        job.run_id.clone(),
        key(&action.image, &job.user, &job.limits),
    );
    let cell = {
        let mut map = ex.shared.lock().await;
        let cell = map.entry(k.clone()).or_default();
        if cell
            .get()
            .is_some_and(|s| s.as_ref().is_none_or(|s| !s.alive.load(Ordering::SeqCst)))
        {
            *cell = Cell::default();
        }
        cell.clone()
    };
    cell.get_or_init(|| make(ex, job, k.1.clone()))
        .await
        .clone()
        .ok_or_else(|| {
            "the run's shared container could not be started (see the server's log)".to_string()
        })
}

async fn make(ex: &DockerExecutor, job: &StageJob, key: String) -> Option<Arc<Shared>> {
    let Work::Container(action) = &job.work else {
        return None;
    };
    let ws = job.workspace.local()?;
    let digest = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        format!("{:08x}", h.finish() as u32)
    };
    let name: sentinel_api::StageName = format!("shared-{digest}").parse().ok()?;
    let (log, _) = tokio::sync::mpsc::channel(1);
    // The container's own job: no variable (each stage brings its own).
    let own = StageJob {
        stage: name,
        env: Vec::new(),
        inputs: Inputs::default(),
        capture: None,
        log,
        ..job.clone()
    };
    let spec = Spec {
        image: action.image.clone(),
        entrypoint: vec!["sh".into(), "-c".into(), agent()],
        cmd: Vec::new(),
        stdin: true,
        binds: vec![format!("{}:{STAGES_MOUNT}:rw", ws.stages.display())],
    };
    let created = match create(ex, &own, ws, spec).await {
        Ok(c) => c,
        Err(r) => {
            tracing::warn!("the shared container could not be made: {:?}", r.outcome);
            return None;
        }
    };
    let attach = crate::container::attach_options(true);
    let attached = match ex.docker.attach_container(&created.id, Some(attach)).await {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!("cannot attach to the shared container: {e}");
            return None;
        }
    };
    if let Err(e) = ex.docker.start_container(&created.id, None).await {
        tracing::warn!("cannot start the shared container: {e}");
        return None;
    }
    let shared = Arc::new(Shared {
        id: created.id,
        image_id: created.image_id,
        input: Mutex::new(attached.input),
        waiters: Default::default(),
        alive: AtomicBool::new(true),
    });
    let reader = shared.clone();
    let mut output = attached.output;
    tokio::spawn(async move {
        let mut line = Vec::new();
        while let Some(item) = output.next().await {
            match item {
                Ok(bollard::container::LogOutput::StdOut { message }) => {
                    for b in message.iter() {
                        if *b == b'\n' {
                            reader.ended(&String::from_utf8_lossy(&line));
                            line.clear();
                        } else {
                            line.push(*b);
                        }
                    }
                }
                Ok(other) => tracing::debug!("shared container: {other}"),
                Err(e) => {
                    tracing::debug!("shared container output ended: {e}");
                    break;
                }
            }
        }
        reader.alive.store(false, Ordering::SeqCst);
        let waiters: Vec<_> = reader
            .waiters
            .lock()
            .map(|mut w| w.drain().collect())
            .unwrap_or_default();
        for (_, w) in waiters {
            let _ = w.send(Err("the shared container ended while the stage ran".into()));
        }
    });
    Some(shared)
}

impl Shared {
    /// `end <stage> <code>` from the agent.
    fn ended(&self, line: &str) {
        let mut parts = line.split_whitespace();
        let (Some("end"), Some(stage), Some(code)) = (parts.next(), parts.next(), parts.next())
        else {
            return;
        };
        let code = code.parse::<i64>().unwrap_or(-1);
        if let Some(w) = self.waiters.lock().ok().and_then(|mut w| w.remove(stage)) {
            let _ = w.send(Ok(code));
        }
    }

    async fn say(&self, line: String) -> std::io::Result<()> {
        let mut input = self.input.lock().await;
        input.write_all(line.as_bytes()).await?;
        input.flush().await
    }
}

/// A stage's variables for the shared container: its private folder is
/// `/sentinel-stages/<stage>`, not `/sentinel`. (`HOME` is the container's
/// own `/tmp` unless the stage sets it, as for a container of its own.)
fn vars(job: &StageJob) -> Vec<Var> {
    let here = format!("{STAGES_MOUNT}/{}", job.stage);
    job.env
        .iter()
        .map(|v| {
            let mut v = v.clone();
            if v.name.starts_with("SENTINEL_")
                && (v.value == PRIVATE_MOUNT || v.value.starts_with(&format!("{PRIVATE_MOUNT}/")))
            {
                v.value = format!("{here}{}", &v.value[PRIVATE_MOUNT.len()..]);
            }
            v
        })
        .collect()
}

/// Writes a stage's files into its private folder, owned by its user.
fn lay_out(private: &Path, job: &StageJob, flags: &str, script: &str) -> std::io::Result<()> {
    let write = |name: &str, body: &[u8], mode: u32| -> std::io::Result<PathBuf> {
        let p = private.join(name);
        write_new(&p, body, mode)?;
        Ok(p)
    };
    let files = [
        write(".env", env_file(&vars(job)).as_bytes(), 0o600)?,
        write(".flags", flags.as_bytes(), 0o644)?,
        write(".script", script.as_bytes(), 0o644)?,
        write(".out", b"", 0o644)?,
        write(".err", b"", 0o644)?,
    ];
    for f in &files {
        sentinel_engine::workspace::hand_over(f, &job.user)?;
    }
    Ok(())
}

/// Removes a stage's files from its private folder.
fn clean(private: &Path) {
    for name in [".env", ".flags", ".script", ".out", ".err", ".oom"] {
        let _ = std::fs::remove_file(private.join(name));
    }
}

/// Streams what a stage writes to its two files until `done`, then what is left.
async fn tail(private: PathBuf, log: tokio::sync::mpsc::Sender<Chunk>, done: CancellationToken) {
    let open = |n: &str| tokio::fs::File::open(private.join(n));
    let (Ok(mut out), Ok(mut err)) = (open(".out").await, open(".err").await) else {
        return;
    };
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let last = done.is_cancelled();
        let mut any = false;
        for (f, stream) in [(&mut out, Stream::Stdout), (&mut err, Stream::Stderr)] {
            loop {
                let n = f.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                any = true;
                if log
                    .send(Chunk {
                        stream,
                        bytes: buf[..n].to_vec(),
                    })
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
        if last && !any {
            return;
        }
        if !any {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                _ = done.cancelled() => {}
            }
        }
    }
}

/// Runs a container stage in the run's shared container.
pub(crate) async fn run(
    ex: &DockerExecutor,
    job: StageJob,
    stop: CancellationToken,
) -> StageReport {
    let Work::Container(action) = &job.work else {
        return StageReport::of(Outcome::StartFailed("not a container stage".into()));
    };
    let Some(ws) = job.workspace.local() else {
        return StageReport::of(Outcome::StartFailed(
            "the workspace is not on this machine".into(),
        ));
    };
    let shared = match get(ex, &job).await {
        Ok(s) => s,
        Err(e) => return StageReport::of(Outcome::StartFailed(e)),
    };
    let failed = |e: String| StageReport {
        outcome: Outcome::StartFailed(e),
        image_id: Some(shared.image_id.clone()),
        ..StageReport::default()
    };
    if let Err(e) = ws.write_outputs(&job.inputs.outputs) {
        return failed(format!("cannot write out/: {e}"));
    }
    let private = match ws.container_private(&job.stage, &job.user) {
        Ok(p) => p,
        Err(e) => return failed(format!("cannot prepare the stage's folder: {e}")),
    };
    if let Err(e) = lay_out(
        &private,
        &job,
        &action.shell.flags().join(" "),
        &action.script,
    ) {
        clean(&private);
        return failed(format!("cannot write the stage's files: {e}"));
    }
    let since = job.capture.as_ref().and_then(|_| ws.mark().ok());
    let (tx, rx) = oneshot::channel();
    if let Ok(mut w) = shared.waiters.lock() {
        w.insert(job.stage.to_string(), tx);
    }
    let done = CancellationToken::new();
    let tailer = tokio::spawn(tail(private.clone(), job.log.clone(), done.clone()));
    if let Err(e) = shared.say(format!("run {}\n", job.stage)).await {
        done.cancel();
        let _ = tailer.await;
        clean(&private);
        return failed(format!("cannot reach the shared container: {e}"));
    }
    if job.limits.idle_timeout.is_some() {
        crate::process::say_started(&job.log).await;
    }
    let mut rx = rx;
    let ended = tokio::select! {
        r = &mut rx => Some(r),
        _ = stop.cancelled() => None,
    };
    let outcome = match ended {
        Some(Ok(Ok(code))) => outcome(&private, code),
        Some(Ok(Err(e))) => Outcome::Error(e),
        Some(Err(_)) => Outcome::Error("the shared container's agent went away".into()),
        None => {
            let _ = shared.say(format!("kill {}\n", job.stage)).await;
            let _ = tokio::time::timeout(Duration::from_secs(10), rx).await;
            Outcome::Stopped
        }
    };
    done.cancel();
    let _ = tailer.await;
    clean(&private);
    report(ws, &job, &private, since, outcome, shared.image_id.clone()).await
}

/// How a stage of the shared container ended: the OOM killer when the
/// container counted an OOM kill while it ran and it failed.
fn outcome(private: &Path, code: i64) -> Outcome {
    let oom = std::fs::metadata(private.join(".oom")).is_ok();
    match code {
        0 => Outcome::Exited { code },
        _ if oom => Outcome::OomKilled,
        137 => Outcome::Signalled { code, signal: 9 },
        _ => Outcome::Exited { code },
    }
}

/// Forgets a run's shared containers (the run's end removes them by label).
pub(crate) async fn end_run(ex: &DockerExecutor, run: &RunId) {
    ex.shared.lock().await.retain(|(r, _), _| r != run);
}
