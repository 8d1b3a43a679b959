//! Benchmark (not a test): a cache restore and save of a 200 MiB folder
//! (the whole path a stage takes: key, index, archive, secret check, the
//! entry stored in a folder, put back into a new workspace), against `tar`
//! creating and extracting an archive of the same folder (the baseline,
//! measured in the same run, on the same disk). Goal: ≤ 1.5×.
//! Run with `cargo bench -p sentinel-engine --bench cache`.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sentinel_engine::cache::{Cache, CacheDir, CachePolicy, Piece, Scope, StageCache};
use sentinel_engine::masker::SecretSet;
use sentinel_engine::workspace::LocalWorkspace;
use sentinel_pipeline::CachePath;

const RUNS: usize = 5;

/// 200 MiB in `deps/`: 96 files of 2 MiB and 2,048 files of 4 KiB in 32 folders.
fn folder(ws: &Path) {
    let deps = ws.join("deps");
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut block = |n: usize| {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect::<Vec<u8>>()
    };
    std::fs::create_dir_all(deps.join("big")).unwrap();
    let chunk = block(2 << 20);
    for i in 0..96 {
        let mut f = std::fs::File::create(deps.join(format!("big/blob{i}"))).unwrap();
        f.write_all(&chunk).unwrap();
    }
    let small = block(4096);
    for d in 0..32 {
        let sub = deps.join(format!("pkg{d}"));
        std::fs::create_dir_all(&sub).unwrap();
        for f in 0..64 {
            std::fs::write(sub.join(format!("f{f}.js")), &small).unwrap();
        }
    }
}

fn sh(args: &[&str]) {
    let ok = Command::new(args[0])
        .args(&args[1..])
        .status()
        .unwrap()
        .success();
    assert!(ok, "{args:?} failed");
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let base = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let src = LocalWorkspace::at(base.path().join("run-src"));
    std::fs::create_dir_all(src.stages.join("s/cache")).unwrap();
    folder(&src.dir);
    let cache = Arc::new(Cache::new(
        Arc::new(CacheDir::new(base.path().join("caches"))),
        CachePolicy::default(),
    ));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let stage = "s".parse().unwrap();
    let secrets = Arc::new(SecretSet::default());
    let (mut ours, mut save_t, mut restore_t, mut tar_t) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..RUNS {
        let sc = StageCache {
            cache: cache.clone(),
            scope: Scope {
                project: "bench".into(),
                branch: "main".into(),
                default_branch: "main".into(),
                write: true,
            },
            key: vec![Piece::Text(format!("deps-{i}"))],
            restore_keys: vec![],
            paths: vec![CachePath::Workspace("deps".into())],
        };
        let tmp = base.path().join("tmp");
        // Save: a miss, then the stage's folder packed and stored.
        let t = Instant::now();
        let started = rt.block_on(sc.start(&src, &stage, "", &tmp));
        let doc = rt.block_on(sc.finish(started, &src, &stage, true, secrets.clone()));
        let saved = t.elapsed();
        assert!(doc.saved_bytes.is_some(), "{doc:?}");
        // Restore: a hit, put into a new run's workspace.
        let dst = LocalWorkspace::at(base.path().join(format!("run-{i}")));
        std::fs::create_dir_all(&dst.dir).unwrap();
        let t = Instant::now();
        let started = rt.block_on(sc.start(&dst, &stage, "", &tmp));
        let restored = t.elapsed();
        assert_eq!(
            started.doc.result,
            sentinel_api::CacheResult::Hit,
            "{:?}",
            started.doc
        );
        assert!(dst.dir.join("deps/big/blob95").is_file());
        save_t.push(saved);
        restore_t.push(restored);
        ours.push(saved + restored);
        std::fs::remove_dir_all(base.path().join(format!("run-{i}"))).unwrap();

        // The baseline: tar creates and extracts the same folder.
        let out = base.path().join("tar-out");
        std::fs::create_dir_all(&out).unwrap();
        let archive = base.path().join("deps.tar");
        let t = Instant::now();
        sh(&[
            "tar",
            "-cf",
            archive.to_str().unwrap(),
            "-C",
            src.dir.to_str().unwrap(),
            "deps",
        ]);
        sh(&["sync", "-f", archive.to_str().unwrap()]);
        sh(&[
            "tar",
            "-xf",
            archive.to_str().unwrap(),
            "-C",
            out.to_str().unwrap(),
        ]);
        tar_t.push(t.elapsed());
        std::fs::remove_dir_all(&out).unwrap();
        std::fs::remove_file(&archive).unwrap();
    }
    let (o, t) = (median(ours), median(tar_t));
    println!("cache of a 200 MiB folder, median of {RUNS}:");
    println!(
        "  save (miss, pack, check, store)  {:>8.1} ms",
        ms(median(save_t))
    );
    println!(
        "  restore (hit, into a new run)    {:>8.1} ms",
        ms(median(restore_t))
    );
    println!("  restore + save                   {:>8.1} ms", ms(o));
    println!("  tar -cf + sync + tar -xf         {:>8.1} ms", ms(t));
    println!(
        "  ratio {:.2}× (goal ≤ 1.5×)",
        o.as_secs_f64() / t.as_secs_f64()
    );
}
