//! Benchmark (not a test): a stage printing 100 MB, streamed through the
//! log pipeline (masked with a secret known, spilled to its file, kept
//! whole under the default `log_limit`) against writing the same bytes
//! straight to a file (the baseline, measured in the same run). Prints the
//! throughput of each, their ratio, and how much the process's peak memory
//! (VmHWM) grew while the log streamed — flat memory is the goal.
//! Run with `cargo bench -p sentinel-engine --bench log`.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sentinel_engine::exec::{Chunk, Stream};
use sentinel_engine::log::{LogConfig, spawn_log_writer};
use sentinel_engine::masker::SecretSet;
use sentinel_pipeline::Limits;

const TOTAL: usize = 100 << 20;
const CHUNK: usize = 32 << 10;

/// The peak resident memory of this process so far, in KiB.
fn vm_hwm() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// 32 KiB of log lines (about 90 bytes each).
fn chunk() -> Vec<u8> {
    let mut out = Vec::with_capacity(CHUNK + 128);
    let mut i = 0;
    while out.len() < CHUNK {
        writeln!(
            out,
            "line {i:08} of the hundred-megabyte log, padded to reach about ninety bytes"
        )
        .unwrap();
        i += 1;
    }
    out.truncate(CHUNK);
    out
}

fn baseline(dir: &std::path::Path, data: &[u8]) -> Duration {
    let t = Instant::now();
    let mut f = std::io::BufWriter::new(std::fs::File::create(dir.join("plain.log")).unwrap());
    for _ in 0..TOTAL / CHUNK {
        f.write_all(data).unwrap();
    }
    f.flush().unwrap();
    t.elapsed()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = chunk();
    let secrets = Arc::new(
        SecretSet::new()
            .with([b"s3cr3t-value-never-printed".as_slice()])
            .unwrap(),
    );
    let plain = baseline(dir.path(), &data);
    let before = vm_hwm();
    let (took, summary) = rt.block_on(async {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let t = Instant::now();
        let writer = spawn_log_writer(
            LogConfig {
                path: dir.path().join("stage.log"),
                limit: Limits::DEFAULT_LOG_LIMIT,
                sensitive: false,
                secrets,
                live: None,
            },
            rx,
        );
        for _ in 0..TOTAL / CHUNK {
            tx.send(Chunk {
                stream: Stream::Stdout,
                bytes: data.clone(),
            })
            .await
            .unwrap();
        }
        drop(tx);
        let summary = writer.await.unwrap();
        (t.elapsed(), summary)
    });
    let grew = vm_hwm().saturating_sub(before);
    let mb = TOTAL as f64 / (1 << 20) as f64;
    println!("a 100 MiB log, streamed in 32 KiB chunks");
    println!(
        "  log pipeline (masked, spilled, kept whole): {:>7.1} ms  {:>6.0} MiB/s  ({} bytes kept, {} cut)",
        took.as_secs_f64() * 1e3,
        mb / took.as_secs_f64(),
        summary.bytes,
        summary.cut
    );
    println!(
        "  baseline (BufWriter to a file):             {:>7.1} ms  {:>6.0} MiB/s",
        plain.as_secs_f64() * 1e3,
        mb / plain.as_secs_f64()
    );
    println!(
        "  ratio pipeline / baseline: {:.2}×",
        took.as_secs_f64() / plain.as_secs_f64()
    );
    println!(
        "  peak memory (VmHWM) growth while streaming: {} KiB ({:.2}% of the log)",
        grew,
        grew as f64 * 1024.0 / TOTAL as f64 * 100.0
    );
}
