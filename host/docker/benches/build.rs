//! An image build through a `build:` stage against `docker build` of the
//! same context (the same engine, the classic builder both), measured in the
//! same run; then the same stage with a 1 GiB folder that `.dockerignore`
//! leaves out next to the context's files. Goals: the stage ≤ 1.05× the
//! CLI; the left-out gigabyte costs nothing (≈ 1.00×).
//!
//! `cargo bench -p sentinel-docker --bench build` (needs the Docker engine
//! and the `sentinel/busybox:local` image of `scripts/setup.sh`).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use sentinel_docker::DockerExecutor;
use sentinel_engine::exec::{BuildWork, Executor, Outcome, StageJob, Work};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const SAMPLES: usize = 9;
const TAG: &str = "sentinel-bench/build";

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn build_job(runs: &std::path::Path, project: &std::path::Path) -> StageJob {
    let (log, mut sink) = mpsc::channel(64);
    tokio::spawn(async move { while sink.recv().await.is_some() {} });
    let mut job = common::stage_job(runs, project, "image", Vec::new(), log).await;
    job.work = Work::Build(BuildWork {
        context: ".".into(),
        dockerfile: "Dockerfile".into(),
        ..BuildWork::default()
    });
    job
}

/// One build of the stage, its `RUN` step made new by `n`.
async fn stage_build(ex: &DockerExecutor, job: &StageJob, n: usize) -> Duration {
    let mut one = job.clone();
    if let Work::Build(b) = &mut one.work {
        b.args = vec![("N".into(), format!("stage-{n}"))];
        b.tags = vec![format!("{TAG}:stage-{n}")];
    }
    let t = Instant::now();
    let r = ex.run_stage(one, CancellationToken::new()).await;
    let took = t.elapsed();
    assert_eq!(r.outcome, Outcome::Exited { code: 0 }, "{:?}", r.outcome);
    took
}

async fn cli_build(dir: &std::path::Path, n: usize) -> Duration {
    let t = Instant::now();
    let out = tokio::process::Command::new("docker")
        .env("DOCKER_BUILDKIT", "0")
        .args(["build", "-q", "--build-arg"])
        .arg(format!("N=cli-{n}"))
        .args(["-t", &format!("{TAG}:cli-{n}")])
        .arg(dir)
        .output()
        .await
        .unwrap();
    let took = t.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

#[tokio::main]
async fn main() {
    let ex = DockerExecutor::connect()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("project");
    std::fs::create_dir_all(project.join("files")).unwrap();
    std::fs::write(
        project.join("Dockerfile"),
        format!(
            "FROM {}\nCOPY files /files\nARG N\nRUN echo \"$N\" > /n\n",
            common::IMAGE
        ),
    )
    .unwrap();
    std::fs::write(project.join(".dockerignore"), "big\n").unwrap();
    // A context of 200 files, 4 MiB.
    for i in 0..200 {
        std::fs::write(
            project.join(format!("files/f{i:03}.txt")),
            format!("{i}\n").repeat(20 * 1024 / 4),
        )
        .unwrap();
    }
    let runs = dir.path().join("runs");
    let job = build_job(&runs, &project).await;
    let ws = job.workspace.local().unwrap().dir.clone();

    // A second workspace of the same project, with a 1 GiB folder that
    // `.dockerignore` leaves out and a FIFO in it: neither read nor opened.
    let big_job = build_job(&runs, &project).await;
    let big = big_job.workspace.local().unwrap().dir.join("big");
    std::fs::create_dir_all(&big).unwrap();
    {
        use std::io::Write as _;
        let mut w = std::io::BufWriter::new(std::fs::File::create(big.join("data.bin")).unwrap());
        let chunk = vec![7u8; 1 << 20];
        for _ in 0..1024 {
            w.write_all(&chunk).unwrap();
        }
        w.flush().unwrap();
    }
    let made = std::process::Command::new("mkfifo")
        .arg(big.join("pipe"))
        .status()
        .unwrap();
    assert!(made.success());
    // The gigabyte on disk before anything is measured.
    std::process::Command::new("sync").status().unwrap();

    let (mut stage, mut cli, mut with_big) = (Vec::new(), Vec::new(), Vec::new());
    // One of each first: base image layers and the COPY step cached alike.
    stage_build(&ex, &job, 1000).await;
    stage_build(&ex, &big_job, 1001).await;
    cli_build(&ws, 1000).await;
    for n in 0..SAMPLES {
        stage.push(stage_build(&ex, &job, n).await);
        cli.push(cli_build(&ws, n).await);
        with_big.push(stage_build(&ex, &big_job, 100 + n).await);
    }
    ex.end_run(&big_job.run_id).await;
    ex.end_run(&job.run_id).await;
    let _ = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "docker images -q {TAG} | sort -u | xargs -r docker rmi -f >/dev/null"
        ))
        .status();

    let (s, c, b) = (median(stage), median(cli), median(with_big));
    println!("image build of a 200-file, 4 MiB context (a COPY and a RUN), medians of {SAMPLES}:");
    println!(
        "  `docker build` (baseline)                 : {:8.1} ms",
        ms(c)
    );
    println!(
        "  through a build stage                      : {:8.1} ms   {:.2}× the CLI (goal ≤ 1.05×)",
        ms(s),
        s.as_secs_f64() / c.as_secs_f64()
    );
    println!(
        "  the same next to a 1 GiB left-out folder  : {:8.1} ms   {:.2}× without it (goal ≈ 1.00×: never read)",
        ms(b),
        b.as_secs_f64() / s.as_secs_f64()
    );
}
