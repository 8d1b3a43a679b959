//! What crosses the executor's boundary, against the real Docker engine:
//! secrets reach a container without being visible in `docker inspect`; a
//! script killed by SIGKILL is not an out-of-memory kill; a volume with a
//! path shows just that stage's files, read-only; and the project copy skips
//! what the ignore files exclude, without entering an ignored folder.

mod common;

use std::time::{Duration, Instant};

use common::{Opts, Project, pipeline, run};
use sentinel_api::{FailureKind, RunStatus, StageStatus};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_is_visible_in_docker_inspect_of_a_running_stage() {
    common::docker().await;
    let value = "inspect-me-if-you-can-4242";
    let p = std::sync::Arc::new(Project::new(&format!(
        "{}secrets: [TOKEN]\n",
        pipeline(
            "  use:\n    env: {T: '${secrets.TOKEN}', PLAIN: visible}\n    run: |\n      echo \"token $T plain $PLAIN\"\n      test ${#T} -eq 26\n      sleep 3\n"
        )
    )));
    let opts = Opts {
        secrets: [("TOKEN".to_string(), value.to_string())].into(),
        ..Opts::default()
    };
    let handle = {
        let p = p.clone();
        tokio::spawn(async move { run(&p, opts).await })
    };
    // While it runs: everything Docker knows of the container.
    let deadline = Instant::now() + Duration::from_secs(30);
    let inspected = loop {
        let ids = std::process::Command::new("docker")
            .args(["ps", "-q", "--filter", "label=dev.sentinel.stage=use"])
            .output()
            .unwrap();
        let ids = String::from_utf8_lossy(&ids.stdout).trim().to_string();
        if let Some(id) = ids.lines().next() {
            let out = std::process::Command::new("docker")
                .args(["inspect", id])
                .output()
                .unwrap();
            break String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(Instant::now() < deadline, "the stage's container never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let r = handle.await.unwrap();
    assert_eq!(r.status, RunStatus::Succeeded, "{:?}", r.reason);
    assert!(inspected.contains("PLAIN=visible"), "{inspected}");
    assert!(
        !inspected.contains(value),
        "docker inspect shows the secret:\n{inspected}"
    );
    assert!(
        p.log(&r, "use").contains("token *** plain visible"),
        "the script saw the secret in its environment: {}",
        p.log(&r, "use")
    );
}

#[tokio::test]
async fn a_sigkill_is_not_an_out_of_memory_kill() {
    common::docker().await;
    let p = Project::new(&pipeline(
        "  killed: {run: 'sh -c \"kill -9 \\$\\$\"; exit $?'}\n",
    ));
    let r = run(&p, Opts::default()).await;
    let s = p.stage(&r, "killed").await;
    assert_eq!(
        (s.status, s.failure, s.exit_code),
        (StageStatus::Failed, Some(FailureKind::ExitCode), Some(137)),
        "{:?}",
        s.reason
    );
    let reason = s.reason.unwrap_or_default();
    assert!(
        reason.contains("SIGKILL") && reason.contains("not by the out-of-memory killer"),
        "{reason}"
    );
}

#[tokio::test]
async fn a_volume_with_a_path_shows_that_stages_files_read_only() {
    common::docker().await;
    let p = Project::new(&pipeline(
        "  deps: {run: 'mkdir -p lib && echo dep-a > lib/a.txt'}\n  other: {run: 'echo other > other.txt'}\n  use:\n    after: [other]\n    volumes: [{stage: deps, path: /deps}]\n    run: |\n      echo \"$(cat /deps/lib/a.txt) $(ls /deps)\"\n      test ! -e /deps/other.txt\n      touch /deps/new 2>/dev/null && echo writable || echo read-only\n",
    ));
    let r = run(&p, Opts::default()).await;
    assert_eq!(r.status, RunStatus::Succeeded, "{:?}", r.reason);
    let out = p.stage(&r, "use").await.output.unwrap_or_default();
    assert_eq!(out, "dep-a lib\nread-only");
    let use_doc = p.stage(&r, "use").await;
    assert!(
        use_doc.needs.iter().any(|n| n.as_str() == "deps"),
        "the edge"
    );
}

#[tokio::test]
async fn the_project_copy_never_enters_an_ignored_folder() {
    common::docker().await;
    let p = Project::new(&pipeline(
        "  look: {run: 'ls -a; test ! -e big; test ! -e cache.tmp; cat kept.txt'}\n",
    ));
    std::fs::write(p.source.join(".gitignore"), "/big/\n").unwrap();
    std::fs::write(p.source.join(".sentinelignore"), "*.tmp\n").unwrap();
    std::fs::write(p.source.join("kept.txt"), "kept\n").unwrap();
    std::fs::write(p.source.join("cache.tmp"), "x".repeat(1000)).unwrap();
    std::fs::create_dir_all(p.source.join("big")).unwrap();
    std::fs::write(p.source.join("big/blob"), vec![0u8; 1 << 20]).unwrap();
    // Reading a FIFO blocks forever: a copy that entered `big/` would hang.
    let made = std::process::Command::new("mkfifo")
        .arg(p.source.join("big/fifo"))
        .status()
        .unwrap();
    assert!(made.success());
    let r = tokio::time::timeout(Duration::from_secs(60), run(&p, Opts::default()))
        .await
        .expect("the run hung: the copy entered the ignored folder");
    assert_eq!(r.status, RunStatus::Succeeded, "{:?}", r.reason);
    let out = p.stage(&r, "look").await.output.unwrap_or_default();
    assert!(out.ends_with("kept"), "{out}");
}

/// `sentinel rerun RUN --from STAGE`: the stages before it are kept as they
/// ended (their outputs), the run's recorded commit is what runs — not the
/// project's newer one — and a stage that succeeded cannot be re-run from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerun_repeats_the_recorded_commit_and_keeps_what_succeeded() {
    common::docker().await;
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("project");
    std::fs::create_dir_all(&project).unwrap();
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(&project)
            .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {out:?}");
    };
    std::fs::write(
        project.join("sentinel.yml"),
        "version: 1\nbox: sentinel/busybox:local\ndefaults:\n  network: none\nenv:\n  FIX: ~\nstages:\n  prepare:\n    run: echo \"v=$(cat version.txt)-$$\" >> $SENTINEL_OUTPUT\n  check:\n    env: {V: '${stages.prepare.outputs.v}'}\n    run: |\n      echo \"kept $V\"\n      echo \"file $(cat version.txt)\"\n      test \"$FIX\" = yes\n",
    )
    .unwrap();
    std::fs::write(project.join("version.txt"), "one\n").unwrap();
    git(&["init", "-q", "-b", "main"]);
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "one"]);
    let sentinel = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_sentinel"))
            .arg("-C")
            .arg(&project)
            .arg("--state")
            .arg(dir.path().join("state"))
            .arg("--results")
            .arg(dir.path().join("results"))
            .args(args)
            .env_remove("FIX")
            .output()
            .unwrap()
    };
    let doc = |out: &std::process::Output| -> sentinel_api::RunDoc {
        let stdout = String::from_utf8_lossy(&out.stdout);
        let last = stdout.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
        serde_json::from_str(last).unwrap_or_else(|e| {
            panic!(
                "{e}: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    };
    let first = sentinel(&["run", "--json", "-e", "FIX=no"]);
    assert_eq!(first.status.code(), Some(1), "{first:?}");
    let first = doc(&first);
    let stage_doc = |run: &sentinel_api::RunDoc, name: &str| -> sentinel_api::StageDoc {
        let path = dir
            .path()
            .join("results")
            .join(sentinel_api::keys::stage_doc(
                &run.id,
                &name.parse().unwrap(),
            ));
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
    };
    let v = stage_doc(&first, "prepare").outputs["v"].clone();

    // The project moves on; the re-run still builds the run's commit.
    std::fs::write(project.join("version.txt"), "two\n").unwrap();
    git(&["commit", "-q", "-am", "two"]);
    let out = sentinel(&[
        "rerun",
        first.id.as_str(),
        "--from",
        "check",
        "-e",
        "FIX=yes",
        "--json",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("at commit") && stderr.contains("keeping `prepare`"),
        "{stderr}"
    );
    let again = doc(&out);
    let prepare = stage_doc(&again, "prepare");
    assert_eq!(
        prepare.reason.as_deref(),
        Some(format!("reused from run {}", first.id).as_str())
    );
    assert_eq!(
        prepare.outputs["v"], v,
        "prepare's output is the first run's"
    );
    let log = std::fs::read_to_string(dir.path().join("results").join(
        sentinel_api::keys::stage_log(&again.id, &"check".parse().unwrap()),
    ))
    .unwrap();
    assert!(
        log.contains(&format!("kept {v}")) && log.contains("file one"),
        "check ran on the recorded commit with the kept output: {log}"
    );
    assert_eq!(
        again.git.and_then(|g| g.commit),
        first.git.and_then(|g| g.commit),
        "the re-run records the commit it ran"
    );
    assert!(
        std::fs::read_dir(dir.path().join("state/rerun"))
            .map(|d| d.count() == 0)
            .unwrap_or(true),
        "the checkout is removed"
    );

    // A stage that succeeded is not where a re-run starts.
    let out = sentinel(&["rerun", first.id.as_str(), "--from", "prepare"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("stage `prepare`") && stderr.contains("succeeded"),
        "{stderr}"
    );
}
