//! Helpers of the step registry tests: the `sentinel` binary with a clean
//! environment, a step made once per process by `sentinel step new` and
//! built by `sentinel step test`, projects with a user config file, and an
//! OCI registry of the test's own on a free loopback port.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::server::free_port;

pub fn sentinel(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sentinel"));
    c.args(args)
        .env_remove("SENTINEL_STATE")
        .env_remove("SENTINEL_RESULTS")
        .env_remove("SENTINEL_STEP_KEY")
        .env("CARGO_TARGET_DIR", crates_target());
    c
}

pub fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn fails(out: Output, what: &str) -> String {
    assert!(
        !out.status.success(),
        "{what} should have failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// One target folder for every step crate the tests build.
pub fn crates_target() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("step-crates")
}

/// A folder that lives as long as the test process: under the target's
/// temporary folder (`target/tmp/step-tests`), where the first call of a
/// process removes what runs more than an hour old left.
pub fn scratch(name: &str) -> PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    let root = ROOT.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("step-tests");
        std::fs::create_dir_all(&root).unwrap();
        let hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
        for e in std::fs::read_dir(&root).unwrap().flatten() {
            if e.metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t < hour_ago)
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        root
    });
    tempfile::Builder::new()
        .prefix(name)
        .tempdir_in(root)
        .unwrap()
        .keep()
}

/// The `greet` step: scaffolded, set to 1.0.0, built once per process.
pub fn greet() -> &'static Path {
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

pub fn set_version(dir: &Path, version: &str) {
    let p = dir.join("step.toml");
    let text = std::fs::read_to_string(&p).unwrap();
    let line = text.lines().find(|l| l.starts_with("version = ")).unwrap();
    std::fs::write(&p, text.replace(line, &format!("version = \"{version}\""))).unwrap();
}

/// A copy of the greet step at another version (same component).
pub fn greet_at(version: &str) -> PathBuf {
    let dir = scratch("greet-v").join("greet");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["step.wasm", "step.toml"] {
        std::fs::copy(greet().join(f), dir.join(f)).unwrap();
    }
    set_version(&dir, version);
    dir
}

/// `sentinel step publish DIR --to TO` with the user config of `config`.
pub fn publish_cmd(dir: &Path, to: &str, config: &Path) -> Command {
    let mut c = sentinel(&["step", "publish"]);
    c.arg(dir).args(["--to", to]).env("XDG_CONFIG_HOME", config);
    c
}

/// Publishes, which must succeed; what it said.
pub fn publish(dir: &Path, to: &str, extra: &[&str], config: &Path) -> String {
    ok(
        publish_cmd(dir, to, config).args(extra).output().unwrap(),
        "step publish",
    )
}

/// The component digest a publish said.
pub fn digest_said(said: &str) -> String {
    said.lines()
        .find_map(|l| l.trim().strip_prefix("digest:"))
        .unwrap_or_else(|| panic!("no digest in {said}"))
        .trim()
        .to_string()
}

/// A project whose one stage runs `reference`, with a user config file.
pub struct Proj {
    pub dir: PathBuf,
    pub config: PathBuf,
}

impl Proj {
    pub fn new(reference: &str, config: &str) -> Self {
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

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = sentinel(&["-C"]);
        c.arg(&self.dir)
            .args(args)
            .env("XDG_CONFIG_HOME", &self.config);
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(&["run"]).args(args).output().unwrap()
    }

    pub fn lock(&self) -> String {
        std::fs::read_to_string(self.dir.join("sentinel.lock")).unwrap_or_default()
    }

    /// The newest run's stage document.
    pub fn stage(&self) -> serde_json::Value {
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
pub fn ran(p: &Proj, args: &[&str]) -> String {
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
pub struct OwnRegistry {
    pub addr: String,
    child: Child,
    _dir: PathBuf,
}

impl OwnRegistry {
    pub fn start() -> Self {
        Self::start_with("")
    }

    /// With `extra` lines of configuration (an `auth:` section).
    pub fn start_with(extra: &str) -> Self {
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

    pub fn stop(mut self) {
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

pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

pub fn registry_config(url: &str, extra: &str) -> String {
    format!("[registries.r]\nsteps = \"{url}\"\n{extra}\n[steps]\ndefault = \"r\"\n")
}
