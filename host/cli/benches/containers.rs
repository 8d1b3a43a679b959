//! Benchmark (not a test): the cost of one container stage through the
//! engine against `docker run --rm` of the same image and command, measured
//! in the same run, and the wall time of a 50-stage container DAG with
//! `--jobs 4`, and a seed → 8 → join DAG against a shell script running
//! the same containers. Run with `cargo bench -p sentinel --bench containers`.

#[path = "common/engine.rs"]
mod engine;

use std::process::Command;
use std::time::{Duration, Instant};

use sentinel_docker::DockerExecutor;

use engine::{engine_run, median};
use sentinel_store::SledStore;

const IMAGE: &str = "sentinel/busybox:local";

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let docker = DockerExecutor::connect().await.expect("Docker (run scripts/setup.sh)");
        let tmp = tempfile::tempdir().unwrap();
        let store = SledStore::try_open(&tmp.path().join("db")).unwrap();
        let iterations = 15;

        let one = format!("version: 1\nbox: {IMAGE}\ndefaults: {{network: none}}\nstages:\n  one: {{run: 'true'}}\n");
        // Warm up both paths (image cache, page cache).
        engine_run(tmp.path(), &one, 1, &docker, &store).await;
        Command::new("docker").args(["run", "--rm", "--network", "none", IMAGE, "true"]).output().unwrap();

        let docker_run = |args: &[&str]| {
            let t = Instant::now();
            let s = Command::new("docker").args(args).status().unwrap();
            assert!(s.success());
            t.elapsed()
        };
        let (mut plain, mut none, mut eng) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..iterations {
            // Interleaved so that drift on the machine affects all three alike.
            plain.push(docker_run(&["run", "--rm", IMAGE, "true"]));
            none.push(docker_run(&["run", "--rm", "--network", "none", IMAGE, "true"]));
            eng.push(engine_run(&tmp.path().join(format!("one-{i}")), &one, 1, &docker, &store).await);
        }
        let (plain_m, cli_m, eng_m) = (median(plain), median(none), median(eng));
        println!("one container stage (`true`, network none), median of {iterations}:");
        println!("  docker run --rm {IMAGE} true (baseline)      : {:>7.1} ms", plain_m.as_secs_f64() * 1e3);
        println!("  docker run --rm --network none … true            : {:>7.1} ms", cli_m.as_secs_f64() * 1e3);
        println!("  sentinel engine, whole one-stage run             : {:>7.1} ms", eng_m.as_secs_f64() * 1e3);
        println!("  ratio engine / docker run --rm (goal <= 0.80)    : {:>7.2}", eng_m.as_secs_f64() / plain_m.as_secs_f64());
        println!("  ratio engine / docker run --rm --network none    : {:>7.2}", eng_m.as_secs_f64() / cli_m.as_secs_f64());

        // 50 stages: 5 layers of 10, each stage after two of the layer before.
        let mut dag = format!("version: 1\nbox: {IMAGE}\ndefaults: {{network: none}}\nstages:\n");
        for layer in 0..5 {
            for i in 0..10 {
                let after = if layer == 0 { String::new() } else { format!(", after: [s{}-{}, s{}-{}]", layer - 1, i, layer - 1, (i + 1) % 10) };
                dag.push_str(&format!("  s{layer}-{i}: {{run: 'true'{after}}}\n"));
            }
        }
        let mut walls = Vec::new();
        for i in 0..3 {
            walls.push(engine_run(&tmp.path().join(format!("dag-{i}")), &dag, 4, &docker, &store).await);
        }
        let wall = median(walls);
        println!("50-stage container DAG, --jobs 4, median of 3:");
        println!("  wall time                                      : {:>7.2} s", wall.as_secs_f64());
        println!("  per stage (wall / 50 * 4 jobs)                 : {:>7.1} ms", wall.as_secs_f64() * 1e3 / 50.0 * 4.0);
        println!("  vs 50 sequential `docker run --rm` (estimated) : {:>7.2}x faster", (cli_m.as_secs_f64() * 50.0) / wall.as_secs_f64());

        // Seed → 8 in parallel → join: the engine against a shell script
        // running the same ten `docker run --rm` in the same order and
        // parallelism, interleaved.
        let mut fan = format!("version: 1\nbox: {IMAGE}\ndefaults: {{network: none}}\nstages:\n  seed: {{run: 'true'}}\n");
        for i in 1..=8 {
            fan.push_str(&format!("  p{i}: {{after: seed, run: 'true'}}\n"));
        }
        fan.push_str("  join: {after: [p1, p2, p3, p4, p5, p6, p7, p8], run: 'true'}\n");
        let run1 = format!("docker run --rm --network none {IMAGE} true");
        let script = format!("{run1} && {{ for i in 1 2 3 4 5 6 7 8; do {run1} & done; wait; }} && {run1}");
        let reused = fan.replace("defaults: {network: none}", "defaults: {network: none, reuse: true}");
        // A server keeps network namespaces ready (made, and spent ones
        // removed, after a run ends — never on a run's critical path): the
        // same DAG through an executor that does.
        let server = docker.clone().with_ready_namespaces(16);
        engine_run(&tmp.path().join("pool-warm"), &fan, 8, &server, &store).await;
        server.settled().await;
        // Each measure starts on a quiet machine: Docker and the kernel
        // finish tearing down what the one before removed (network
        // namespaces go in a kernel work queue) before the next begins.
        let quiet = || std::thread::sleep(Duration::from_millis(750));
        let (mut sh_fan, mut eng_fan, mut pool_fan, mut reuse_fan) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for i in 0..7 {
            quiet();
            let t = Instant::now();
            let s = Command::new("sh").args(["-c", &script]).status().unwrap();
            assert!(s.success());
            sh_fan.push(t.elapsed());
            quiet();
            eng_fan.push(engine_run(&tmp.path().join(format!("fan-{i}")), &fan, 8, &docker, &store).await);
            quiet();
            pool_fan.push(engine_run(&tmp.path().join(format!("pool-{i}")), &fan, 8, &server, &store).await);
            server.settled().await;
            quiet();
            reuse_fan.push(engine_run(&tmp.path().join(format!("reuse-{i}")), &reused, 8, &docker, &store).await);
        }
        server.release_ready().await;
        let (sh, e, p, r) = (median(sh_fan), median(eng_fan), median(pool_fan), median(reuse_fan));
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let ratio = |d: Duration| d.as_secs_f64() / sh.as_secs_f64();
        println!("seed -> 8 parallel -> join, ten one-line container stages, median of 7 interleaved rounds:");
        println!("  the same ten `docker run --rm` by a shell script (baseline) : {:>7.1} ms", ms(sh));
        println!("  engine, --jobs 8, made ready ahead (`sentinel run`)         : {:>7.1} ms  {:.2}x the script", ms(e), ratio(e));
        println!("  engine as `sentinel serve` runs it (+ namespaces kept ready): {:>7.1} ms  {:.2}x the script (goal <= 0.6x)", ms(p), ratio(p));
        println!("  engine, --jobs 8, reuse: true                               : {:>7.1} ms  {:.2}x the script (goal <= 0.35x)", ms(r), ratio(r));
    });
}
