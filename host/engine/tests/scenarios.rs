//! Engine scenarios: each `tests/scenarios/NAME.yaml` is a pipeline run by
//! the real scheduler against the fake executor, with its expectations in
//! an `x-expect:` block (statuses, reasons, order, outputs, masking…).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sentinel_api::{StageDoc, keys};
use sentinel_engine::fake::{FakeExecutor, MemSink, MemStore};
use sentinel_engine::{Engine, EngineConfig, Progress, ProgressFn, RunRequest, Signals};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    run: String,
    #[serde(default)]
    run_reason: Option<String>,
    stages: BTreeMap<String, String>,
    #[serde(default)]
    reasons: BTreeMap<String, String>,
    #[serde(default)]
    failures: BTreeMap<String, String>,
    #[serde(default)]
    exit_codes: BTreeMap<String, i64>,
    #[serde(default)]
    jobs: Option<usize>,
    #[serde(default)]
    max_running: Option<usize>,
    #[serde(default)]
    order: Vec<(String, String)>,
    #[serde(default)]
    outputs: BTreeMap<String, String>,
    #[serde(default)]
    named_outputs: BTreeMap<String, BTreeMap<String, String>>,
    #[serde(default)]
    cancel_after_ms: Option<u64>,
    #[serde(default)]
    abort_after_ms: Option<u64>,
    #[serde(default)]
    secrets: BTreeMap<String, String>,
    #[serde(default)]
    host_env: BTreeMap<String, String>,
    #[serde(default)]
    log_contains: BTreeMap<String, String>,
    /// Values that must appear in no published object.
    #[serde(default)]
    nowhere: Vec<String>,
    #[serde(default)]
    recorded_env: BTreeMap<String, BTreeMap<String, String>>,
    #[serde(default)]
    fail_start_run: Option<String>,
    #[serde(default)]
    artifacts: Vec<String>,
    /// The files in a stage's artifacts zip.
    #[serde(default)]
    artifact_files: BTreeMap<String, Vec<String>>,
    /// Text a stage document's warnings hold.
    #[serde(default)]
    warnings: BTreeMap<String, String>,
    /// Stages whose document failed the secret sweep and was withheld.
    #[serde(default)]
    withheld: Vec<String>,
    /// Values that must appear in no stage document of the store either.
    #[serde(default)]
    store_nowhere: Vec<String>,
    /// Files kept for a re-run, by stage (relative to its kept folder).
    #[serde(default)]
    kept_files: BTreeMap<String, Vec<String>>,
    /// A stage's attempts as `status failure exit_code`, in order (an
    /// empty list: it ran once).
    #[serde(default)]
    attempts: BTreeMap<String, Vec<String>>,
    /// Text each attempt's own log holds, in order.
    #[serde(default)]
    attempt_logs: BTreeMap<String, Vec<String>>,
    /// How many times the executor started each stage.
    #[serde(default)]
    starts: BTreeMap<String, usize>,
}

fn expectations(src: &str) -> Expect {
    let root = sentinel_pipeline::yaml::parse(src, Default::default()).unwrap();
    let node = root
        .get("x-expect")
        .expect("a scenario needs an `x-expect:` block");
    sentinel_pipeline::de::from_node(node)
        .unwrap_or_else(|e| panic!("bad x-expect: {e} at {:?}", e.pos))
}

async fn run_scenario(path: &Path) -> Result<(), String> {
    let src = std::fs::read_to_string(path).unwrap();
    let expect = expectations(&src);
    let plan = sentinel_pipeline::parse_str(&src, &path.display().to_string(), "scenario")
        .map_err(|e| e.to_string())?;
    let state = tempfile::tempdir().unwrap();
    let source = tempfile::tempdir().unwrap();
    std::fs::write(source.path().join("file.txt"), "source").unwrap();
    let exec = Arc::new(FakeExecutor::default());
    *exec.fail_start_run.lock().unwrap() = expect.fail_start_run.clone();
    let sink = Arc::new(MemSink::default());
    let store = Arc::new(MemStore::default());
    let engine = Engine {
        exec: exec.clone(),
        store: store.clone(),
        sink: sink.clone(),
        config: EngineConfig {
            jobs: expect.jobs.unwrap_or(4),
            state_dir: state.path().to_path_buf(),
            keep_workspace: false,
            keep_files: sentinel_engine::EngineConfig::KEEP_FILES,
        },
    };
    let signals = Signals::default();
    for (after, token) in [
        (expect.cancel_after_ms, signals.cancel.clone()),
        (expect.abort_after_ms, signals.abort.clone()),
    ] {
        if let Some(ms) = after {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                token.cancel();
            });
        }
    }
    // Each final stage is announced `Published` once, after its final event,
    // with its document (and log, when it names one) already in the sink.
    let announced: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let progress: ProgressFn = {
        let (sink, announced) = (sink.clone(), announced.clone());
        let run = std::sync::Mutex::new(None);
        let ended = std::sync::Mutex::new(Vec::new());
        Arc::new(move |p| match p {
            Progress::RunStarted { run_id, .. } => *run.lock().unwrap() = Some(run_id),
            Progress::Stage { name, status, .. } if status.is_final() => {
                ended.lock().unwrap().push(name)
            }
            Progress::Published { name } => {
                let run = run.lock().unwrap().clone().unwrap();
                let note = |m: String| announced.lock().unwrap().push(m);
                if !ended.lock().unwrap().contains(&name) {
                    note(format!("{name}: published before its final event"));
                }
                let objects = sink.objects.lock().unwrap();
                match objects.get(&keys::stage_doc(&run, &name)) {
                    None => note(format!("{name}: announced before its document was written")),
                    Some(doc) => {
                        let doc: StageDoc = serde_json::from_slice(doc).unwrap();
                        if doc.log.is_some() && !objects.contains_key(&keys::stage_log(&run, &name))
                        {
                            note(format!("{name}: announced before its log was written"));
                        }
                    }
                }
                note(format!("published {name}"));
            }
            _ => {}
        })
    };
    let req = RunRequest {
        host_env: expect.host_env.clone(),
        secrets: expect.secrets.clone(),
        ..RunRequest::local(plan, source.path().to_path_buf())
    };
    let run = tokio::time::timeout(Duration::from_secs(20), engine.run(req, progress, signals))
        .await
        .map_err(|_| "the run did not finish within 20 s".to_string())?
        .map_err(|e| e.to_string())?;

    let mut errors = Vec::new();
    let mut check = |ok: bool, msg: String| {
        if !ok {
            errors.push(msg);
        }
    };
    let announced = announced.lock().unwrap().clone();
    for note in announced.iter().filter(|n| !n.starts_with("published ")) {
        check(false, note.clone());
    }
    for s in &run.stages {
        let times = announced
            .iter()
            .filter(|n| **n == format!("published {}", s.name))
            .count();
        check(
            times == 1 || !s.status.is_final(),
            format!("{}: announced published {times} times", s.name),
        );
    }
    check(
        run.status.as_str() == expect.run,
        format!(
            "run: expected {}, got {} ({:?})",
            expect.run, run.status, run.reason
        ),
    );
    if let Some(r) = &expect.run_reason {
        check(
            run.reason.as_deref() == Some(r.as_str()),
            format!("run reason: expected {r:?}, got {:?}", run.reason),
        );
    }
    let stage = |name: &str| -> Option<StageDoc> {
        let key = keys::stage_doc(&run.id, &name.parse().unwrap());
        sink.objects
            .lock()
            .unwrap()
            .get(&key)
            .map(|b| serde_json::from_slice(b).unwrap())
    };
    check(
        run.stages.len() == expect.stages.len(),
        format!(
            "expected {} stages, run has {}",
            expect.stages.len(),
            run.stages.len()
        ),
    );
    for (name, status) in &expect.stages {
        let doc = stage(name);
        let got = doc.as_ref().map(|d| d.status.as_str().to_string());
        check(
            got.as_deref() == Some(status.as_str()),
            format!(
                "{name}: expected {status}, got {got:?} ({:?})",
                doc.and_then(|d| d.reason)
            ),
        );
        let entry = run
            .stages
            .iter()
            .find(|e| e.name.as_str() == name)
            .map(|e| e.status.as_str());
        check(
            entry == Some(status.as_str()),
            format!("{name}: run.json says {entry:?}, expected {status}"),
        );
    }
    for (name, reason) in &expect.reasons {
        let got = stage(name).and_then(|d| d.reason).unwrap_or_default();
        check(
            got.contains(reason.as_str()),
            format!("{name}: reason {got:?} lacks {reason:?}"),
        );
    }
    for (name, failure) in &expect.failures {
        let got = stage(name)
            .and_then(|d| d.failure)
            .map(|f| serde_json::to_string(&f).unwrap());
        check(
            got.as_deref() == Some(format!("\"{failure}\"").as_str()),
            format!("{name}: failure {got:?}, expected {failure}"),
        );
    }
    for (name, code) in &expect.exit_codes {
        let got = stage(name).and_then(|d| d.exit_code);
        check(
            got == Some(*code),
            format!("{name}: exit code {got:?}, expected {code}"),
        );
    }
    if let Some(max) = expect.max_running {
        let got = exec.max_running.load(Ordering::SeqCst);
        check(
            got == max,
            format!("at most {max} stages should run at once; {got} did"),
        );
    }
    let started = exec.started.lock().unwrap().clone();
    for (a, b) in &expect.order {
        let pa = started.iter().position(|s| s == a);
        let pb = started.iter().position(|s| s == b);
        check(
            pa.is_some() && pb.is_some() && pa < pb,
            format!("{a} should start before {b}: {started:?}"),
        );
    }
    for (name, out) in &expect.outputs {
        let got = stage(name).and_then(|d| d.output);
        check(
            got.as_deref() == Some(out.as_str()),
            format!("{name}: output {got:?}, expected {out:?}"),
        );
    }
    for (name, outs) in &expect.named_outputs {
        let got = stage(name).map(|d| d.outputs).unwrap_or_default();
        check(
            &got == outs,
            format!("{name}: outputs {got:?}, expected {outs:?}"),
        );
    }
    for (name, text) in &expect.log_contains {
        let log = sink
            .objects
            .lock()
            .unwrap()
            .get(&keys::stage_log(&run.id, &name.parse().unwrap()))
            .cloned()
            .unwrap_or_default();
        let log = String::from_utf8_lossy(&log).replace('\n', "=");
        check(
            log.contains(text.as_str()),
            format!("{name}: log {log:?} lacks {text:?}"),
        );
    }
    for secret in &expect.nowhere {
        for (key, bytes) in sink.objects.lock().unwrap().iter() {
            check(
                !String::from_utf8_lossy(bytes).contains(secret.as_str()),
                format!("{key} holds {secret:?}"),
            );
        }
        let ws = state
            .path()
            .join("runs")
            .join(run.id.as_str())
            .join("workspace/out");
        check(
            !ws.exists(),
            "the run folder should be removed after the run".into(),
        );
    }
    for (name, env) in &expect.recorded_env {
        let got = stage(name).map(|d| d.inputs.env).unwrap_or_default();
        for (k, v) in env {
            check(
                got.get(k) == Some(v),
                format!(
                    "{name}: recorded env {k} = {:?}, expected {v:?}",
                    got.get(k)
                ),
            );
        }
    }
    for (name, files) in &expect.artifact_files {
        let key = keys::stage_artifacts(&run.id, &name.parse().unwrap());
        let listed = sink
            .objects
            .lock()
            .unwrap()
            .get(&key)
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default();
        let got: Vec<&str> = listed.lines().collect();
        check(
            got == files.iter().map(String::as_str).collect::<Vec<_>>(),
            format!("{name}: artifact files {got:?}, expected {files:?}"),
        );
    }
    for (name, text) in &expect.warnings {
        let got = stage(name).map(|d| d.warnings).unwrap_or_default();
        check(
            got.iter().any(|w| w.contains(text.as_str())),
            format!("{name}: warnings {got:?} lack {text:?}"),
        );
    }
    for name in &expect.withheld {
        let doc = stage(name);
        check(
            doc.as_ref().is_some_and(|d| {
                d.warnings.iter().any(|w| w.contains("withheld")) && d.inputs.image.is_none()
            }),
            format!("{name}: expected a withheld document, got {doc:?}"),
        );
    }
    let stored = sentinel_engine::Store::get_stages(store.as_ref(), &run.id)
        .await
        .unwrap();
    for secret in &expect.store_nowhere {
        for doc in &stored {
            check(
                !serde_json::to_string(doc)
                    .unwrap()
                    .contains(secret.as_str()),
                format!("the store's document of {} holds {secret:?}", doc.name),
            );
        }
    }
    for (name, want) in &expect.attempts {
        let got: Vec<String> = stage(name)
            .map(|d| d.attempts)
            .unwrap_or_default()
            .iter()
            .map(|a| {
                let mut s = a.status.as_str().to_string();
                if let Some(f) = a.failure {
                    s += &format!(" {}", serde_json::to_string(&f).unwrap().trim_matches('"'));
                }
                if let Some(c) = a.exit_code {
                    s += &format!(" {c}");
                }
                s
            })
            .collect();
        check(
            &got == want,
            format!("{name}: attempts {got:?}, expected {want:?}"),
        );
    }
    for (name, texts) in &expect.attempt_logs {
        let doc = stage(name).unwrap_or_else(|| panic!("{name} has no document"));
        check(
            doc.attempts.len() == texts.len(),
            format!(
                "{name}: {} attempts, expected {}",
                doc.attempts.len(),
                texts.len()
            ),
        );
        for (a, text) in doc.attempts.iter().zip(texts) {
            let log = a
                .log
                .as_ref()
                .and_then(|k| {
                    sink.objects
                        .lock()
                        .unwrap()
                        .get(&format!("run/{}/{k}", run.id))
                        .cloned()
                })
                .unwrap_or_default();
            let log = String::from_utf8_lossy(&log).replace('\n', "=");
            check(
                log.contains(text.as_str()),
                format!("{name}: attempt {} log {log:?} lacks {text:?}", a.attempt),
            );
        }
    }
    for (name, want) in &expect.starts {
        let got = started.iter().filter(|s| *s == name).count();
        check(
            got == *want,
            format!("{name}: started {got} times, expected {want}"),
        );
    }
    for (name, files) in &expect.kept_files {
        let dir = state.path().join("kept").join(run.id.as_str()).join(name);
        for f in files {
            check(
                dir.join(f).is_file(),
                format!("{name}: {f} is not kept in {}", dir.display()),
            );
        }
    }
    for name in &expect.artifacts {
        let got = stage(name).and_then(|d| d.artifacts);
        check(
            got.as_deref() == Some(format!("{name}.zip").as_str()),
            format!("{name}: artifacts {got:?}"),
        );
    }
    for (name, _) in expect
        .stages
        .iter()
        .filter(|(n, _)| !expect.artifacts.contains(n))
    {
        check(
            stage(name).and_then(|d| d.artifacts).is_none(),
            format!("{name}: unexpected artifacts"),
        );
    }
    check(
        exec.ended.lock().unwrap().contains(&run.id),
        "end_run was not called".into(),
    );
    // Publishing order: the index is written last, after the final run.json.
    let writes = sink.writes.lock().unwrap().clone();
    check(
        writes.last().map(String::as_str) == Some(keys::index_page(0).as_str()),
        format!("the index should be written last: {writes:?}"),
    );
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("\n  "))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenarios() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(
        files.len() >= 15,
        "expected at least 15 scenarios, found {}",
        files.len()
    );
    let mut failures = Vec::new();
    for f in &files {
        if let Err(e) = run_scenario(f).await {
            failures.push(format!(
                "{}:\n  {e}",
                f.file_name().unwrap().to_string_lossy()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} scenarios failed:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}
