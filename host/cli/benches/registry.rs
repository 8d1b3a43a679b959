//! Benchmark (not a test) of step registries, in one run: a cold pull +
//! verify + compile of the 2 MiB jq-pluck from the OCI registry on loopback
//! against the same from a folder registry (each with an empty step cache
//! and an empty compile cache), and the warm resolution of 100 locked step
//! references (lock file read, every package found in the cache and its
//! manifest checked) against its goal of 10 ms.
//! Run with `cargo bench -p sentinel --bench registry` after
//! `scripts/build-steps.sh` and `scripts/registry.sh` (127.0.0.1:5000).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sentinel_pipeline::{DirCatalog, StepCatalog as _};
use sentinel_registry::{
    Auth, Cache, Catalog, Folder, Layout, LockMode, Named, Oci, Package, Registry, Trust,
};
use sentinel_wasm::WasmExecutor;

const RUNS: usize = 7;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn catalog(state: &Path, registry: Arc<dyn Registry>) -> Catalog {
    let mut c = Catalog::new(DirCatalog::default(), Cache::new(state.join("steps")));
    c.registries.insert(
        "r".into(),
        Named {
            registry,
            trust: Trust::default(),
        },
    );
    c
}

/// One cold pull + verify + compile: (resolution, compile).
async fn cold(registry: Arc<dyn Registry>, scratch: &Path) -> (Duration, Duration) {
    let state = tempfile::tempdir_in(scratch).unwrap();
    let c = catalog(state.path(), registry);
    let exec = WasmExecutor::new(&state.path().join("compiled")).unwrap();
    let t = Instant::now();
    let step = tokio::task::block_in_place(|| c.resolve("r:jq-pluck@^1", Path::new("."))).unwrap();
    let pulled = t.elapsed();
    exec.prepare(&step.wasm, &step.digest).await.unwrap();
    (pulled, t.elapsed() - pulled)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let scratch = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("registry-bench");
        std::fs::create_dir_all(&scratch).unwrap();
        let jq = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../steps/dist/jq-pluck");
        let pkg = Package {
            kind: sentinel_registry::Kind::Wasm,
            manifest_text: std::fs::read_to_string(jq.join("step.toml")).unwrap(),
            body: std::fs::read(jq.join("step.wasm"))
                .expect("steps/dist/jq-pluck: run scripts/build-steps.sh"),
            signature: None,
        };
        let version = sentinel_registry::semver::Version::new(1, 0, 0);
        let folder_dir = tempfile::tempdir_in(&scratch).unwrap();
        let folder: Arc<dyn Registry> = Arc::new(Layout(Folder {
            root: folder_dir.path().to_path_buf(),
        }));
        let ns = format!("bench-{}", std::process::id());
        let oci: Arc<dyn Registry> = Arc::new(
            Oci::new(&format!("127.0.0.1:5000/{ns}"), Auth::Anonymous).unwrap(),
        );
        folder.publish("jq-pluck", &version, &pkg, true).await.unwrap();
        oci.publish("jq-pluck", &version, &pkg, true)
            .await
            .expect("the registry on 127.0.0.1:5000: run scripts/registry.sh");

        let (mut f_pull, mut f_compile, mut o_pull, mut o_compile) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..RUNS {
            let (p, c) = cold(folder.clone(), &scratch).await;
            f_pull.push(p);
            f_compile.push(c);
            let (p, c) = cold(oci.clone(), &scratch).await;
            o_pull.push(p);
            o_compile.push(c);
        }
        let totals = |a: &[Duration], b: &[Duration]| {
            a.iter().zip(b).map(|(x, y)| *x + *y).collect::<Vec<_>>()
        };
        let (f_total, o_total) = (
            median(totals(&f_pull, &f_compile)),
            median(totals(&o_pull, &o_compile)),
        );

        // Warm: 100 distinct references, all locked and cached.
        let project = tempfile::tempdir_in(&scratch).unwrap();
        let lock = project.path().join("sentinel.lock");
        let refs: Vec<String> = (0..100)
            .map(|k| format!("r:jq-pluck@>=1.0.0, <{}.0.0", k + 2))
            .collect();
        {
            let c = catalog(project.path(), folder.clone())
                .with_lock(lock.clone(), LockMode::Write)
                .unwrap();
            tokio::task::block_in_place(|| {
                for r in &refs {
                    c.resolve(r, Path::new(".")).unwrap();
                }
                c.finish().unwrap();
            });
        }
        let mut warm = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            let c = catalog(project.path(), folder.clone())
                .with_lock(lock.clone(), LockMode::Locked)
                .unwrap();
            for r in &refs {
                c.resolve(r, Path::new(".")).unwrap();
            }
            c.finish().unwrap();
            warm.push(t.elapsed());
        }
        let warm = median(warm);

        let kib = pkg.body.len() / 1024;
        println!("step registries ({RUNS} cold runs each, medians; jq-pluck {kib} KiB)");
        println!(
            "  cold from a folder:   pull+verify {:>7.1} ms  compile {:>7.1} ms  total {:>7.1} ms",
            ms(median(f_pull.clone())),
            ms(median(f_compile.clone())),
            ms(f_total)
        );
        println!(
            "  cold from OCI:        pull+verify {:>7.1} ms  compile {:>7.1} ms  total {:>7.1} ms",
            ms(median(o_pull.clone())),
            ms(median(o_compile.clone())),
            ms(o_total)
        );
        println!(
            "  OCI / folder (total): {:.2}×   (pull+verify alone: {:.2}×)",
            o_total.as_secs_f64() / f_total.as_secs_f64(),
            median(o_pull).as_secs_f64() / median(f_pull).as_secs_f64()
        );
        println!(
            "  warm resolution of 100 locked references: {:.2} ms (goal < 10 ms: {:.2}× of the goal) {}",
            ms(warm),
            ms(warm) / 10.0,
            if ms(warm) < 10.0 { "ok" } else { "OVER" }
        );
    });
}
