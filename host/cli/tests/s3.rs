//! `sentinel run --s3 …` against the real S3 server on loopback (Garage,
//! started by `scripts/s3-server.sh`): the results land in the bucket under
//! the prefix as well as in the results folder, readable from the bucket's
//! website; with S3 unreachable the run still succeeds and says what waits;
//! a run whose process died, recovered by a read command that has no
//! bucket, reaches the bucket `interrupted` through the outbox; a deploy on
//! another machine starts from the output its build published there.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Output};

use common::Project;

const PIPELINE: &str = "version: 1\nstages:\n  pluck:\n    step: jq-pluck@1\n    with: {input: '{\"k\": \"from-s3-test\"}', filter: .k, raw: 'true'}\n";

use sentinel_testkit::s3_server as s3;

/// `sentinel ARGS` on the project, with the S3 server's credentials.
fn sentinel(p: &Project, s3: &BTreeMap<String, String>, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sentinel"));
    c.arg("-C")
        .arg(&p.source)
        .args(["--state"])
        .arg(&p.state)
        .args(["--results"])
        .arg(&p.results)
        .args(args)
        .env("AWS_ACCESS_KEY_ID", &s3["AWS_ACCESS_KEY_ID"])
        .env("AWS_SECRET_ACCESS_KEY", &s3["AWS_SECRET_ACCESS_KEY"])
        .env_remove("AWS_PROFILE");
    c
}

fn run(p: &Project, s3: &BTreeMap<String, String>, url: &str, endpoint: &str) -> Output {
    sentinel(
        p,
        s3,
        &["run", "--json", "--s3", url, "--s3-endpoint", endpoint],
    )
    .args(["--s3-region", &s3["S3_REGION"], "--s3-path-style"])
    .output()
    .unwrap()
}

/// `sentinel run --from-run FROM` with the bucket.
fn run_from(p: &Project, s3: &BTreeMap<String, String>, url: &str, from: &str) -> Output {
    sentinel(p, s3, &["run", "--json", "--from-run", from, "--s3", url])
        .args([
            "--s3-endpoint",
            &s3["S3_ENDPOINT"],
            "--s3-region",
            &s3["S3_REGION"],
        ])
        .arg("--s3-path-style")
        .output()
        .unwrap()
}

fn run_id(out: &Output) -> String {
    assert!(
        out.status.success(),
        "sentinel run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    let doc: serde_json::Value = serde_json::from_str(&last).unwrap();
    assert_eq!(doc["status"], "succeeded");
    doc["id"].as_str().unwrap().to_string()
}

/// GETs a JSON document from the bucket's website endpoint.
fn from_website(bucket: &str, key: &str) -> serde_json::Value {
    let page = sentinel_testkit::website_get(&s3(), bucket, key);
    assert_eq!(page.status, 200, "GET {key} from the bucket's website");
    serde_json::from_slice(&page.body).unwrap()
}

#[test]
fn results_land_in_the_bucket_too() {
    let s3 = s3();
    let p = Project::new(PIPELINE);
    let prefix = format!("cli-{}", std::process::id());
    let url = format!("s3://{}/{prefix}", s3["S3_BUCKET"]);
    let id = run_id(&run(&p, &s3, &url, &s3["S3_ENDPOINT"]));

    let run = from_website(&s3["S3_BUCKET"], &format!("{prefix}/run/{id}/run.json"));
    assert_eq!(run["status"], "succeeded");
    let stage = from_website(&s3["S3_BUCKET"], &format!("{prefix}/run/{id}/pluck.json"));
    assert_eq!(stage["output"], "from-s3-test");
    let index = from_website(&s3["S3_BUCKET"], &format!("{prefix}/runs/index.json"));
    assert_eq!(index["head"][0]["id"], id.as_str());
    // The results folder has them too (`sentinel show` reads it).
    assert!(p.results.join(format!("run/{id}/run.json")).is_file());
}

#[test]
fn an_unreachable_bucket_does_not_fail_the_run() {
    let s3 = s3();
    let p = Project::new(PIPELINE);
    // Nothing listens on port 9 of loopback.
    let out = run(&p, &s3, "s3://nowhere/x", "http://127.0.0.1:9");
    let id = run_id(&out);
    assert!(p.results.join(format!("run/{id}/run.json")).is_file());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("could not reach s3://nowhere/x/ yet"),
        "says what waits: {err}"
    );
}

#[test]
fn a_dead_run_recovered_by_a_read_command_reaches_the_bucket_interrupted() {
    let s3 = s3();
    let spin = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../steps/dist/guests/spin/step.wasm");
    assert!(spin.is_file(), "run scripts/build-steps.sh first");
    let p = Project::new(&format!(
        "version: 1\nstages:\n  forever:\n    step: '{}'\n",
        spin.display()
    ));
    let prefix = format!("dead-{}", std::process::id());
    let url = format!("s3://{}/{prefix}", s3["S3_BUCKET"]);
    let mut child = sentinel(&p, &s3, &["run", "--s3", &url, "--s3-endpoint"])
        .arg(&s3["S3_ENDPOINT"])
        .args(["--s3-region", &s3["S3_REGION"], "--s3-path-style"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Once the bucket shows the run going, the process dies without warning.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let id = loop {
        let runs = std::fs::read_dir(p.results.join("run"))
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|d| d.ok())
            .map(|d| d.file_name().to_string_lossy().into_owned());
        if let Some(id) = runs {
            let page = sentinel_testkit::website_get(
                &s3,
                &s3["S3_BUCKET"],
                &format!("{prefix}/run/{id}/run.json"),
            );
            let running = page.status == 200
                && serde_json::from_slice::<serde_json::Value>(&page.body)
                    .is_ok_and(|v| v["status"] == "running");
            if running {
                break id;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the run never reached the bucket"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    let status = |key: &str| from_website(&s3["S3_BUCKET"], key)["status"].clone();
    assert_eq!(status(&format!("{prefix}/run/{id}/run.json")), "running");

    // A read command recovers it, without the bucket: the local folder says
    // so at once, the bucket's results wait in the outbox.
    let out = sentinel(&p, &s3, &["runs"]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("was interrupted"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status_out = sentinel(&p, &s3, &["outbox", "status"]).output().unwrap();
    let said = String::from_utf8_lossy(&status_out.stdout).into_owned();
    assert!(
        !said.starts_with("0 result"),
        "results wait for the bucket: {said}"
    );
    assert_eq!(status(&format!("{prefix}/run/{id}/run.json")), "running");

    // The next command that has the bucket (here the outbox's own) sends them.
    let sent = sentinel(&p, &s3, &["outbox", "retry"]).output().unwrap();
    assert!(
        sent.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&sent.stdout),
        String::from_utf8_lossy(&sent.stderr)
    );
    assert_eq!(
        status(&format!("{prefix}/run/{id}/run.json")),
        "interrupted"
    );
}

#[test]
fn a_deploy_elsewhere_starts_from_the_builds_output_in_the_bucket() {
    let s3 = s3();
    let prefix = format!("from-run-{}", std::process::id());
    let url = format!("s3://{}/{prefix}", s3["S3_BUCKET"]);
    let build = Project::new(
        "version: 1\nbox: sentinel/busybox:local\ndefaults: {network: none}\nstages:\n  build:\n    steps:\n      - run: echo 'app v2' > \"$SENTINEL_ARTIFACTS/app.txt\"\n",
    );
    let id = run_id(&run(&build, &s3, &url, &s3["S3_ENDPOINT"]));

    // Another project, state and results folder: only the bucket knows the build.
    let deploy = Project::new(
        "version: 1\nbox: sentinel/busybox:local\ndefaults: {network: none}\nstages:\n  deploy: {run: 'cat app.txt'}\n",
    );
    let deployed = run_id(&run_from(&deploy, &s3, &url, &id));
    let doc: serde_json::Value = serde_json::from_slice(
        &std::fs::read(deploy.results.join(format!("run/{deployed}/run.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(doc["from_run"], id.as_str(), "the run names its build");
    let stage: serde_json::Value = serde_json::from_slice(
        &std::fs::read(deploy.results.join(format!("run/{deployed}/deploy.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(
        stage["output"], "app v2",
        "the build's output is the workspace"
    );

    // A run the bucket does not know: said, nothing runs.
    let out = run_from(&deploy, &s3, &url, "01M000000000000000000000AA");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("no run 01M000000000000000000000AA in the results at"),
        "{err}"
    );
}

/// Two servers with their own state folders share one cache in a private
/// prefix of the bucket: what the first saved, the second restores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_cache_lives_in_the_bucket() {
    use common::server::{Client, Server, bare_repo, free_port};
    common::docker().await;
    let s3 = s3();
    let tmp = tempfile::tempdir().unwrap();
    let pipeline = concat!(
        "version: 1\nbox: sentinel/busybox:local\ndefaults: {network: none}\nstages:\n",
        "  deps:\n",
        "    steps:\n",
        "      - run: cat \"$SENTINEL_CACHE_DIR/tool\" 2>/dev/null || echo no-tool\n",
        "      - run: echo \"tool-$(cat lock)\" > \"$SENTINEL_CACHE_DIR/tool\"\n",
        "    cache: {key: 'deps-${hash(lock)}', paths: [$SENTINEL_CACHE_DIR]}\n",
    );
    let (url, _) = bare_repo(
        &tmp.path().join("app"),
        &[("sentinel.yml", pipeline), ("lock", "v1")],
    );
    let config = tmp.path().join("server.toml");
    std::fs::write(
        &config,
        format!(
            "[repos.app]\nurl = \"{url}\"\n[cache]\nurl = \"s3://{}/cache-{}\"\nendpoint = \"{}\"\nregion = \"{}\"\npath_style = true\n",
            s3["S3_BUCKET"],
            std::process::id(),
            s3["S3_ENDPOINT"],
            s3["S3_REGION"],
        ),
    )
    .unwrap();
    let env = [
        ("AWS_ACCESS_KEY_ID", s3["AWS_ACCESS_KEY_ID"].as_str()),
        (
            "AWS_SECRET_ACCESS_KEY",
            s3["AWS_SECRET_ACCESS_KEY"].as_str(),
        ),
    ];
    let mut docs = Vec::new();
    for state in ["state-a", "state-b"] {
        let port = free_port().to_string();
        let server = Server::start(
            &tmp.path().join(state),
            &[
                "--config",
                config.to_str().unwrap(),
                "--listen",
                &format!("127.0.0.1:{port}"),
            ],
            &env,
        );
        let c = Client::new(&server.url, &server.admin);
        let id = c.trigger("app").await;
        let v = c.wait_final(&id).await;
        assert_eq!(v["run"]["status"], "succeeded", "{v}\n{}", server.log());
        let (_, log) = c.text(&format!("/api/v1/runs/{id}/stages/deps/log")).await;
        docs.push((v["stages"][0]["cache"].clone(), log));
        server.stop();
    }
    let (first, log1) = &docs[0];
    assert_eq!(first["result"], "miss", "{first}");
    assert!(
        first["saved_bytes"].as_u64().is_some_and(|n| n > 0),
        "{first}"
    );
    assert!(log1.contains("no-tool"), "{log1}");
    let (second, log2) = &docs[1];
    assert_eq!(second["result"], "hit", "{second}");
    assert_eq!(second["key"], first["key"]);
    assert!(log2.contains("tool-v1"), "restored from the bucket: {log2}");
}

/// Retention over 5,000 runs, 1,000 of them also in the bucket, seeded
/// through the store and the sinks: `sentinel runs prune --older-than 30d
/// --keep-last 60` lists (dry) and then removes exactly the ended runs
/// older than 30 days past the newest 60 of their pipeline and branch —
/// from the store (documents, stages, sealed outputs), the results folder
/// and the bucket (files and index pages), and the kept files — and never a
/// deployment's run, the run it came from, a run marked `keep` or a run
/// still going.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_prunes_exactly_the_runs_outside_the_policy() {
    use sentinel_api::{RunDoc, RunId, RunStatus, RunSummary, StageDoc};
    use sentinel_engine::{ResultsSink as _, Store as _};
    let s3 = s3();
    let p = Project::new("version: 1\nstages:\n  a: {run: 'true'}\n");
    let prefix = format!("retention-{}", std::process::id());
    let url = format!("s3://{}/{prefix}", s3["S3_BUCKET"]);
    let cfg = sentinel_s3::S3Config::at(
        &url,
        Some(s3["S3_ENDPOINT"].clone()),
        Some(s3["S3_REGION"].clone()),
        true,
    )
    .unwrap();
    let bucket =
        sentinel_s3::S3Sink::with_keys(cfg, &s3["AWS_ACCESS_KEY_ID"], &s3["AWS_SECRET_ACCESS_KEY"]);
    let local = sentinel_results::LocalSink::new(&p.results);
    let now = chrono::Utc::now();
    let groups = [
        ("app", "main"),
        ("app", "dev"),
        ("lib", "main"),
        ("lib", "dev"),
    ];
    let mut runs: Vec<RunDoc> = Vec::new();
    let seeded = std::time::Instant::now();
    {
        let store = sentinel_store::SledStore::try_open(&p.state).unwrap();
        for i in 0..5000u64 {
            // One run an hour, oldest first; `lib/dev` only every 50th.
            let created =
                now - chrono::Duration::hours(5000 - i as i64) - chrono::Duration::minutes(30);
            let ms = created.timestamp_millis() as u64;
            let id: RunId = ulid::Ulid::from_parts(ms, u128::from(i))
                .to_string()
                .parse()
                .unwrap();
            let (pipeline, branch) = match i {
                i if i % 50 == 0 => groups[3],
                i => groups[(i % 3) as usize],
            };
            let mut run = sentinel_engine::fake::run_doc(&id, RunStatus::Succeeded);
            run.pipeline = pipeline.into();
            run.created = created;
            run.git = Some(sentinel_api::GitContext {
                repo: None,
                branch: Some(branch.into()),
                commit: None,
            });
            if i == 300 {
                run.status = RunStatus::Running;
            }
            let stage: StageDoc = serde_json::from_value(serde_json::json!({
                "schema": 1, "run_id": id, "name": "a", "kind": "container",
                "status": "succeeded", "when": "on_success", "needs": [],
                "log": "a.log", "inputs": {}
            }))
            .unwrap();
            store.put_run(&run, false).await.unwrap();
            store.put_stage(&stage).await.unwrap();
            let name = "a".parse().unwrap();
            store
                .keep_outputs(
                    &id,
                    &name,
                    &sentinel_engine::ports::KeptOutputs {
                        output: format!("out {i}"),
                        outputs: Default::default(),
                    },
                )
                .await
                .unwrap();
            let kept = p.state.join("kept").join(id.as_str()).join("a");
            std::fs::create_dir_all(&kept).unwrap();
            std::fs::write(kept.join("made.txt"), format!("file {i}")).unwrap();
            let log = sentinel_engine::ports::LogBody::Memory(format!("log {i}\n").into_bytes());
            let mut sinks: Vec<&dyn sentinel_engine::ResultsSink> = vec![&local];
            if (3500..4500).contains(&i) {
                sinks.push(&bucket);
            }
            for sink in sinks {
                sink.put_log(&id, &name, None, &log).await.unwrap();
                sink.put_stage(&stage).await.unwrap();
                sink.put_run(&run).await.unwrap();
                sink.update_index(&RunSummary::of(&run)).await.unwrap();
            }
            runs.push(run);
        }
        // A deployment (current) of run 100, promoted from run 50.
        let (deployed, from) = (runs[100].id.clone(), runs[50].id.clone());
        let doc = sentinel_api::DeploymentDoc {
            schema: 1,
            id: ulid::Ulid::new().to_string(),
            app: "app".into(),
            environment: "production".into(),
            version: "1".into(),
            source: sentinel_api::DeploySource::Promotion {
                from_run: from.clone(),
                rollback: false,
            },
            status: sentinel_api::DeploymentStatus::Queued,
            reason: None,
            run: None,
            requested: now,
            finished: None,
            approval: None,
            facts: None,
        };
        let entry = sentinel_engine::ports::QueueEntry {
            run_id: deployed.clone(),
            pipeline: "app".into(),
            trigger: runs[100].trigger.clone(),
            request: serde_json::json!({}),
            attempt: 1,
            enqueued: now,
            claim: None,
        };
        store.request_deployment(&doc, &entry, false).await.unwrap();
        store
            .deployment_follows(
                &doc.id,
                &deployed,
                sentinel_api::DeploymentStatus::Succeeded,
                None,
                Some(now),
            )
            .unwrap();
        store.flush().await.unwrap();
    }
    eprintln!(
        "seeded 5,000 runs (1,000 in the bucket) in {:?}",
        seeded.elapsed()
    );
    let keep = sentinel(&p, &s3, &["runs", "keep", runs[200].id.as_str()])
        .output()
        .unwrap();
    assert!(keep.status.success(), "{keep:?}");

    // What the policy lets go, worked out here on its own terms.
    let protected: Vec<usize> = vec![50, 100, 200, 300];
    let mut rank = BTreeMap::new();
    let mut expected = std::collections::BTreeSet::new();
    for (i, r) in runs.iter().enumerate().rev() {
        let group = (r.pipeline.clone(), r.git.as_ref().unwrap().branch.clone());
        let n = rank.entry(group).or_insert(0);
        *n += 1;
        let old = now - r.created > chrono::Duration::days(30);
        if old && *n > 60 && !protected.contains(&i) {
            expected.insert(r.id.to_string());
        }
    }
    assert!(
        expected.len() > 4000 && expected.len() < 4300,
        "{}",
        expected.len()
    );
    let prune = |dry: bool| {
        let mut args = vec!["runs", "prune", "--older-than", "30d", "--keep-last", "60"];
        if dry {
            args.push("--dry-run");
        }
        args.extend(["--s3", &url, "--s3-endpoint", &s3["S3_ENDPOINT"]]);
        args.extend(["--s3-region", &s3["S3_REGION"], "--s3-path-style"]);
        sentinel(&p, &s3, &args).output().unwrap()
    };
    let listed = |out: &Output, verb: &str| -> std::collections::BTreeSet<String> {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix(verb))
            .filter_map(|l| l.split_whitespace().next().map(String::from))
            .collect()
    };
    let dry = prune(true);
    assert!(dry.status.success(), "{dry:?}");
    same(
        &listed(&dry, "would remove "),
        &expected,
        "the dry run lists exactly the runs outside the policy",
    );
    assert_eq!(
        local.list_index(10_000).await.unwrap().len(),
        5000,
        "a dry run removes nothing"
    );
    let started = std::time::Instant::now();
    let out = prune(false);
    eprintln!(
        "pruned in {:?}: {}",
        started.elapsed(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    same(&listed(&out, "removed "), &expected, "removed");

    // Every place: the store, the results folder and its index, the bucket
    // and its index, the kept files.
    let store = sentinel_store::SledStore::try_open(&p.state).unwrap();
    let left = ids(store.list_runs(10_000).await.unwrap().iter().map(|r| &r.id));
    let all: std::collections::BTreeSet<String> = runs.iter().map(|r| r.id.to_string()).collect();
    let want: std::collections::BTreeSet<String> = all.difference(&expected).cloned().collect();
    same(&left, &want, "the store keeps exactly the others");
    for i in protected {
        assert!(left.contains(runs[i].id.as_str()), "run {i} is protected");
    }
    let indexed = ids(local
        .list_index(10_000)
        .await
        .unwrap()
        .iter()
        .map(|r| &r.id));
    same(
        &indexed,
        &want,
        "the folder's index pages list exactly the others",
    );
    let in_bucket = ids(bucket
        .list_index(10_000)
        .await
        .unwrap()
        .iter()
        .map(|r| &r.id));
    let bucket_want: std::collections::BTreeSet<String> = runs[3500..4500]
        .iter()
        .map(|r| r.id.to_string())
        .filter(|id| !expected.contains(id))
        .collect();
    same(&in_bucket, &bucket_want, "the bucket's index pages too");
    for r in &runs {
        let gone = expected.contains(r.id.as_str());
        let dir = p.results.join("run").join(r.id.as_str());
        assert_eq!(!dir.exists(), gone, "results folder of {}", r.id);
        let kept = p.state.join("kept").join(r.id.as_str());
        assert_eq!(!kept.exists(), gone, "kept files of {}", r.id);
        let sealed = store
            .kept_outputs(&r.id, &"a".parse().unwrap())
            .await
            .unwrap();
        assert_eq!(sealed.is_none(), gone, "sealed outputs of {}", r.id);
        assert_eq!(store.get_stages(&r.id).await.unwrap().is_empty(), gone);
    }
    for r in &runs[3500..4500] {
        let doc = bucket.get_run(&r.id).await.unwrap();
        let log = bucket.get_log(&r.id, &"a".parse().unwrap()).await.unwrap();
        let gone = expected.contains(r.id.as_str());
        assert_eq!(
            doc.is_none() && log.is_none(),
            gone,
            "bucket files of {}",
            r.id
        );
    }
}

/// Run ids as a set of strings.
fn ids<'a>(
    ids: impl Iterator<Item = &'a sentinel_api::RunId>,
) -> std::collections::BTreeSet<String> {
    ids.map(|id| id.to_string()).collect()
}

/// Two sets of run ids are equal; else what each has that the other lacks.
fn same(
    got: &std::collections::BTreeSet<String>,
    want: &std::collections::BTreeSet<String>,
    what: &str,
) {
    let extra: Vec<_> = got.difference(want).take(5).collect();
    let missing: Vec<_> = want.difference(got).take(5).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "{what}: {} vs {} expected; not expected: {extra:?}; missing: {missing:?}",
        got.len(),
        want.len()
    );
}
