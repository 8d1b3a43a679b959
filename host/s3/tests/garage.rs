//! The S3 sink against a real S3 server on loopback (Garage, started by
//! `scripts/s3-server.sh`): a run's documents land under the prefix in the
//! documented layout, and a 200 MiB artifact goes up in parts and comes back
//! byte for byte.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

use sentinel_api::{RunStatus, StageDoc};
use sentinel_engine::ports::ResultsSink;
use sentinel_engine::{Engine, EngineConfig, RunRequest, Signals};
use sentinel_pipeline::DirCatalog;
use sentinel_s3::{PART_SIZE, S3Sink};

mod common;
use common::{sink, unique};
use sha2::Digest;

async fn keys_under(sink: &S3Sink, prefix: &str) -> Vec<String> {
    let out = sink
        .client()
        .list_objects_v2()
        .bucket(sink.bucket())
        .prefix(prefix)
        .send()
        .await
        .unwrap();
    let mut keys: Vec<String> = out
        .contents()
        .iter()
        .filter_map(|o| o.key().map(|k| k.trim_start_matches(prefix).to_string()))
        .collect();
    keys.sort();
    keys
}

fn dist() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../steps/dist")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_lands_under_the_prefix_in_the_results_layout() {
    let prefix = unique("layout");
    let s3 = Arc::new(sink(&format!("{prefix}/")));
    let tmp = tempfile::tempdir().unwrap();
    let wasm = sentinel_wasm::WasmExecutor::new(&tmp.path().join("cache")).unwrap();
    let engine = Engine {
        exec: Arc::new(wasm),
        store: Arc::new(sentinel_store::SledStore::try_open(&tmp.path().join("db")).unwrap()),
        sink: s3.clone(),
        config: EngineConfig {
            jobs: 2,
            state_dir: tmp.path().join("state"),
            keep_workspace: false,
            keep_files: sentinel_engine::EngineConfig::KEEP_FILES,
        },
    };
    assert!(
        dist().join("jq-pluck/step.wasm").is_file(),
        "build the steps first: scripts/build-steps.sh"
    );
    let yaml = format!(
        "version: 1\nstages:\n  pluck:\n    step: jq-pluck@1\n    with: {{input: '{{\"k\": \"value-42\"}}', filter: .k, raw: 'true'}}\n  quiet:\n    step: '{}'\n    after: [pluck]\n",
        dist().join("guests/noop/step.wasm").display()
    );
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let catalog = DirCatalog { dirs: vec![dist()] };
    let plan =
        sentinel_pipeline::parse_str_with(&yaml, "sentinel.yml", "layout", &catalog, &src).unwrap();
    let doc = engine
        .run(
            RunRequest::local(plan, src),
            Arc::new(|_| {}),
            Signals::default(),
        )
        .await
        .unwrap();
    assert_eq!(doc.status, RunStatus::Succeeded, "{:?}", doc.reason);

    let id = doc.id.as_str();
    assert_eq!(
        keys_under(&s3, &format!("{prefix}/")).await,
        vec![
            format!("run/{id}/pluck.json"),
            format!("run/{id}/pluck.log"),
            format!("run/{id}/quiet.json"),
            format!("run/{id}/run.json"),
            "runs/index.json".to_string(),
        ],
        "the documented layout under the prefix (a stage that printed nothing has no log)"
    );
    let run = s3.get_run(&doc.id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Succeeded);
    assert_eq!(run.stages.len(), 2);
    let pluck: StageDoc = s3
        .get_stage(&doc.id, &"pluck".parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pluck.output.as_deref(), Some("value-42"));
    assert_eq!(pluck.log.as_deref(), Some("pluck.log"));
    let log = s3
        .get_log(&doc.id, &"pluck".parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&log), "value-42\n");
    let index = s3.list_index(10).await.unwrap();
    assert_eq!(index[0].id, doc.id);
    assert_eq!(index[0].status, RunStatus::Succeeded);
    // Content types let a browser (and the web app) read them straight from the bucket.
    let head = s3
        .client()
        .head_object()
        .bucket(s3.bucket())
        .key(format!("{prefix}/run/{id}/run.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_type(), Some("application/json"));
    assert!(
        s3.get_run(&"01JDX3K6Q2T8W9V5M4N3P2R1S0".parse().unwrap())
            .await
            .unwrap()
            .is_none()
    );
}

/// Deterministic bytes that do not compress.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mib_artifact_goes_up_in_parts_and_comes_back_whole() {
    let prefix = unique("big");
    let s3 = sink(&prefix);
    let tmp = tempfile::tempdir().unwrap();
    let art = tmp.path().join("artifacts");
    std::fs::create_dir_all(&art).unwrap();
    let data = noise(200 << 20);
    let original = hex::encode(sha2::Sha256::digest(&data));
    std::fs::File::create(art.join("image.bin"))
        .unwrap()
        .write_all(&data)
        .unwrap();
    drop(data);

    let run: sentinel_api::RunId = ulid::Ulid::new().to_string().parse().unwrap();
    let stage = "build".parse().unwrap();
    let key = s3.put_artifacts(&run, &stage, &art).await.unwrap();
    assert_eq!(key.as_deref(), Some("build.zip"));

    let full = format!("{prefix}/run/{run}/build.zip");
    let head = s3
        .client()
        .head_object()
        .bucket(s3.bucket())
        .key(&full)
        .send()
        .await
        .unwrap();
    let etag = head
        .e_tag()
        .unwrap_or_default()
        .trim_matches('"')
        .to_string();
    let parts: usize = etag
        .rsplit_once('-')
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or(1);
    let size = head.content_length().unwrap_or(0) as usize;
    assert!(
        size > 200 << 20,
        "the zip holds the whole file: {size} bytes"
    );
    assert_eq!(
        parts,
        size.div_ceil(PART_SIZE),
        "ETag {etag}: uploaded in parts"
    );
    assert!(parts >= 2);

    let got = s3
        .client()
        .get_object()
        .bucket(s3.bucket())
        .key(&full)
        .send()
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes();
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(got)).unwrap();
    let mut file = zip.by_name("image.bin").unwrap();
    let mut back = Vec::new();
    file.read_to_end(&mut back).unwrap();
    assert_eq!(hex::encode(sha2::Sha256::digest(&back)), original);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_upload_carries_its_sha256_and_the_server_refuses_a_corrupted_one() {
    use base64::Engine as _;
    let upstream = sentinel_testkit::s3_server()["S3_ENDPOINT"]
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let proxy = common::proxy::Proxy::start(upstream).await;
    proxy.keep.store(true, std::sync::atomic::Ordering::SeqCst);
    let s3 = common::sink_via(&unique("sum"), Some(format!("http://{}", proxy.addr)));
    let run: sentinel_api::RunId = ulid::Ulid::new().to_string().parse().unwrap();
    let stage: sentinel_api::StageName = "build".parse().unwrap();
    s3.put_log(
        &run,
        &stage,
        None,
        &sentinel_engine::ports::LogBody::Memory(b"a log line\n".to_vec()),
    )
    .await
    .unwrap();
    let puts = proxy.puts.lock().unwrap().clone();
    assert!(!puts.is_empty(), "the sink PUT through the proxy");
    for (head, body) in &puts {
        let want = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(body));
        let sent = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("x-amz-checksum-sha256")
                    .then(|| v.trim().to_string())
            })
            .unwrap_or_else(|| panic!("a PUT without its SHA-256:\n{head}"));
        assert_eq!(sent, want, "the SHA-256 sent is the body's");
    }
    // A body changed on the way no longer matches: the server refuses it,
    // and the sink says so (for good: trying again sends the same bytes).
    proxy
        .corrupt
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let err = s3
        .put_log(
            &run,
            &stage,
            None,
            &sentinel_engine::ports::LogBody::Memory(b"another line\n".to_vec()),
        )
        .await
        .unwrap_err();
    assert!(
        !err.is_transient(),
        "a refused checksum is permanent: {err}"
    );
}
