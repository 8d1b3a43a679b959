//! A job's script steps in one container, against the real Docker engine:
//! one container for every step, a file outside the workspace seen by the
//! next step, exit codes, output split per step, a stopped step that leaves
//! the container usable, secrets out of `docker inspect`, nothing left.

mod common;

use std::time::{Duration, Instant};

use bollard::query_parameters::ListContainersOptions;
use common::IMAGE;
use sentinel_api::RunId;
use sentinel_docker::{DockerExecutor, JobContainer, LABEL_RUN};
use sentinel_engine::exec::{Chunk, Executor, Outcome, StageJob, Var};
use sentinel_pipeline::Shell;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "job-secret-value-4242";

struct Fixture {
    ex: DockerExecutor,
    job: StageJob,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let ex = DockerExecutor::connect().await.unwrap_or_else(|e| {
        panic!(
            "{e}\nthese tests need a Docker engine: run `scripts/setup.sh` (installs docker.io, starts dockerd, builds {IMAGE})"
        )
    });
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("project");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(project.join("README"), "a project\n").unwrap();
    let env = vec![
        Var {
            name: "GREETING".into(),
            value: "hello".into(),
            secret: false,
        },
        Var {
            name: "TOKEN".into(),
            value: SECRET.into(),
            secret: true,
        },
    ];
    let (log, _) = mpsc::channel(1);
    let job = common::stage_job(&dir.path().join("runs"), &project, "build", env, log).await;
    Fixture { ex, job, _dir: dir }
}

async fn containers(ex: &DockerExecutor, run: &RunId) -> Vec<String> {
    let opts = ListContainersOptions {
        all: true,
        filters: Some(std::collections::HashMap::from([(
            "label".to_string(),
            vec![format!("{LABEL_RUN}={run}")],
        )])),
        ..Default::default()
    };
    ex.client()
        .list_containers(Some(opts))
        .await
        .unwrap()
        .into_iter()
        .filter_map(|c| c.id)
        .collect()
}

/// Runs a step and returns its outcome and its log.
async fn step(jc: &mut JobContainer, script: &str) -> (Outcome, String) {
    step_until(jc, script, &CancellationToken::new()).await
}

async fn step_until(
    jc: &mut JobContainer,
    script: &str,
    stop: &CancellationToken,
) -> (Outcome, String) {
    let (tx, mut rx) = mpsc::channel::<Chunk>(64);
    let outcome = jc.run(script, &tx, stop).await;
    drop(tx);
    let mut log = Vec::new();
    while let Some(c) = rx.recv().await {
        log.extend_from_slice(&c.bytes);
    }
    (outcome, String::from_utf8_lossy(&log).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_steps_share_one_container_and_nothing_is_left() {
    let f = fixture().await;
    let mut jc = match f.ex.open_job(&f.job, IMAGE, Shell::Strict, &[]).await {
        Ok(jc) => jc,
        Err(r) => panic!("the job did not start: {:?}", r.outcome),
    };
    // Step 1 writes outside the workspace; the others see it.
    let (o, log) = step(&mut jc, "echo one > /tmp/note; echo \"step 1 $GREETING\"").await;
    assert_eq!(o, Outcome::Exited { code: 0 }, "{log}");
    assert_eq!(log, "step 1 hello\n");
    for i in 2..=9 {
        let (o, log) = step(&mut jc, &format!("echo {i} >> /tmp/note; echo step {i}")).await;
        assert_eq!(o, Outcome::Exited { code: 0 }, "step {i}: {log}");
        assert_eq!(log, format!("step {i}\n"), "each step's log is its own");
    }
    assert_eq!(
        containers(&f.ex, &f.job.run_id).await.len(),
        1,
        "one container for the job"
    );
    let (o, log) = step(
        &mut jc,
        "tr '\\n' ' ' < /tmp/note; pwd; printf 'no newline'",
    )
    .await;
    assert_eq!(o, Outcome::Exited { code: 0 }, "{log}");
    assert_eq!(log, "one 2 3 4 5 6 7 8 9 /workspace\nno newline");
    // What the last step writes on standard error is not lost, even when it
    // trails the step's end: closing the job delivers it.
    let (o, mut log) = step(&mut jc, "echo late >&2").await;
    assert_eq!(o, Outcome::Exited { code: 0 });
    let (tx, mut rx) = mpsc::channel::<Chunk>(64);
    jc.close(&tx).await;
    drop(tx);
    while let Some(c) = rx.recv().await {
        log.push_str(&String::from_utf8_lossy(&c.bytes));
    }
    assert_eq!(log, "late\n");
    f.ex.end_run(&f.job.run_id).await;
    assert!(
        containers(&f.ex, &f.job.run_id).await.is_empty(),
        "no container is left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_or_stopped_step_leaves_the_job_usable() {
    let f = fixture().await;
    let mut jc = match f.ex.open_job(&f.job, IMAGE, Shell::Strict, &[]).await {
        Ok(jc) => jc,
        Err(r) => panic!("the job did not start: {:?}", r.outcome),
    };
    // Strict shell: the first failing command ends the step.
    let (o, log) = step(&mut jc, "echo before; false; echo never").await;
    assert_eq!(o, Outcome::Exited { code: 1 });
    assert_eq!(log, "before\n");
    let (o, _) = step(&mut jc, "exit 3").await;
    assert_eq!(o, Outcome::Exited { code: 3 });
    // A secret variable is there for the steps, and not in the container's
    // configuration.
    let (o, log) = step(
        &mut jc,
        "[ \"$TOKEN\" = \"$(echo job-secret-value-4242)\" ] && echo has-it",
    )
    .await;
    assert_eq!((o, log.as_str()), (Outcome::Exited { code: 0 }, "has-it\n"));
    for id in containers(&f.ex, &f.job.run_id).await {
        let info = f.ex.client().inspect_container(&id, None).await.unwrap();
        let text = serde_json::to_string(&info).unwrap();
        assert!(!text.contains(SECRET), "docker inspect shows the secret");
    }
    // A stopped step: it and what it started in the background are killed,
    // promptly; the next step runs in the same container.
    let stop = CancellationToken::new();
    let later = stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        later.cancel();
    });
    let t = Instant::now();
    let (o, log) = step_until(&mut jc, "sleep 300 & echo started; sleep 300", &stop).await;
    assert_eq!(o, Outcome::Stopped, "{log}");
    assert!(t.elapsed() < Duration::from_secs(10), "stopped promptly");
    assert_eq!(log, "started\n");
    let (o, log) = step(
        &mut jc,
        "for p in /proc/[0-9]*; do cat $p/comm; done 2>/dev/null | grep -c '^sleep$' || true",
    )
    .await;
    assert_eq!(o, Outcome::Exited { code: 0 });
    assert_eq!(log.trim(), "0", "the stopped step's processes are gone");
    assert_eq!(containers(&f.ex, &f.job.run_id).await.len(), 1);
    let (tx, _rx) = mpsc::channel(64);
    jc.close(&tx).await;
    f.ex.end_run(&f.job.run_id).await;
    assert!(containers(&f.ex, &f.job.run_id).await.is_empty());
}
