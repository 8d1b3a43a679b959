//! Publishing steps, end to end with the real parts: a step made by
//! `sentinel step new`, built for wasm32-wasip2 by `sentinel step build`
//! (inside `sentinel step test`), published to a folder, a bucket on the S3
//! server and an OCI registry of the test's own (Debian's `docker-registry`
//! on a free loopback port), listed, resolved by `name@^1` into
//! `sentinel.lock` and run; then run again from the cache with that registry
//! gone; the lock kept under `--locked` and moved by `step update`; bytes
//! changed under a published version refused; a pipeline's own registry; a
//! published script step in a job; a server running what a committed lock
//! pins. Signatures, credentials, interop with
//! `wkg` and `step build`'s refusals are in `step_trust.rs`.

mod common;

use common::server::{Client, Server, bare_repo};
use common::steps::{
    OwnRegistry, Proj, digest_said, fails, greet, greet_at, ok, publish, publish_cmd, ran,
    registry_config, scratch,
};

/// `step new` → `step build` (inside `step test`) → `step publish` to a
/// registry → a clean state resolves `greet@^1`, writes the lock, runs;
/// `more` is done between the first run and the second (from the cache).
fn publish_and_run(url: &str, extra: &str, more: impl FnOnce()) {
    let cfg = registry_config(url, extra);
    let p = Proj::new("greet@^1", &cfg);
    let said = publish(greet(), "r", &[], &p.config);
    assert!(said.contains("published greet 1.0.0"), "{said}");
    let listed = ok(
        p.cmd(&["step", "versions", "greet@^1"]).output().unwrap(),
        "step versions",
    );
    assert!(
        listed.starts_with("1.0.0") && listed.contains("← greet@^1"),
        "{listed}"
    );
    let step = ran(&p, &[]);
    assert!(
        step.starts_with("greet@^1 = greet 1.0.0 (sha256:"),
        "{step}"
    );
    let lock = p.lock();
    assert!(
        lock.contains("reference = \"greet@^1\"") && lock.contains("version = \"1.0.0\""),
        "{lock}"
    );
    let source = url.trim_end_matches('/');
    assert!(lock.contains(&format!("source = \"{source}")), "{lock}");
    more();
    ran(&p, &["--locked"]);
}

#[test]
fn a_new_step_runs_from_a_folder_registry() {
    let reg = scratch("folder-reg-");
    publish_and_run(&format!("file://{}", reg.display()), "", || {
        // The folder is gone: the cache has it.
        std::fs::remove_dir_all(&reg).unwrap();
    });
}

#[test]
fn a_new_step_runs_from_an_s3_registry() {
    let s3 = sentinel_testkit::s3_server();
    let url = format!("s3://{}/steps-{}", s3["S3_BUCKET"], ulid::Ulid::new());
    let extra = format!(
        "endpoint = \"{}\"\nregion = \"{}\"\n",
        s3["S3_ENDPOINT"], s3["S3_REGION"]
    );
    let cfg = registry_config(&url, &extra);
    let p = Proj::new("greet@^1", &cfg);
    let mut c = publish_cmd(greet(), "r", &p.config);
    c.env("AWS_ACCESS_KEY_ID", &s3["AWS_ACCESS_KEY_ID"])
        .env("AWS_SECRET_ACCESS_KEY", &s3["AWS_SECRET_ACCESS_KEY"]);
    ok(c.output().unwrap(), "publish to S3");
    let run = |args: &[&str]| {
        p.cmd(&["run"])
            .args(args)
            .env("AWS_ACCESS_KEY_ID", &s3["AWS_ACCESS_KEY_ID"])
            .env("AWS_SECRET_ACCESS_KEY", &s3["AWS_SECRET_ACCESS_KEY"])
            .output()
            .unwrap()
    };
    let listed = ok(
        p.cmd(&["step", "versions", "r:greet"])
            .env("AWS_ACCESS_KEY_ID", &s3["AWS_ACCESS_KEY_ID"])
            .env("AWS_SECRET_ACCESS_KEY", &s3["AWS_SECRET_ACCESS_KEY"])
            .output()
            .unwrap(),
        "step versions in S3",
    );
    assert!(
        listed.starts_with("1.0.0 ") && listed.contains("sha256:"),
        "{listed}"
    );
    ok(run(&[]), "run from S3");
    assert_eq!(p.stage()["status"], "succeeded");
    assert!(
        p.lock()
            .contains(&format!("source = \"{url}/greet/1.0.0\"")),
        "{}",
        p.lock()
    );
    // Without credentials nothing could be read from the bucket: the cache.
    ok(p.run(&["--locked"]), "run from the cache");
    assert_eq!(p.stage()["status"], "succeeded");
}

#[test]
fn a_new_step_runs_from_an_oci_registry_then_from_the_cache_with_it_stopped() {
    let reg = OwnRegistry::start();
    let url = format!("oci://{}/steps", reg.addr);
    let addr = reg.addr.clone();
    publish_and_run(&url, "", move || reg.stop());
    // The registry is gone: publishing to it now fails, saying so.
    let p = Proj::new(
        "greet@^1",
        &registry_config(&format!("oci://{addr}/steps"), ""),
    );
    let e = fails(
        publish_cmd(greet(), "r", &p.config).output().unwrap(),
        "publish to a stopped registry",
    );
    assert!(e.contains(&addr), "{e}");
}

#[test]
fn locked_runs_keep_the_pinned_version_until_step_update_moves_it() {
    let reg = scratch("lock-reg-");
    let url = format!("file://{}", reg.display());
    let p = Proj::new("greet@^1", &registry_config(&url, ""));
    publish(greet(), "r", &[], &p.config);
    assert!(ran(&p, &[]).contains("greet 1.0.0"));
    let pinned = p.lock();
    publish(&greet_at("1.1.0"), "r", &[], &p.config);
    let listed = ok(
        p.cmd(&["step", "versions", "greet@~1.0"]).output().unwrap(),
        "step versions",
    );
    let lines: Vec<&str> = listed.lines().collect();
    assert!(
        lines[0].starts_with("1.1.0")
            && lines[1].starts_with("1.0.0")
            && lines[1].contains("← greet@~1.0"),
        "{listed}"
    );
    assert!(ran(&p, &["--locked"]).contains("greet 1.0.0"));
    // Without --locked the lock is used just the same.
    assert!(ran(&p, &[]).contains("greet 1.0.0"));
    assert_eq!(p.lock(), pinned);
    let said = p.cmd(&["step", "update"]).output().unwrap();
    let err = String::from_utf8_lossy(&said.stderr).into_owned();
    ok(said, "step update");
    assert!(err.contains("1.0.0") && err.contains("1.1.0"), "{err}");
    assert!(p.lock().contains("version = \"1.1.0\""), "{}", p.lock());
    assert!(ran(&p, &["--locked"]).contains("greet 1.1.0"));
    // A reference the lock lacks is refused under --locked, named.
    std::fs::write(
        p.dir.join("sentinel.yml"),
        "version: 1\nstages:\n  hello:\n    step: greet@~1.0\n    with: {who: world}\n",
    )
    .unwrap();
    let e = fails(p.run(&["--locked"]), "a run whose lock lacks a reference");
    assert!(e.contains("greet@~1.0") && e.contains("--locked"), "{e}");
    assert!(ran(&p, &[]).contains("greet 1.0.0"));
    let lock = p.lock();
    assert!(
        lock.contains("greet@~1.0") && !lock.contains("greet@^1"),
        "{lock}"
    );
}

#[test]
fn bytes_changed_under_a_published_version_are_refused_naming_both_digests() {
    let reg = scratch("tamper-reg-");
    let url = format!("file://{}", reg.display());
    let p = Proj::new("greet@^1", &registry_config(&url, ""));
    let said = publish(greet(), "r", &[], &p.config);
    let first = digest_said(&said);
    ran(&p, &[]);
    // Other bytes as the same version: a publish refuses, --force replaces.
    let other = scratch("other-").join("greet");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::copy(greet().join("step.toml"), other.join("step.toml")).unwrap();
    std::fs::copy(
        sentinel_testkit::repo_root().join("steps/dist/guests/noop/step.wasm"),
        other.join("step.wasm"),
    )
    .unwrap();
    let e = fails(
        publish_cmd(&other, "r", &p.config).output().unwrap(),
        "publishing other bytes as 1.0.0",
    );
    assert!(e.contains("already published with other content"), "{e}");
    let said = publish(&other, "r", &["--force"], &p.config);
    let second = digest_said(&said);
    assert_ne!(first, second);
    // A clean state folder must pull again: the pinned run refuses.
    std::fs::remove_dir_all(p.dir.join(".sentinel")).unwrap();
    let e = fails(p.run(&["--locked"]), "the pinned run of changed bytes");
    assert!(
        e.contains(&first) && e.contains(&second),
        "both digests named: {e}"
    );
}

#[test]
fn a_published_script_step_runs_in_a_job() {
    // A wercker step folder, published as a tar to a folder registry.
    let step = scratch("script-step-").join("upload");
    std::fs::create_dir_all(&step).unwrap();
    std::fs::write(
        step.join("step.yml"),
        "name: upload\nversion: 2.0.0\nproperties:\n  - name: target\n    type: string\n    required: true\n",
    )
    .unwrap();
    std::fs::write(
        step.join("run.sh"),
        "echo \"uploading to $WERCKER_UPLOAD_TARGET\"\n",
    )
    .unwrap();
    let reg = scratch("script-reg-");
    let cfg = registry_config(&format!("file://{}", reg.display()), "");
    let p = Proj::new("unused", &cfg);
    let said = publish(&step, "r", &["--owner", "acme"], &p.config);
    assert!(said.contains("published upload 2.0.0"), "{said}");
    assert!(reg.join("acme/upload/2.0.0/step.tar").is_file());
    std::fs::write(
        p.dir.join("sentinel.yml"),
        "version: 1\nbox: sentinel/busybox:local\ndefaults: {network: none}\nstages:\n  hello:\n    steps:\n      - step: r:acme/upload@2\n        with: {target: production}\n",
    )
    .unwrap();
    ok(p.run(&[]), "a job with a published script step");
    let doc = p.stage();
    assert_eq!(doc["status"], "succeeded", "{doc}");
    let run = std::fs::read_dir(p.dir.join(".sentinel/results/run"))
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    let log = std::fs::read_to_string(run.join("hello.log")).unwrap();
    assert!(log.contains("uploading to production"), "{log}");
    assert!(p.lock().contains("source = \"file://"), "{}", p.lock());
}

#[test]
fn a_pipeline_names_its_own_step_registry() {
    let reg = scratch("pipeline-reg-");
    let url = format!("file://{}", reg.display());
    let p = Proj::new("unused", "");
    publish(greet(), &url, &[], &p.config);
    let pipeline = |name: &str| {
        format!(
            "version: 1\nregistries:\n  {name}: {{steps: \"{url}\"}}\nstages:\n  hello:\n    step: {name}:greet@^1\n    with: {{who: world}}\n"
        )
    };
    std::fs::write(p.dir.join("sentinel.yml"), pipeline("mine")).unwrap();
    assert!(ran(&p, &[]).contains("greet 1.0.0"));
    // A name the machine gives another address: an error at that name.
    let other = Proj::new("unused", &registry_config("file:///elsewhere", ""));
    std::fs::write(other.dir.join("sentinel.yml"), pipeline("r")).unwrap();
    let e = fails(other.run(&[]), "a pipeline registry renaming the machine's");
    assert!(
        e.contains("sentinel.yml:3:3")
            && e.contains("configured on this machine with another address"),
        "{e}"
    );
}

/// The server runs exactly what the committed `sentinel.lock` pins — 1.0.0
/// though 1.1.0 is published; a reference the lock lacks resolves afresh
/// (to 1.1.0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_runs_what_the_committed_lock_pins() {
    let reg = scratch("server-reg-");
    let url = format!("file://{}", reg.display());
    // A lock made the way a developer makes it: a run on their machine.
    let dev = Proj::new("greet@^1", &registry_config(&url, ""));
    publish(greet(), "r", &[], &dev.config);
    assert!(ran(&dev, &[]).contains("greet 1.0.0"));
    publish(&greet_at("1.1.0"), "r", &[], &dev.config);
    let pipeline = std::fs::read_to_string(dev.dir.join("sentinel.yml")).unwrap();
    let both = format!("{pipeline}  fresh:\n    step: greet@~1.1\n    with: {{who: world}}\n");
    let root = scratch("server-");
    let (repo, _) = bare_repo(
        &root.join("repo"),
        &[("sentinel.yml", &both), ("sentinel.lock", &dev.lock())],
    );
    let config = root.join("server.toml");
    std::fs::write(&config, registry_config(&url, "")).unwrap();
    let repo_arg = format!("app={repo}");
    let server = Server::start(
        &root.join("state"),
        &[
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--repo",
            &repo_arg,
        ],
        &[],
    );
    let c = Client::new(&server.url, &server.admin);
    let id = c.trigger("app").await;
    let run = c.wait_final(&id).await;
    assert_eq!(run["run"]["status"], "succeeded", "{run}");
    let stage = |name: &str| {
        let c = &c;
        let path = format!("/results/run/{id}/{name}.json");
        async move {
            c.get(&path).await["inputs"]["step"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        }
    };
    let pinned = stage("hello").await;
    assert!(pinned.starts_with("greet@^1 = greet 1.0.0"), "{pinned}");
    let fresh = stage("fresh").await;
    assert!(fresh.starts_with("greet@~1.1 = greet 1.1.0"), "{fresh}");
    server.stop();
}
