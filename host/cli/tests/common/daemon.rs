//! A Docker daemon of a test's own: its own data root, exec root, pid file
//! and socket under a folder of the test, started through an optional
//! launcher (`nsenter --net=…` to put it in a network namespace) with the
//! test's own flags; images loaded from this machine's daemon (nothing can
//! be pulled here). Stopped when dropped; its folder is the test's to remove.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub struct OwnDaemon {
    pub dir: PathBuf,
    launcher: Vec<String>,
    args: Vec<String>,
    child: Option<Child>,
}

impl OwnDaemon {
    /// A daemon in `dir`, started by `launcher` (empty: directly) with
    /// `args` besides its folders and socket; not started yet.
    pub fn new(dir: &Path, launcher: &[String], args: &[String]) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        Self {
            dir: dir.to_path_buf(),
            launcher: launcher.to_vec(),
            args: args.to_vec(),
            child: None,
        }
    }

    pub fn host(&self) -> String {
        format!("unix://{}", self.dir.join("sock").display())
    }

    pub fn docker(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .args(["-H", &self.host()])
            .args(args)
            .output()
            .expect("docker CLI")
    }

    /// Starts it and waits until it answers.
    pub fn up(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("log"))
            .unwrap();
        let mut argv = self.launcher.clone();
        argv.push("dockerd".into());
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .arg("--data-root")
            .arg(self.dir.join("root"))
            .arg("--exec-root")
            .arg(self.dir.join("exec"))
            .arg("--pidfile")
            .arg(self.dir.join("pid"))
            .args(["-H", &self.host()])
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("dockerd (this test runs a Docker daemon of its own: install docker.io)");
        self.child = Some(child);
        let until = Instant::now() + Duration::from_secs(60);
        while !self.docker(&["info"]).status.success() {
            assert!(
                Instant::now() < until,
                "the test's own dockerd did not start: {}",
                std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops it as a service restart does (SIGTERM: it stops its
    /// containers) and waits for it to exit.
    pub fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            // A launcher execs dockerd: the child's pid is the daemon's.
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
    }

    /// Loads `images` from this machine's daemon.
    pub fn load(&self, images: &[&str]) {
        let load = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "docker save {} | docker -H {} load",
                images.join(" "),
                self.host()
            ))
            .output()
            .unwrap();
        assert!(load.status.success(), "loading {images:?}: {load:?}");
    }
}

impl Drop for OwnDaemon {
    fn drop(&mut self) {
        self.down();
    }
}
