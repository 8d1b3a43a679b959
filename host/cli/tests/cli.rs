//! The `sentinel` binary end to end: crash recovery after `kill -9`, two runs
//! in parallel, reading while a run holds the database, and invalid
//! pipelines that fail with line:col before anything runs.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Project, leftovers, pipeline};

fn sentinel(project: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sentinel"));
    c.arg("-C")
        .arg(project)
        .args(args)
        .env_remove("SENTINEL_STATE")
        .env_remove("SENTINEL_RESULTS");
    c
}

fn run_ok(project: &Path, args: &[&str]) -> Output {
    let out = sentinel(project, args).output().unwrap();
    assert!(
        out.status.success(),
        "sentinel {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn runs_json(project: &Path) -> serde_json::Value {
    serde_json::from_slice(&run_ok(project, &["runs", "--json"]).stdout).unwrap()
}

/// Waits until `run.json` of the project shows the stage `running`.
fn wait_running(project: &Path, stage: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    let results = project.join(".sentinel/results/run");
    while Instant::now() < deadline {
        if let Ok(dirs) = std::fs::read_dir(&results) {
            for d in dirs.flatten() {
                let run: Option<serde_json::Value> = std::fs::read(d.path().join("run.json"))
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok());
                let running = run
                    .as_ref()
                    .and_then(|r| r["stages"].as_array())
                    .is_some_and(|stages| {
                        stages
                            .iter()
                            .any(|s| s["name"] == stage && s["status"] == "running")
                    });
                if running {
                    return d.file_name().to_string_lossy().into_owned();
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("stage {stage} never started running");
}

#[tokio::test]
async fn kill_9_leaves_an_interrupted_run_and_no_container() {
    common::docker().await;
    let p = Project::new(&pipeline(
        "  first: {run: 'echo first'}\n  long: {after: first, run: 'echo waiting; sleep 120'}\n",
    ));
    let mut child = sentinel(&p.source, &["run"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let run_id = wait_running(&p.source, "long");
    // The container is up: now kill the host process without warning.
    let deadline = Instant::now() + Duration::from_secs(30);
    while leftovers(Some(&run_id)).await.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !leftovers(Some(&run_id)).await.is_empty(),
        "the stage's container should be running"
    );
    Command::new("kill")
        .args(["-9", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait().unwrap();

    let runs = runs_json(&p.source);
    let run = runs
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == run_id.as_str())
        .expect("the run is listed");
    assert_eq!(run["status"], "interrupted", "{run}");
    let doc: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            p.source
                .join(format!(".sentinel/results/run/{run_id}/run.json")),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(doc["status"], "interrupted");
    assert!(doc["reason"].as_str().unwrap().contains("died"), "{doc}");
    let long: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            p.source
                .join(format!(".sentinel/results/run/{run_id}/long.json")),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(long["status"], "interrupted");
    assert_eq!(long["failure"], "host_died");
    // Killed containers are removed by the daemon a moment later.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let left = leftovers(Some(&run_id)).await;
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "containers of the dead run remain: {left:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let show = String::from_utf8(run_ok(&p.source, &["show", "last"]).stdout).unwrap();
    assert!(show.contains("interrupted"), "{show}");
}

#[tokio::test]
async fn ctrl_c_cancels_and_still_runs_always_stages() {
    common::docker().await;
    let p = Project::new(&pipeline(
        "  long: {run: 'sleep 60'}\n  cleanup: {when: always, run: 'echo cleanup ran after $SENTINEL_RUN_STATUS'}\n",
    ));
    let mut child = sentinel(&p.source, &["run"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let run_id = wait_running(&p.source, "long");
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let t = Instant::now();
    let status = child.wait().unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "cancel took {:?}",
        t.elapsed()
    );
    assert_eq!(status.code(), Some(130), "exit code of a cancelled run");
    let out = String::from_utf8(run_ok(&p.source, &["show", &run_id, "--json"]).stdout).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["run"]["status"], "cancelled");
    let stages = v["stages"].as_array().unwrap();
    let status_of = |n: &str| stages.iter().find(|s| s["name"] == n).unwrap()["status"].clone();
    assert_eq!(status_of("long"), "cancelled");
    assert_eq!(status_of("cleanup"), "succeeded");
    let log = run_ok(&p.source, &["logs", &run_id, "cleanup"]);
    assert_eq!(
        String::from_utf8_lossy(&log.stdout),
        "cleanup ran after cancelled\n"
    );
    assert!(
        leftovers(Some(&run_id)).await.is_empty(),
        "containers remain after cancel"
    );
}

#[tokio::test]
async fn parallel_runs_and_reading_while_running() {
    common::docker().await;
    let slow = Project::new(&pipeline("  wait: {run: 'sleep 3; echo slow done'}\n"));
    let quick = Project::new(&pipeline("  hello: {run: 'echo quick done'}\n"));
    let mut a = sentinel(&slow.source, &["run"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut b = sentinel(&quick.source, &["run"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let run_id = wait_running(&slow.source, "wait");
    // The running process holds the database: reads fall back to the results folder.
    let runs = runs_json(&slow.source);
    assert_eq!(runs[0]["id"], run_id.as_str());
    assert_eq!(runs[0]["status"], "running", "{runs}");
    let show = String::from_utf8(run_ok(&slow.source, &["show", &run_id[..10]]).stdout).unwrap();
    assert!(show.contains("wait") && show.contains("running"), "{show}");
    // A second run in the same folder is refused, not queued behind a lock.
    let busy = sentinel(&slow.source, &["run"]).output().unwrap();
    assert_eq!(busy.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&busy.stderr).contains("another sentinel process"));
    assert!(a.wait().unwrap().success(), "the slow run failed");
    assert!(b.wait().unwrap().success(), "the quick run failed");
    for (p, text) in [(&slow, "slow done"), (&quick, "quick done")] {
        let runs = runs_json(&p.source);
        assert_eq!(runs[0]["status"], "succeeded");
        let log = run_ok(
            &p.source,
            &[
                "logs",
                "last",
                if text == "slow done" { "wait" } else { "hello" },
            ],
        );
        assert_eq!(String::from_utf8_lossy(&log.stdout), format!("{text}\n"));
    }
    // The index lists runs and every document carries the schema version.
    for entry in walkdir::WalkDir::new(slow.source.join(".sentinel/results"))
        .into_iter()
        .flatten()
    {
        if entry.path().extension().is_some_and(|e| e == "json") {
            let v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(entry.path()).unwrap()).unwrap();
            // The index is of layout 2 (chunks); run and stage documents of schema 1.
            let want = if entry.path().to_string_lossy().contains("/runs/") {
                2
            } else {
                1
            };
            assert_eq!(v["schema"], want, "{}", entry.path().display());
        }
    }
}

#[test]
fn invalid_pipelines_fail_with_line_and_column_and_run_nothing() {
    let cases = [
        (
            "unknown stage in after",
            "  a: {run: 'true'}\n  b: {after: [c], run: 'true'}\n",
            "sentinel.yml:8:15: unknown stage `c` in `after`",
        ),
        (
            "cycle",
            "  a: {after: b, run: 'true'}\n  b: {after: a, run: 'true'}\n",
            "dependency cycle: ",
        ),
        (
            "unknown reference",
            "  a: {env: {X: '${stages.nope.output}'}, run: 'true'}\n",
            "sentinel.yml:7:16: unknown stage `nope`",
        ),
        ("bad YAML", "  a: {run: 'true'\n", "sentinel.yml:"),
        (
            "duplicate key",
            "  a: {run: 'true'}\n  a: {run: 'false'}\n",
            "sentinel.yml:8:3: duplicate key `a`",
        ),
    ];
    for (name, stages, expected) in cases {
        let p = Project::new(&pipeline(stages));
        let out = sentinel(&p.source, &["run"]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {err}");
        assert!(
            err.contains(expected),
            "{name}: expected {expected:?} in {err:?}"
        );
        assert_eq!(
            err.matches("error:").count(),
            1,
            "{name}: one clear error, got {err}"
        );
        assert!(
            !p.source.join(".sentinel").exists(),
            "{name}: nothing may run or be created"
        );
        let out = sentinel(&p.source, &["validate"]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{name}: validate");
    }
    // A container stage with neither `image` nor `box`.
    let p = Project::new("version: 1\nstages:\n  a:\n    run: 'true'\n");
    let out = sentinel(&p.source, &["validate"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("sentinel.yml:4:5: stage `a` has no `image` and the pipeline has no `box`"),
        "{err}"
    );
}

#[test]
fn schema_command_matches_committed_schema() {
    let out = run_ok(Path::new("."), &["schema"]);
    let committed = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/sentinel.schema.json"),
    )
    .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        committed.trim()
    );
}

#[tokio::test]
async fn steps_and_containers_in_one_pipeline() {
    common::docker().await;
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/steps");
    let p = Project::new(&std::fs::read_to_string(example.join("sentinel.yml")).unwrap());
    std::fs::copy(example.join("package.json"), p.source.join("package.json")).unwrap();
    let out = sentinel(&p.source, &["run", "--json"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let last = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_string();
    let run: serde_json::Value = serde_json::from_str(&last).unwrap();
    assert_eq!(run["status"], "succeeded");
    let id = run["id"].as_str().unwrap();
    let deploy = run_ok(&p.source, &["logs", id, "deploy"]);
    assert_eq!(
        String::from_utf8_lossy(&deploy.stdout),
        "deploying 2.3.4 with key ***\n"
    );
    let show: serde_json::Value =
        serde_json::from_slice(&run_ok(&p.source, &["show", id, "--json"]).stdout).unwrap();
    let pluck = show["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "access-key-id")
        .unwrap()
        .clone();
    assert_eq!(pluck["kind"], "step");
    assert_eq!(
        pluck["sensitive"], true,
        "a value taken from a sensitive stage is sensitive"
    );
    assert!(pluck.get("output").is_none());
    for entry in walkdir::WalkDir::new(p.tmp.path())
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
    {
        let bytes = std::fs::read(entry.path()).unwrap();
        assert!(
            !common::contains(&bytes, b"DEMO\""),
            "{} holds the plucked key",
            entry.path().display()
        );
    }
}

#[test]
fn step_mistakes_are_validation_errors() {
    let cases = [
        (
            "  p: {step: jq-plukc@1, with: {filter: .a, input: '{}'}}\n",
            "unknown step `jq-plukc@1` (did you mean `jq-pluck`?)",
        ),
        (
            "  p: {step: jq-pluck@1, with: {input: '{}'}}\n",
            "step `jq-pluck` needs the setting `filter`",
        ),
        (
            "  p: {step: jq-pluck@1, with: {filter: .a, fitler: .b}}\n",
            "step `jq-pluck` has no setting `fitler` (did you mean `filter`?)",
        ),
        (
            "  p: {step: jq-pluck@2, with: {filter: .a}}\n",
            "step `jq-pluck` is version 1.0.0; `jq-pluck@2` asks for 2",
        ),
        (
            "  p: {step: ./missing/step.wasm}\n",
            "a step needs a step.toml beside its .wasm",
        ),
    ];
    for (stages, expected) in cases {
        let p = Project::new(&pipeline(stages));
        let out = sentinel(&p.source, &["validate"]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stages}: {err}");
        assert!(
            err.contains("sentinel.yml:7:"),
            "{stages}: a line and column: {err}"
        );
        assert!(
            err.contains(expected),
            "{stages}: expected {expected:?} in {err:?}"
        );
    }
}

#[test]
fn a_document_of_an_unknown_schema_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let results = tmp.path().join(".sentinel/results");
    let id = "01JDX3K6Q2T8W9V5M4N3P2R1S0";
    std::fs::create_dir_all(results.join("runs")).unwrap();
    std::fs::create_dir_all(results.join(format!("run/{id}"))).unwrap();
    std::fs::write(
        results.join("runs/index.json"),
        format!(
            r#"{{"schema": 2, "chunks": 0, "head": [{{"id": "{id}", "pipeline": "p", "status": "succeeded", "created": "2026-12-01T00:00:00Z"}}]}}"#
        ),
    )
    .unwrap();
    std::fs::write(
        results.join(format!("run/{id}/run.json")),
        r#"{"schema": 9, "id": "something else entirely"}"#,
    )
    .unwrap();
    let out = sentinel(tmp.path(), &["show", id]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("has schema 9; this Sentinel reads 1") && err.contains("upgrade"),
        "{err}"
    );
}

/// The http step from a pipeline: its bearer token, a secret, reaches the
/// receiver and no file of the run (log, documents, state) holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_steps_token_reaches_the_receiver_and_nothing_else() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let token = "deploy-token-0123456789abcdef";
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let receiver = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut chunk = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = sock.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            head.extend_from_slice(&chunk[..n]);
        }
        let body = "deployed v7";
        let reply = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        sock.write_all(reply.as_bytes()).await.unwrap();
        String::from_utf8_lossy(&head).to_ascii_lowercase()
    });
    let p = Project::new(&format!(
        "version: 1\nsecrets: [DEPLOY_TOKEN]\nstages:\n  call:\n    step: http\n    with:\n      url: http://127.0.0.1:{port}/deploy\n      token: ${{secrets.DEPLOY_TOKEN}}\n"
    ));
    let out = sentinel(&p.source, &["run", "--json"])
        .env("DEPLOY_TOKEN", token)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let head = receiver.await.unwrap();
    assert!(
        head.contains(&format!("authorization: bearer {token}")),
        "{head}"
    );
    let run: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    let id = run["id"].as_str().unwrap();
    let show: serde_json::Value =
        serde_json::from_slice(&run_ok(&p.source, &["show", id, "--json"]).stdout).unwrap();
    assert_eq!(show["stages"][0]["output"], "deployed v7");
    assert_eq!(
        p.file_holding(token.as_bytes()),
        None,
        "a file holds the token"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains(token));
    assert!(!String::from_utf8_lossy(&out.stderr).contains(token));
}

#[test]
fn env_flags_fill_the_pipelines_host_entries_and_nothing_else() {
    let p = Project::new(
        "version: 1\nenv: {VERSION: ~}\nstages:\n  v: {step: jq-pluck@1, with: {input: '{\"v\": \"${env.VERSION}\"}', filter: .v}}\n",
    );
    // The flag wins over the environment.
    let out = sentinel(&p.source, &["run", "--json", "-e", "VERSION=1.2.3"])
        .env("VERSION", "from-the-environment")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let runs = runs_json(&p.source);
    let id = runs[0]["id"].as_str().unwrap().to_string();
    let stage: serde_json::Value = serde_json::from_slice(
        &std::fs::read(p.source.join(format!(".sentinel/results/run/{id}/v.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(stage["output"], "\"1.2.3\"", "{stage}");
    // A name the pipeline does not take is an error naming the ones it does.
    let out = sentinel(&p.source, &["run", "-e", "VERSOIN=1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("no `VERSOIN: ~` entry") && err.contains("VERSION"),
        "{err}"
    );
    let out = sentinel(&p.source, &["run", "-e", "novalue"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not NAME=value"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn init_writes_a_starter_or_converts_and_completions_print() {
    let dir = tempfile::tempdir().unwrap();
    let out = sentinel(dir.path(), &["init"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(dir.path().join("sentinel.yml")).unwrap();
    assert!(text.starts_with("# sentinel.yml"), "{text}");
    let out = sentinel(dir.path(), &["validate"]).output().unwrap();
    assert!(
        out.status.success(),
        "the starter is valid: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Never over a file, unless asked.
    let out = sentinel(dir.path(), &["init"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    // A project of another dialect: converted.
    let cion = tempfile::tempdir().unwrap();
    std::fs::write(
        cion.path().join(".cion.yml"),
        "build:\n  - image: team/builder:1\n",
    )
    .unwrap();
    let out = sentinel(cion.path(), &["init"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(cion.path().join("sentinel.yml")).unwrap();
    assert!(
        text.contains("cion dialect") && text.contains("image_command: true"),
        "{text}"
    );
    let out = sentinel(cion.path(), &["validate"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Completion scripts.
    let out = sentinel(dir.path(), &["completions", "bash"])
        .output()
        .unwrap();
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && script.contains("_sentinel") && script.contains("images"),
        "{script}"
    );
}

/// Before using a step, anyone can see what it may do: `sentinel step show`
/// names its settings (with their variables, which are required or secret,
/// their defaults), the hosts it may reach, its workspace access, its size
/// and digest; `step list` lists the bundled steps; an unknown one is a
/// clear error.
#[test]
fn a_step_says_what_it_may_do() {
    let dir = tempfile::tempdir().unwrap();
    let out = sentinel(dir.path(), &["step", "show", "s3sync@1"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    for want in [
        "s3sync 1.",
        "SENTINEL_S3SYNC_KEY_SECRET",
        "required, secret",
        "HTTP to {endpoint}, *.amazonaws.com",
        "workspace: read",
        "digest:    sha256:",
    ] {
        assert!(text.contains(want), "{want:?} in:\n{text}");
    }
    let json = sentinel(dir.path(), &["step", "show", "jq-pluck", "--json"])
        .output()
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let wasm = std::fs::read(doc["file"].as_str().unwrap()).unwrap();
    assert_eq!(doc["size"], wasm.len());
    assert!(doc["digest"].as_str().unwrap().starts_with("sha256:"));
    let list = sentinel(dir.path(), &["step", "list"]).output().unwrap();
    let listed = String::from_utf8_lossy(&list.stdout);
    for name in ["http", "jq-pluck", "notify", "s3sync"] {
        assert!(listed.contains(name), "{name} in {listed}");
    }
    let none = sentinel(dir.path(), &["step", "show", "no-such-step@1"])
        .output()
        .unwrap();
    assert_eq!(none.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&none.stderr).contains("unknown step `no-such-step@1`"));
}
