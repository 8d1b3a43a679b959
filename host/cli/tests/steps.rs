//! Publishing steps, end to end with the real parts: a step made by
//! `sentinel step new`, built for wasm32-wasip2 by `sentinel step build`,
//! published to a folder, a bucket on the S3 server and an OCI registry of
//! the test's own (Debian's `docker-registry` on a free loopback port),
//! resolved by `name@^1` into `sentinel.lock` and run; then run again from
//! the cache with that registry stopped; the lock kept under `--locked` and
//! moved by `step update`; bytes changed under a published version refused;
//! signatures required; basic auth against the htpasswd registry; bearer
//! tokens through the distribution token flow (a token server of the
//! test's own issuing JWTs the registry verifies); and
//! `step build` refusing components that import sockets, or HTTP without
//! declaring hosts.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::server::free_port;

fn sentinel(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sentinel"));
    c.args(args)
        .env_remove("SENTINEL_STATE")
        .env_remove("SENTINEL_RESULTS")
        .env_remove("SENTINEL_STEP_KEY")
        .env("CARGO_TARGET_DIR", crates_target());
    c
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails(out: Output, what: &str) -> String {
    assert!(
        !out.status.success(),
        "{what} should have failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// One target folder for every step crate the tests build.
fn crates_target() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("step-crates")
}

/// A folder that lives as long as the test process.
fn scratch(name: &str) -> PathBuf {
    tempfile::Builder::new()
        .prefix(name)
        .tempdir()
        .unwrap()
        .keep()
}

/// The `greet` step: scaffolded, set to 1.0.0, built once per process.
fn greet() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = scratch("greet-");
        let dir = root.join("greet");
        ok(
            sentinel(&["step", "new", "greet", "--dir"])
                .arg(&dir)
                .output()
                .unwrap(),
            "step new",
        );
        set_version(&dir, "1.0.0");
        // `step test` builds it and runs its scaffolded cases through the
        // real runtime.
        let out = ok(
            sentinel(&["step", "test"]).arg(&dir).output().unwrap(),
            "step test",
        );
        assert!(out.contains("2 passed, 0 failed"), "{out}");
        assert!(dir.join("step.wasm").is_file());
        dir
    })
}

fn set_version(dir: &Path, version: &str) {
    let p = dir.join("step.toml");
    let text = std::fs::read_to_string(&p).unwrap();
    let line = text.lines().find(|l| l.starts_with("version = ")).unwrap();
    std::fs::write(&p, text.replace(line, &format!("version = \"{version}\""))).unwrap();
}

/// A copy of the greet step at another version (same component).
fn greet_at(version: &str) -> PathBuf {
    let dir = scratch("greet-v").join("greet");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["step.wasm", "step.toml"] {
        std::fs::copy(greet().join(f), dir.join(f)).unwrap();
    }
    set_version(&dir, version);
    dir
}

fn publish(dir: &Path, to: &str, extra: &[&str], config: &Path) -> String {
    ok(
        sentinel(&["step", "publish"])
            .arg(dir)
            .args(["--to", to])
            .args(extra)
            .env("XDG_CONFIG_HOME", config)
            .output()
            .unwrap(),
        "step publish",
    )
}

/// A project whose one stage runs `reference`, with a user config file.
struct Proj {
    dir: PathBuf,
    config: PathBuf,
}

impl Proj {
    fn new(reference: &str, config: &str) -> Self {
        let dir = scratch("steps-proj-");
        std::fs::write(
            dir.join("sentinel.yml"),
            format!(
                "version: 1\nstages:\n  hello:\n    step: \"{reference}\"\n    with: {{who: world}}\n"
            ),
        )
        .unwrap();
        let cfg = scratch("steps-cfg-");
        std::fs::create_dir_all(cfg.join("sentinel")).unwrap();
        std::fs::write(cfg.join("sentinel/config.toml"), config).unwrap();
        Self { dir, config: cfg }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = sentinel(&["-C"]);
        c.arg(&self.dir)
            .args(args)
            .env("XDG_CONFIG_HOME", &self.config);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(&["run"]).args(args).output().unwrap()
    }

    fn lock(&self) -> String {
        std::fs::read_to_string(self.dir.join("sentinel.lock")).unwrap_or_default()
    }

    /// The newest run's stage document.
    fn stage(&self) -> serde_json::Value {
        let runs = self.dir.join(".sentinel/results/run");
        let mut ids: Vec<_> = std::fs::read_dir(&runs)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        ids.sort();
        let text = std::fs::read(ids.last().unwrap().join("hello.json")).unwrap();
        serde_json::from_slice(&text).unwrap()
    }
}

/// A run that succeeded with the greeting; the version it ran.
fn ran(p: &Proj, args: &[&str]) -> String {
    ok(p.run(args), "sentinel run");
    let doc = p.stage();
    assert_eq!(doc["status"], "succeeded", "{doc}");
    assert_eq!(doc["output"].as_str().unwrap().trim(), "Hello, world!");
    let step = doc["inputs"]["step"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        step.contains(" = greet "),
        "the document records what ran: {doc}"
    );
    step
}

/// An OCI registry of the test's own, on a free loopback port.
struct OwnRegistry {
    addr: String,
    child: Child,
    _dir: PathBuf,
}

impl OwnRegistry {
    fn start() -> Self {
        Self::start_with("")
    }

    /// With `extra` lines of configuration (an `auth:` section).
    fn start_with(extra: &str) -> Self {
        let bin = which("docker-registry").unwrap_or_else(|| {
            panic!("docker-registry is not installed: run scripts/registry.sh (the test command's set-up does)")
        });
        let dir = scratch("oci-reg-");
        let addr = format!("127.0.0.1:{}", free_port());
        std::fs::write(
            dir.join("config.yml"),
            format!(
                "version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\n  delete: {{enabled: true}}\nhttp: {{addr: {addr}}}\n{extra}",
                dir.join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new(bin)
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let until = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(
                Instant::now() < until,
                "docker-registry did not start on {addr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            addr,
            child,
            _dir: dir,
        }
    }

    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        assert!(std::net::TcpStream::connect(&self.addr).is_err());
    }
}

impl Drop for OwnRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

fn registry_config(url: &str, extra: &str) -> String {
    format!("[registries.r]\nsteps = \"{url}\"\n{extra}\n[steps]\ndefault = \"r\"\n")
}

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
    let mut c = sentinel(&["step", "publish"]);
    c.arg(greet())
        .args(["--to", "r"])
        .env("XDG_CONFIG_HOME", &p.config)
        .env("AWS_ACCESS_KEY_ID", &s3["AWS_ACCESS_KEY_ID"])
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
        sentinel(&["step", "publish"])
            .arg(greet())
            .args(["--to", "r"])
            .env("XDG_CONFIG_HOME", &p.config)
            .output()
            .unwrap(),
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
    let first = said
        .lines()
        .find_map(|l| l.trim().strip_prefix("digest:"))
        .unwrap()
        .trim()
        .to_string();
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
        sentinel(&["step", "publish"])
            .arg(&other)
            .args(["--to", "r"])
            .env("XDG_CONFIG_HOME", &p.config)
            .output()
            .unwrap(),
        "publishing other bytes as 1.0.0",
    );
    assert!(e.contains("already published with other content"), "{e}");
    let said = publish(&other, "r", &["--force"], &p.config);
    let second = said
        .lines()
        .find_map(|l| l.trim().strip_prefix("digest:"))
        .unwrap()
        .trim()
        .to_string();
    assert_ne!(first, second);
    // A clean state folder must pull again: the pinned run refuses.
    std::fs::remove_dir_all(p.dir.join(".sentinel")).unwrap();
    let e = fails(p.run(&["--locked"]), "the pinned run of changed bytes");
    assert!(
        e.contains(&first) && e.contains(&second),
        "both digests named: {e}"
    );
}

fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    let out = ok(
        sentinel(&["step", "keygen", "--out"])
            .arg(&path)
            .output()
            .unwrap(),
        "keygen",
    );
    (path, out.trim().to_string())
}

#[test]
fn signatures_from_trusted_keys_are_required_when_asked() {
    let keys = scratch("keys-");
    let (trusted_key, trusted) = keygen(&keys, "trusted.key");
    let (other_key, other) = keygen(&keys, "other.key");
    assert!(trusted.starts_with("ed25519:") && trusted != other);
    let e = fails(
        sentinel(&["step", "keygen", "--out"])
            .arg(&trusted_key)
            .output()
            .unwrap(),
        "keygen over a key",
    );
    assert!(e.contains("never overwritten"), "{e}");
    let reg = scratch("signed-reg-");
    let cfg = registry_config(
        &format!("file://{}", reg.display()),
        &format!("trusted_keys = [\"{trusted}\"]\n"),
    );
    let run = |version: &str| {
        let p = Proj::new(&format!("greet@{version}"), &cfg);
        let out = p.run(&[]);
        (p, out)
    };
    let p = Proj::new("greet@1.0.0", &cfg);
    publish(&greet_at("1.0.0"), "r", &[], &p.config);
    publish(
        &greet_at("1.0.1"),
        "r",
        &["--sign", other_key.to_str().unwrap()],
        &p.config,
    );
    let said = publish(
        &greet_at("1.0.2"),
        "r",
        &["--sign", trusted_key.to_str().unwrap()],
        &p.config,
    );
    assert!(said.contains(&format!("signed:   {trusted}")), "{said}");
    let e = fails(run("1.0.0").1, "an unsigned step");
    assert!(e.contains("is refused") && e.contains("not signed"), "{e}");
    let e = fails(run("1.0.1").1, "a step signed by another key");
    assert!(e.contains(&other) && e.contains("not a trusted key"), "{e}");
    let (signed, out) = run("1.0.2");
    ok(out, "a step signed by the trusted key");
    assert_eq!(signed.stage()["status"], "succeeded");
    assert!(
        signed.lock().contains(&format!("signer = \"{trusted}\"")),
        "{}",
        signed.lock()
    );
    let shown = ok(
        signed
            .cmd(&["step", "show", "greet@1.0.2"])
            .output()
            .unwrap(),
        "step show",
    );
    assert!(shown.contains(&format!("signer:    {trusted}")), "{shown}");
    // What the step may do changed after it was signed: refused.
    let manifest = reg.join("greet/1.0.2/step.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(
        &manifest,
        text.replace("http = []", "http = [\"*.example.com\"]"),
    )
    .unwrap();
    let e = fails(
        run("1.0.2").1,
        "a step whose manifest changed after signing",
    );
    assert!(e.contains("does not verify"), "{e}");
}

#[test]
fn basic_auth_registry_publish_and_pull() {
    let dir =
        std::env::var("SENTINEL_REGISTRY_DIR").unwrap_or_else(|_| "/tmp/sentinel-registry".into());
    let password = std::fs::read_to_string(format!("{dir}/auth/password"))
        .unwrap_or_else(|e| panic!("no test registry ({dir}/auth/password: {e}); run scripts/registry.sh (the test command's set-up does)"));
    let ns = format!("steps-{}", ulid::Ulid::new().to_string().to_lowercase());
    let cfg = format!(
        "[registries.r]\nsteps = \"oci://127.0.0.1:5001/{ns}\"\nusername = \"sentinel\"\npassword_env = \"STEP_REGISTRY_PASSWORD\"\n[steps]\ndefault = \"r\"\n"
    );
    let p = Proj::new("greet@^1", &cfg);
    // Without the password the registry refuses.
    let e = fails(
        sentinel(&["step", "publish"])
            .arg(greet())
            .args(["--to", "r"])
            .env("XDG_CONFIG_HOME", &p.config)
            .env("STEP_REGISTRY_PASSWORD", "wrong")
            .output()
            .unwrap(),
        "publish with a wrong password",
    );
    assert!(
        e.contains("unauthorised")
            || e.contains("401")
            || e.to_lowercase().contains("unauthorized"),
        "{e}"
    );
    ok(
        sentinel(&["step", "publish"])
            .arg(greet())
            .args(["--to", "r"])
            .env("XDG_CONFIG_HOME", &p.config)
            .env("STEP_REGISTRY_PASSWORD", password.trim())
            .output()
            .unwrap(),
        "publish with basic auth",
    );
    ok(
        p.cmd(&["run"])
            .env("STEP_REGISTRY_PASSWORD", password.trim())
            .output()
            .unwrap(),
        "run pulling with basic auth",
    );
    assert_eq!(p.stage()["status"], "succeeded");
}

/// A step crate whose `main.rs` is `main`, with `deps` added.
fn crate_with(main: &str, deps: &str, hosts: &str) -> PathBuf {
    let dir = scratch("bad-step-").join("bad");
    ok(
        sentinel(&["step", "new", "bad", "--dir"])
            .arg(&dir)
            .output()
            .unwrap(),
        "step new",
    );
    std::fs::write(dir.join("src/main.rs"), main).unwrap();
    let cargo = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        cargo.replace("[dependencies]\n", &format!("[dependencies]\n{deps}")),
    )
    .unwrap();
    let toml = std::fs::read_to_string(dir.join("step.toml")).unwrap();
    std::fs::write(
        dir.join("step.toml"),
        toml.replace("http = []", &format!("http = [{hosts}]")),
    )
    .unwrap();
    dir
}

#[test]
fn step_build_refuses_sockets_and_http_without_hosts() {
    let sockets = crate_with(
        "fn main() {\n    let _ = std::net::TcpStream::connect(\"127.0.0.1:9\");\n}\n",
        "",
        "",
    );
    let e = fails(
        sentinel(&["step", "build"]).arg(&sockets).output().unwrap(),
        "a step importing sockets",
    );
    assert!(
        e.contains("imports wasi:sockets/") && e.contains("no sockets"),
        "{e}"
    );
    assert!(!sockets.join("step.wasm").exists());
    let http_main = "fn main() {\n    let _ = wasip2::http::types::Fields::new();\n}\n";
    let http = crate_with(http_main, "wasip2 = \"1\"\n", "");
    let e = fails(
        sentinel(&["step", "build"]).arg(&http).output().unwrap(),
        "a step importing HTTP, no hosts",
    );
    assert!(
        e.contains("imports wasi:http/") && e.contains("declares no hosts"),
        "{e}"
    );
    // Declaring its hosts, the same component builds.
    let declared = crate_with(http_main, "wasip2 = \"1\"\n", "\"api.example.com\"");
    let said = ok(
        sentinel(&["step", "build"])
            .arg(&declared)
            .output()
            .unwrap(),
        "a step importing HTTP, hosts declared",
    );
    assert!(said.contains("built bad 0.1.0"), "{said}");
}

fn wkg(args: &[&str]) -> Output {
    let bin = which("wkg").unwrap_or_else(|| {
        panic!("wkg is not installed: run scripts/wkg.sh (the test command's set-up does)")
    });
    Command::new(bin).args(args).output().unwrap()
}

/// Media types and layout of the registry's manifest, as the CNCF Wasm OCI
/// artifact defines them.
fn manifest(addr: &str, repo: &str, tag: &str) -> serde_json::Value {
    let out = Command::new("curl")
        .args([
            "-sf",
            "-H",
            "Accept: application/vnd.oci.image.manifest.v1+json",
        ])
        .arg(format!("http://{addr}/v2/{repo}/manifests/{tag}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn components_move_both_ways_between_sentinel_and_wkg() {
    let reg = OwnRegistry::start();
    let addr = reg.addr.clone();
    let cfg = Proj::new(
        "greet@^1",
        &registry_config(&format!("oci://{addr}/steps"), ""),
    );
    publish(greet(), "r", &[], &cfg.config);
    let m = manifest(&addr, "steps/greet", "1.0.0");
    assert_eq!(m["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(
        m["config"]["mediaType"],
        "application/vnd.wasm.config.v0+json"
    );
    assert_eq!(m["layers"].as_array().unwrap().len(), 1);
    assert_eq!(m["layers"][0]["mediaType"], "application/wasm");
    // Sentinel → wkg: the same bytes.
    let out = scratch("wkg-").join("greet.wasm");
    ok(
        wkg(&[
            "oci",
            "pull",
            &format!("{addr}/steps/greet:1.0.0"),
            "--insecure",
            &addr,
            "-o",
            out.to_str().unwrap(),
        ]),
        "wkg oci pull",
    );
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(greet().join("step.wasm")).unwrap()
    );
    // wkg → Sentinel: a component with no manifest of Sentinel's runs,
    // granted nothing.
    let noop = sentinel_testkit::repo_root().join("steps/dist/guests/noop/step.wasm");
    ok(
        wkg(&[
            "oci",
            "push",
            &format!("{addr}/other/quiet:0.3.0"),
            noop.to_str().unwrap(),
            "--insecure",
            &addr,
        ]),
        "wkg oci push",
    );
    let p = Proj::new(&format!("oci://{addr}/other/quiet:0.3.0"), "");
    std::fs::write(
        p.dir.join("sentinel.yml"),
        format!("version: 1\nstages:\n  hello:\n    step: oci://{addr}/other/quiet:0.3.0\n"),
    )
    .unwrap();
    ok(p.run(&[]), "running a component wkg pushed");
    let doc = p.stage();
    assert_eq!(doc["status"], "succeeded", "{doc}");
    assert!(
        doc["inputs"]["step"]
            .as_str()
            .unwrap()
            .contains("= quiet 0.3.0"),
        "{doc}"
    );
    let shown = ok(
        p.cmd(&["step", "show", &format!("oci://{addr}/other/quiet:0.3.0")])
            .output()
            .unwrap(),
        "step show",
    );
    assert!(
        shown.contains("workspace: none") && shown.contains("network:   none"),
        "{shown}"
    );
    reg.stop();
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

/// A token server for the distribution token flow: checks basic
/// credentials, then issues a JWT (RS256, its certificate in `x5c`) granting
/// the scopes asked for. Counts the tokens it issued.
struct TokenServer {
    realm: String,
    issued: Arc<AtomicUsize>,
    dir: PathBuf,
}

const TOKEN_USER: &str = "sentinel";
const TOKEN_PASSWORD: &str = "token-flow-password-4711";

fn b64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl TokenServer {
    fn start() -> Self {
        let dir = scratch("tokens-");
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .output()
                .unwrap();
            assert!(out.status.success(), "openssl {args:?}: {out:?}");
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
            "-days",
            "2",
            "-subj",
            "/CN=sentinel-test-tokens",
        ]);
        openssl(&[
            "x509", "-in", "cert.pem", "-outform", "DER", "-out", "cert.der",
        ]);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let realm = format!("http://{}/token", listener.local_addr().unwrap());
        let issued = Arc::new(AtomicUsize::new(0));
        let (count, key_dir) = (issued.clone(), dir.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let _ = answer(conn, &key_dir, &count);
            }
        });
        Self { realm, issued, dir }
    }

    /// A token for `scope` (`repository:NAME:ACTIONS`), as a client would get one.
    fn token(&self, scope: &str) -> String {
        jwt(&self.dir, &[scope.to_string()])
    }
}

fn jwt(dir: &Path, scopes: &[String]) -> String {
    use base64::Engine as _;
    let cert = std::fs::read(dir.join("cert.der")).unwrap();
    let header = serde_json::json!({
        "alg": "RS256", "typ": "JWT",
        "x5c": [base64::engine::general_purpose::STANDARD.encode(cert)],
    });
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let access: Vec<serde_json::Value> = scopes
        .iter()
        .filter_map(|s| {
            let mut parts = s.splitn(3, ':');
            let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
            Some(serde_json::json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
        })
        .collect();
    let claims = serde_json::json!({
        "iss": "sentinel-test-issuer", "sub": TOKEN_USER, "aud": "sentinel-test",
        "exp": now + 300, "nbf": now - 10, "iat": now, "jti": ulid::Ulid::new().to_string(),
        "access": access,
    });
    let input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let mut sign = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(dir.join("key.pem"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    sign.stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let sig = sign.wait_with_output().unwrap();
    assert!(sig.status.success());
    format!("{input}.{}", b64url(&sig.stdout))
}

fn answer(mut conn: std::net::TcpStream, dir: &Path, issued: &AtomicUsize) -> std::io::Result<()> {
    use std::io::{BufRead as _, Write as _};
    let mut reader = std::io::BufReader::new(conn.try_clone()?);
    let mut first = String::new();
    reader.read_line(&mut first)?;
    let mut authorized = false;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("authorization")
        {
            use base64::Engine as _;
            let want = base64::engine::general_purpose::STANDARD
                .encode(format!("{TOKEN_USER}:{TOKEN_PASSWORD}"));
            authorized = v.trim() == format!("Basic {want}");
        }
    }
    let path = first.split_whitespace().nth(1).unwrap_or_default();
    let query = path.split_once('?').map_or("", |(_, q)| q);
    let scopes: Vec<String> = query
        .split('&')
        .filter_map(|kv| kv.strip_prefix("scope="))
        .map(|s| {
            s.replace("%3A", ":")
                .replace("%2F", "/")
                .replace("%2C", ",")
                .replace('+', " ")
        })
        .flat_map(|s| s.split(' ').map(str::to_string).collect::<Vec<_>>())
        .collect();
    if !authorized {
        return conn.write_all(
            b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
    }
    issued.fetch_add(1, Ordering::SeqCst);
    let token = jwt(dir, &scopes);
    let body =
        serde_json::json!({"token": token, "access_token": token, "expires_in": 300}).to_string();
    conn.write_all(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
}

#[test]
fn bearer_tokens_through_the_registry_token_flow() {
    let tokens = TokenServer::start();
    let reg = OwnRegistry::start_with(&format!(
        "auth:\n  token:\n    realm: {}\n    service: sentinel-test\n    issuer: sentinel-test-issuer\n    rootcertbundle: {}\n",
        tokens.realm,
        tokens.dir.join("cert.pem").display()
    ));
    let addr = reg.addr.clone();
    // User and password, traded for a bearer token by the client.
    let cfg = format!(
        "[registries.r]\nsteps = \"oci://{addr}/steps\"\nusername = \"{TOKEN_USER}\"\npassword_env = \"TOKEN_REGISTRY_PASSWORD\"\n[steps]\ndefault = \"r\"\n"
    );
    let p = Proj::new("greet@^1", &cfg);
    let publish_with = |password: &str| {
        sentinel(&["step", "publish"])
            .arg(greet())
            .args(["--to", "r"])
            .env("XDG_CONFIG_HOME", &p.config)
            .env("TOKEN_REGISTRY_PASSWORD", password)
            .output()
            .unwrap()
    };
    let e = fails(
        publish_with("wrong"),
        "publishing with a password the token server refuses",
    );
    assert!(e.contains(&addr), "{e}");
    assert_eq!(tokens.issued.load(Ordering::SeqCst), 0);
    ok(
        publish_with(TOKEN_PASSWORD),
        "publishing through the token flow",
    );
    assert!(
        tokens.issued.load(Ordering::SeqCst) > 0,
        "the token server issued the tokens"
    );
    ok(
        p.cmd(&["run"])
            .env("TOKEN_REGISTRY_PASSWORD", TOKEN_PASSWORD)
            .output()
            .unwrap(),
        "a run pulling through the token flow",
    );
    assert_eq!(p.stage()["status"], "succeeded");
    // A bearer token given as is (`token_env`).
    let direct = Proj::new(
        "greet@1.0.0",
        &format!(
            "[registries.r]\nsteps = \"oci://{addr}/steps\"\ntoken_env = \"TOKEN_REGISTRY_TOKEN\"\n[steps]\ndefault = \"r\"\n"
        ),
    );
    let token = tokens.token("repository:steps/greet:pull");
    ok(
        direct
            .cmd(&["run"])
            .env("TOKEN_REGISTRY_TOKEN", &token)
            .output()
            .unwrap(),
        "a run pulling with a bearer token",
    );
    assert_eq!(direct.stage()["status"], "succeeded");
}
