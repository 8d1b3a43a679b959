//! A job of 10 one-line script steps (one container, the steps sent to its
//! agent) against 10 one-line container stages (a container each) and
//! against one `docker run --rm` of the same image, measured in the same
//! run. Goals: ≤ 0.3× the stages, ≤ 1.5× one `docker run --rm`.
//!
//! `cargo bench -p sentinel-docker --bench job` (needs the Docker engine
//! and the `sentinel/busybox:local` image of `scripts/setup.sh`).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::IMAGE;
use sentinel_docker::DockerExecutor;
use sentinel_engine::exec::{Executor, Outcome, StageJob};
use sentinel_pipeline::Shell;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const STEPS: usize = 10;
const SAMPLES: usize = 7;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn stage_job(runs: &std::path::Path, project: &std::path::Path) -> StageJob {
    let (log, mut sink) = mpsc::channel(64);
    tokio::spawn(async move { while sink.recv().await.is_some() {} });
    common::stage_job(runs, project, "bench", Vec::new(), log).await
}

#[tokio::main]
async fn main() {
    let ex = DockerExecutor::connect()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("project");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(project.join("README"), "a project\n").unwrap();
    let runs = dir.path().join("runs");

    let (mut job, mut stages, mut docker_run) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..SAMPLES {
        // A job: one container, ten steps.
        let sj = stage_job(&runs, &project).await;
        let t = Instant::now();
        let mut jc = match ex.open_job(&sj, IMAGE, Shell::Strict, &[]).await {
            Ok(jc) => jc,
            Err(r) => panic!("the job did not start: {:?}", r.outcome),
        };
        let (tx, mut rx) = mpsc::channel(64);
        tokio::spawn(async move { while rx.recv().await.is_some() {} });
        let stop = CancellationToken::new();
        for _ in 0..STEPS {
            let o = jc.run("echo one line", &tx, &stop).await;
            assert_eq!(o, Outcome::Exited { code: 0 });
        }
        jc.close(&tx).await;
        job.push(t.elapsed());
        ex.end_run(&sj.run_id).await;

        // Ten container stages, one after another.
        let sj = stage_job(&runs, &project).await;
        let t = Instant::now();
        for i in 0..STEPS {
            let mut one = sj.clone();
            one.stage = format!("bench-{i}").parse().unwrap();
            let r = ex.run_stage(one, CancellationToken::new()).await;
            assert_eq!(r.outcome, Outcome::Exited { code: 0 });
        }
        stages.push(t.elapsed());
        ex.end_run(&sj.run_id).await;

        // One `docker run --rm`.
        let t = Instant::now();
        let status = tokio::process::Command::new("docker")
            .args([
                "run",
                "--rm",
                "--network",
                "none",
                IMAGE,
                "echo",
                "one line",
            ])
            .stdout(std::process::Stdio::null())
            .status()
            .await
            .expect("the docker command");
        assert!(status.success());
        docker_run.push(t.elapsed());
    }
    let (job, stages, docker_run) = (median(job), median(stages), median(docker_run));
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("{STEPS} one-line steps, median of {SAMPLES}:");
    println!(
        "  a job (one container)        : {:8.1} ms  {:.2}x the stages (goal <= 0.3x), {:.2}x one docker run (goal <= 1.5x)",
        ms(job),
        ms(job) / ms(stages),
        ms(job) / ms(docker_run)
    );
    println!(
        "  {STEPS} container stages           : {:8.1} ms",
        ms(stages)
    );
    println!("  one `docker run --rm`        : {:8.1} ms", ms(docker_run));
}
