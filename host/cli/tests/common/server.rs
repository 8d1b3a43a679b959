//! A real `sentinel serve` process for tests, and a git repository to
//! serve: a bare repository on disk reached by a `file://` URL.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Runs git in `dir`, failing the test with its message.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
        .output()
        .unwrap_or_else(|e| panic!("git is needed (apt-get install git): {e}"));
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A bare repository holding `files` on `main`; returns its URL and commit.
pub fn bare_repo(root: &Path, files: &[(&str, &str)]) -> (String, String) {
    let work = root.join("work");
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "--quiet", "--initial-branch=main"]);
    for (name, body) in files {
        let file = work.join(name);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, body).unwrap();
    }
    git(&work, &["add", "."]);
    git(&work, &["commit", "--quiet", "-m", "pipeline"]);
    let bare = root.join("app.git");
    let b = bare.to_string_lossy().to_string();
    git(root, &["clone", "--quiet", "--bare", "work", &b]);
    let commit = git(&work, &["rev-parse", "HEAD"]);
    (format!("file://{b}"), commit)
}

/// The bare repository [`bare_repo`] made under `root`, made now if it is
/// not there yet (a server started again names the same one).
pub fn bare_repo_once(root: &Path, files: &[(&str, &str)]) -> String {
    let bare = root.join("app.git");
    if bare.exists() {
        format!("file://{}", bare.display())
    } else {
        bare_repo(root, files).0
    }
}

/// A port free now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `sentinel serve` child; killed (SIGKILL) when dropped.
pub struct Server {
    pub child: Child,
    pub url: String,
    /// The local admin token from `server.json`.
    pub admin: String,
    pub state: PathBuf,
    pub log: PathBuf,
}

impl Server {
    /// Starts a server on `state` with `args` and `env`, and waits until it answers.
    pub fn start(state: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        std::fs::create_dir_all(state).unwrap();
        let _ = std::fs::remove_file(state.join("server.json"));
        let log = state.with_extension("log");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sentinel"));
        cmd.arg("--state")
            .arg(state)
            .arg("serve")
            .args(args)
            .env_remove("SENTINEL_CONFIG")
            .stdout(Stdio::null())
            .stderr(out);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        let until = Instant::now() + Duration::from_secs(60);
        let file = loop {
            if let Ok(text) = std::fs::read_to_string(state.join("server.json"))
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
            {
                break v;
            }
            assert!(
                Instant::now() < until,
                "sentinel serve did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(25));
        };
        Self {
            child,
            url: file["url"].as_str().unwrap().to_string(),
            admin: file["token"].as_str().unwrap().to_string(),
            state: state.to_path_buf(),
            log,
        }
    }

    /// Asks it to stop (SIGTERM) and waits.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let until = Instant::now() + Duration::from_secs(60);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < until, "the server did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client of the server's API with one token.
pub struct Client {
    pub http: reqwest::Client,
    pub url: String,
    pub token: String,
}

impl Client {
    pub fn new(url: &str, token: &str) -> Self {
        Self {
            http: reqwest::Client::new(),
            url: url.to_string(),
            token: token.to_string(),
        }
    }

    /// The status of run `id` (`missing` when the server has none).
    pub async fn status(&self, id: &str) -> String {
        let (_, v) = self
            .call(reqwest::Method::GET, &format!("/api/v1/runs/{id}"), None)
            .await;
        v["run"]["status"].as_str().unwrap_or("missing").to_string()
    }
}

impl Client {
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> Value {
        let (status, v) = self.call(reqwest::Method::GET, path, None).await;
        assert_eq!(status, 200, "GET {path}: {v}");
        v
    }

    pub async fn text(&self, path: &str) -> (u16, String) {
        let res = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        (res.status().as_u16(), res.text().await.unwrap())
    }

    /// Stores secret `name` through the API.
    pub async fn set_secret(&self, name: &str, value: &str) {
        let (status, v) = self
            .call(
                reqwest::Method::PUT,
                &format!("/api/v1/secrets/{name}"),
                Some(json!({ "value": value })),
            )
            .await;
        assert!(status < 300, "{status} {v}");
    }

    pub async fn trigger(&self, repo: &str) -> String {
        let (status, v) = self
            .call(
                reqwest::Method::POST,
                "/api/v1/runs",
                Some(json!({ "repo": repo, "ref": "main" })),
            )
            .await;
        assert_eq!(status, 202, "{v}");
        v["id"].as_str().unwrap().to_string()
    }

    pub async fn wait_final(&self, id: &str) -> Value {
        let until = Instant::now() + Duration::from_secs(120);
        loop {
            let v = self.get(&format!("/api/v1/runs/{id}")).await;
            let s = v["run"]["status"].as_str().unwrap_or_default();
            if !matches!(s, "queued" | "running" | "waiting_approval") {
                return v;
            }
            assert!(Instant::now() < until, "run {id} did not end: {v}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn wait_stage(&self, id: &str, stage: &str, status: &str) {
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let v = self.get(&format!("/api/v1/runs/{id}")).await;
            let found = v["run"]["stages"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| s["name"] == stage && s["status"] == status);
            if found {
                return;
            }
            assert!(Instant::now() < until, "{id}/{stage} never {status}: {v}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
