//! An S3 outage in the middle of a run: the run completes anyway, its
//! results wait in the durable outbox, and once S3 answers again every
//! result is uploaded in order and exactly once — counted by a loopback
//! proxy in front of the real S3 server, which the test takes down for 30 s.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::proxy::Proxy;
use common::{sink, sink_via, unique};
use sentinel_api::{RunStatus, StageStatus};
use sentinel_engine::outbox::OutboxSink;
use sentinel_engine::ports::{Outbox, ResultsSink};
use sentinel_engine::{Engine, EngineConfig, Progress, RunRequest, Signals};
use sentinel_pipeline::DirCatalog;

const OUTAGE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_survive_an_s3_outage_and_go_up_exactly_once() {
    let dist = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../steps/dist");
    assert!(
        dist.join("jq-pluck/step.wasm").is_file(),
        "build the steps first: scripts/build-steps.sh"
    );
    let s3 = common::s3_server();
    let upstream = s3["S3_ENDPOINT"]
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let proxy = Proxy::start(upstream).await;
    let prefix = unique("outage");
    let direct = sink(&prefix);
    let via_proxy = sink_via(&prefix, Some(format!("http://{}", proxy.addr)));

    let tmp = tempfile::tempdir().unwrap();
    let store = sentinel_store::SledStore::try_open(&tmp.path().join("db")).unwrap();
    let outbox: Arc<dyn Outbox> = Arc::new(store.clone());
    let results = OutboxSink::start(Arc::new(via_proxy), outbox, tmp.path().join("spool")).await;
    let engine = Engine {
        exec: Arc::new(sentinel_wasm::WasmExecutor::new(&tmp.path().join("cache")).unwrap()),
        store: Arc::new(store),
        sink: results.clone(),
        config: EngineConfig {
            jobs: 1,
            state_dir: tmp.path().join("state"),
            keep_workspace: false,
            keep_files: sentinel_engine::EngineConfig::KEEP_FILES,
        },
    };
    let stages = ["a", "b", "c", "d", "e"];
    let mut yaml = String::from("version: 1\nstages:\n");
    for (i, s) in stages.iter().enumerate() {
        let after = if i == 0 {
            String::new()
        } else {
            format!(", after: [{}]", stages[i - 1])
        };
        yaml.push_str(&format!(
            "  {s}: {{step: jq-pluck@1, with: {{input: '{{\"v\": \"{s}-out\"}}', filter: .v, raw: 'true'}}{after}}}\n"
        ));
    }
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let catalog = DirCatalog { dirs: vec![dist] };
    let plan =
        sentinel_pipeline::parse_str_with(&yaml, "sentinel.yml", "outage", &catalog, &src).unwrap();

    // S3 goes away as soon as the first stage is done, and comes back 30 s later.
    let back_at: Arc<std::sync::Mutex<Option<Instant>>> = Arc::default();
    let progress = {
        let (proxy, back_at) = (proxy.clone(), back_at.clone());
        let rt = tokio::runtime::Handle::current();
        Arc::new(move |p: Progress| {
            if let Progress::Stage { name, status, .. } = p
                && name.as_str() == "a"
                && status == StageStatus::Succeeded
            {
                proxy.down();
                *back_at.lock().unwrap() = Some(Instant::now() + OUTAGE);
                let proxy = proxy.clone();
                rt.spawn(async move {
                    tokio::time::sleep(OUTAGE).await;
                    proxy.up().await;
                });
            }
        })
    };
    let doc = engine
        .run(RunRequest::local(plan, src), progress, Signals::default())
        .await
        .unwrap();
    assert_eq!(doc.status, RunStatus::Succeeded, "{:?}", doc.reason);
    let back = back_at.lock().unwrap().expect("the first stage finished");
    assert!(
        Instant::now() < back,
        "the run completed while S3 was away (it does not wait for S3)"
    );
    assert!(results.waiting() > 0, "results wait in the outbox");

    // Once S3 answers again, the outbox empties.
    let deadline = back + Duration::from_secs(60);
    while results.waiting() > 0 {
        assert!(
            Instant::now() < deadline,
            "{} results still wait 60 s after S3 came back",
            results.waiting()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Everything is there, as the run ended.
    let run = direct.get_run(&doc.id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Succeeded);
    assert!(
        run.stages
            .iter()
            .all(|s| s.status == StageStatus::Succeeded)
    );
    for s in stages {
        let name = s.parse().unwrap();
        let stage = direct.get_stage(&doc.id, &name).await.unwrap().unwrap();
        assert_eq!(stage.output.as_deref(), Some(format!("{s}-out").as_str()));
        let log = direct.get_log(&doc.id, &name).await.unwrap().unwrap();
        assert_eq!(String::from_utf8_lossy(&log), format!("{s}-out\n"));
    }
    let index = direct.list_index(10).await.unwrap();
    assert_eq!(index[0].id, doc.id);
    assert_eq!(index[0].status, RunStatus::Succeeded);

    // Exactly once: every stage document and log was PUT once through the proxy.
    let counts = proxy.counts();
    let bucket = direct.bucket();
    for s in stages {
        for ext in ["json", "log"] {
            let key = format!("PUT /{bucket}/{prefix}/run/{}/{s}.{ext}", doc.id);
            assert_eq!(counts.get(&key), Some(&1), "{key}: {counts:#?}");
        }
    }
    let runs = counts
        .get(&format!("PUT /{bucket}/{prefix}/run/{}/run.json", doc.id))
        .copied()
        .unwrap_or(0);
    assert!(runs >= 1, "run.json was uploaded: {counts:#?}");
}
