//! Benchmark (not a test): making a run's workspace from a project that sits
//! beside a 1 GiB folder its `.gitignore` excludes, against the same project
//! without that folder (the baseline, measured in the same run) — and what
//! the copy would cost if the folder were not ignored, as before.
//! Run with `cargo bench -p sentinel-engine --bench copy`.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use sentinel_engine::workspace::{Source, copy_source};

/// A project: 400 source files in 20 folders.
fn project(dir: &Path) {
    for d in 0..20 {
        let sub = dir.join(format!("src/mod{d}"));
        std::fs::create_dir_all(&sub).unwrap();
        for f in 0..20 {
            std::fs::write(sub.join(format!("f{f}.rs")), "fn main() {}\n".repeat(40)).unwrap();
        }
    }
    std::fs::write(dir.join(".gitignore"), "/target/\n").unwrap();
}

/// 1 GiB of build output in `target/`.
fn big(dir: &Path) {
    let t = dir.join("target/release");
    std::fs::create_dir_all(&t).unwrap();
    let block = vec![0x5au8; 1 << 20];
    for i in 0..64 {
        let mut f = std::fs::File::create(t.join(format!("blob{i}"))).unwrap();
        for _ in 0..16 {
            f.write_all(&block).unwrap();
        }
    }
}

fn copy(src: &Path, into: &Path, ignore: bool) -> (Duration, u64) {
    let _ = std::fs::remove_dir_all(into);
    if !ignore {
        std::fs::write(src.join(".gitignore"), "").unwrap();
    }
    let t = Instant::now();
    let stats = copy_source(
        &Source {
            dir: src.to_path_buf(),
            skip: vec![],
            git: true,
            restore: vec![],
            user: String::new(),
            dirs: Vec::new(),
        },
        into,
    )
    .unwrap();
    let took = t.elapsed();
    std::fs::write(src.join(".gitignore"), "/target/\n").unwrap();
    (took, stats.bytes)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let tmp = tempfile::tempdir().unwrap();
    let (plain, heavy) = (tmp.path().join("plain"), tmp.path().join("heavy"));
    project(&plain);
    project(&heavy);
    big(&heavy);
    let out = tmp.path().join("ws");
    let mut without = Vec::new();
    let mut beside = Vec::new();
    let mut bytes = (0, 0);
    for _ in 0..9 {
        let (d, b) = copy(&plain, &out, true);
        without.push(d);
        bytes.0 = b;
        let (d, b) = copy(&heavy, &out, true);
        beside.push(d);
        bytes.1 = b;
    }
    let (unignored, all) = copy(&heavy, &out, false);
    let (a, b) = (median(without), median(beside));
    println!(
        "Making a run's workspace (400 files, {} KiB), median of 9:",
        bytes.0 / 1024
    );
    println!(
        "  the project alone                         : {:>8.2} ms ({} bytes)",
        a.as_secs_f64() * 1e3,
        bytes.0
    );
    println!(
        "  beside a 1 GiB ignored folder             : {:>8.2} ms ({} bytes)  {:.2}x the project alone",
        b.as_secs_f64() * 1e3,
        bytes.1,
        b.as_secs_f64() / a.as_secs_f64()
    );
    println!(
        "  the same folder not ignored (as before)   : {:>8.2} ms ({} bytes)  {:.0}x",
        unignored.as_secs_f64() * 1e3,
        all,
        unignored.as_secs_f64() / a.as_secs_f64()
    );
}
