//! Benchmark (not a test): a container stage's start-to-end on this
//! machine's one-node swarm against the local Docker executor, measured in
//! the same run, for a one-line stage and for the container benchmark's
//! seed → 8 → join DAG (10 stages, `--jobs 8`); and, to say where the
//! Swarm time goes, one bare one-shot Swarm service of the same image
//! (create, wait for its task's end, remove): a Swarm stage is three of
//! them (the workspace brought, the stage, the workspace sent back).
//! Run with `cargo bench -p sentinel --bench swarm` (after scripts/setup.sh).

#[path = "common/engine.rs"]
mod engine;

use std::time::{Duration, Instant};

use engine::{engine_run, median};
use sentinel_store::SledStore;

const IMAGE: &str = "sentinel/busybox:local";

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One bare one-shot service: `docker service create` of `true` with
/// restart `none`, until its task completed, then its removal.
fn bare_service(n: usize) -> Duration {
    let name = format!("sentinel-bench-{}-{n}", std::process::id());
    let t = Instant::now();
    let out = std::process::Command::new("docker")
        .args([
            "service",
            "create",
            "-q",
            "-d",
            "--name",
            &name,
            "--restart-condition",
            "none",
            IMAGE,
            "true",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    loop {
        let ps = std::process::Command::new("docker")
            .args(["service", "ps", &name, "--format", "{{.CurrentState}}"])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&ps.stdout).starts_with("Complete") {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = t.elapsed();
    let _ = std::process::Command::new("docker")
        .args(["service", "rm", &name])
        .output();
    took
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let local = sentinel_docker::DockerExecutor::connect()
            .await
            .expect("Docker (run scripts/setup.sh)");
        let swarm = sentinel_docker::SwarmExecutor::connect(Default::default())
            .await
            .expect("a swarm (run scripts/setup.sh)");
        let tmp = tempfile::tempdir().unwrap();
        let store = SledStore::try_open(&tmp.path().join("db")).unwrap();
        let one = format!("version: 1\nbox: {IMAGE}\ndefaults: {{network: none}}\nstages:\n  a: {{run: 'echo hi'}}\n");
        let mut fan = format!("version: 1\nbox: {IMAGE}\ndefaults: {{network: none}}\nstages:\n  seed: {{run: 'true'}}\n");
        for i in 1..=8 {
            fan.push_str(&format!("  p{i}: {{after: seed, run: 'true'}}\n"));
        }
        fan.push_str("  join: {after: [p1, p2, p3, p4, p5, p6, p7, p8], run: 'true'}\n");
        // Warm-up: images, caches, the first overlay network.
        engine_run(&tmp.path().join("w1"), &one, 1, &local, &store).await;
        engine_run(&tmp.path().join("w2"), &one, 1, &swarm, &store).await;
        bare_service(0);

        let (mut l1, mut s1, mut bare) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..7 {
            l1.push(engine_run(&tmp.path().join(format!("l1-{i}")), &one, 1, &local, &store).await);
            s1.push(engine_run(&tmp.path().join(format!("s1-{i}")), &one, 1, &swarm, &store).await);
            bare.push(tokio::task::block_in_place(|| bare_service(i + 1)));
        }
        let (mut lf, mut sf) = (Vec::new(), Vec::new());
        for i in 0..3 {
            lf.push(engine_run(&tmp.path().join(format!("lf-{i}")), &fan, 8, &local, &store).await);
            sf.push(engine_run(&tmp.path().join(format!("sf-{i}")), &fan, 8, &swarm, &store).await);
        }
        let (l1, s1, bare, lf, sf) = (median(l1), median(s1), median(bare), median(lf), median(sf));
        println!("one-line stage, run start to end (medians of 7):");
        println!("  local Docker executor   {:8.1} ms", ms(l1));
        println!("  Swarm executor          {:8.1} ms   {:.2}x local", ms(s1), ms(s1) / ms(l1));
        println!("  one bare Swarm service  {:8.1} ms   (a Swarm stage runs three: fill, stage, drain)", ms(bare));
        println!("seed -> 8 -> join (10 stages, --jobs 8; medians of 3):");
        println!("  local Docker executor   {:8.1} ms", ms(lf));
        println!("  Swarm executor          {:8.1} ms   {:.2}x local", ms(sf), ms(sf) / ms(lf));
    });
}
