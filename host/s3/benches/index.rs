//! Benchmark (not a test): the cost of publishing run N of a results
//! layout — its `run.json`, a stage document and the two index updates a
//! run makes (when it starts and when it ends) — for N = 1, 1,000 and
//! 10,000, in a local results folder and in a bucket on the loopback S3
//! server. Goal: run 10,000 costs at most 1.5× run 1 (the baseline, measured
//! in the same run). The runs before N are laid down as the index holds
//! them (chunks of 150), then runs N … N+K are published and timed (the
//! median, and the mean, which includes the runs that move the head's
//! oldest into a chunk).
//! Run with `cargo bench -p sentinel-s3 --bench index` (the S3 server is
//! started by `scripts/s3-server.sh`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region, SharedCredentialsProvider};
use chrono::Utc;
use sentinel_api::index::{
    CHUNKS, ChunkList, ChunkRef, INDEX_SCHEMA, IndexChunk, IndexRoot, ROOT, chunk_key,
};
use sentinel_api::{
    ResolvedInputs, RunDoc, RunId, RunStatus, RunSummary, StageDoc, StageKind, StageStatus,
};
use sentinel_engine::ports::ResultsSink;
use sentinel_results::LocalSink;
use sentinel_results::index::IndexStore;
use sentinel_s3::{S3Config, S3Sink};

/// Runs timed at each size.
const SAMPLES: u32 = 100;

fn id(n: u32) -> RunId {
    format!("01JDX3K6Q2T8W9V5M4N{n:07}").parse().unwrap()
}

fn run_doc(n: u32, status: RunStatus) -> RunDoc {
    RunDoc {
        started: Some(Utc::now()),
        duration_ms: Some(1200),
        ..sentinel_engine::fake::run_doc(&id(n), status)
    }
}

fn stage_doc(n: u32) -> StageDoc {
    StageDoc {
        schema: 1,
        run_id: id(n),
        name: "build".parse().unwrap(),
        kind: StageKind::Container,
        status: StageStatus::Succeeded,
        reason: None,
        failure: None,
        exit_code: Some(0),
        when: "on_success".into(),
        needs: vec![],
        started: Some(Utc::now()),
        finished: Some(Utc::now()),
        duration_ms: Some(1000),
        output: Some("ok".into()),
        outputs: BTreeMap::new(),
        sensitive: false,
        log: None,
        log_bytes: 0,
        log_cut_bytes: 0,
        artifacts: None,
        inputs: ResolvedInputs::default(),
        warnings: vec![],
        steps: vec![],
        cache: None,
        approval: None,
        attempts: Vec::new(),
    }
}

/// Lays down runs `0..n` as the index holds them: chunks of 150, newest first.
async fn seed(store: &dyn IndexStore, n: u32) {
    let mut list = ChunkList::new();
    let mut start = n;
    while start > 0 {
        let from = start.saturating_sub(150);
        let runs: Vec<RunSummary> = (from..start)
            .rev()
            .map(|i| RunSummary::of(&run_doc(i, RunStatus::Succeeded)))
            .collect();
        let key = chunk_key(&id(from));
        let chunk = IndexChunk {
            schema: INDEX_SCHEMA,
            runs,
        };
        store
            .put(&key, serde_json::to_vec(&chunk).unwrap())
            .await
            .unwrap();
        list.chunks.push(ChunkRef {
            from: id(from),
            key,
        });
        start = from;
    }
    let root = IndexRoot {
        chunks: list.chunks.len() as u32,
        floor: n.checked_sub(1).map(id),
        ..IndexRoot::new()
    };
    store
        .put(CHUNKS, serde_json::to_vec(&list).unwrap())
        .await
        .unwrap();
    store
        .put(ROOT, serde_json::to_vec(&root).unwrap())
        .await
        .unwrap();
}

/// Publishes runs `n..n+SAMPLES` as a run does; the median and mean time of one.
async fn publish(sink: &dyn ResultsSink, n: u32) -> (Duration, Duration) {
    let mut times = Vec::new();
    for i in n..n + SAMPLES {
        let t = Instant::now();
        let running = run_doc(i, RunStatus::Running);
        sink.put_run(&running).await.unwrap();
        sink.update_index(&RunSummary::of(&running)).await.unwrap();
        sink.put_stage(&stage_doc(i)).await.unwrap();
        let done = run_doc(i, RunStatus::Succeeded);
        sink.put_run(&done).await.unwrap();
        sink.update_index(&RunSummary::of(&done)).await.unwrap();
        times.push(t.elapsed());
    }
    times.sort();
    let mean = times.iter().sum::<Duration>() / times.len() as u32;
    (times[times.len() / 2], mean)
}

fn s3_sink(prefix: &str) -> S3Sink {
    let s3 = sentinel_testkit::s3_server();
    let creds = Credentials::new(
        &s3["AWS_ACCESS_KEY_ID"],
        &s3["AWS_SECRET_ACCESS_KEY"],
        None,
        None,
        "bench",
    );
    let sdk = aws_config::SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(s3["S3_REGION"].clone()))
        .credentials_provider(SharedCredentialsProvider::new(creds))
        .build();
    S3Sink::with_sdk_config(
        S3Config {
            bucket: s3["S3_BUCKET"].clone(),
            prefix: prefix.to_string(),
            region: Some(s3["S3_REGION"].clone()),
            endpoint: Some(s3["S3_ENDPOINT"].clone()),
            path_style: true,
            role_arn: None,
            external_id: None,
        },
        &sdk,
    )
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let mut rows = Vec::new();
        for (where_, make) in [("local folder", 0), ("S3 (loopback Garage)", 1)] {
            let mut costs = Vec::new();
            for n in [1u32, 1_000, 10_000] {
                let prefix = format!("bench-index-{}-{n}", ulid::Ulid::new().to_string().to_lowercase());
                let sink: Arc<dyn ResultsSink> = if make == 0 {
                    let local = LocalSink::new(tmp.path().join(&prefix));
                    seed(&Folder(&local), n - 1).await;
                    Arc::new(local)
                } else {
                    let s3 = s3_sink(&prefix);
                    seed(&s3, n - 1).await;
                    Arc::new(s3)
                };
                costs.push((n, publish(sink.as_ref(), n).await));
            }
            rows.push((where_, costs));
        }
        println!("Publishing run N (run.json twice, a stage document, two index updates), {SAMPLES} runs each:");
        for (where_, costs) in rows {
            let (base, base_mean) = costs[0].1;
            for (n, (d, mean)) in &costs {
                println!(
                    "  {where_:<22} run {n:>6}: median {:>7.2} ms ({:.2}x run 1; goal <= 1.5x), mean {:>7.2} ms ({:.2}x)",
                    ms(*d),
                    d.as_secs_f64() / base.as_secs_f64(),
                    ms(*mean),
                    mean.as_secs_f64() / base_mean.as_secs_f64()
                );
            }
        }
    });
}

/// A local results folder as index storage (the sink's own is private).
struct Folder<'a>(&'a LocalSink);

#[async_trait::async_trait]
impl IndexStore for Folder<'_> {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, sentinel_engine::StorageError> {
        Ok(std::fs::read(self.0.root().join(key)).ok())
    }
    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), sentinel_engine::StorageError> {
        let path = self.0.root().join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
        Ok(())
    }
    async fn delete(&self, key: &str) -> Result<(), sentinel_engine::StorageError> {
        let _ = std::fs::remove_file(self.0.root().join(key));
        Ok(())
    }
}
