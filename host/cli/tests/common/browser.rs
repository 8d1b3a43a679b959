//! A real headless Chromium driven over WebDriver (Debian's `chromium` and
//! `chromium-driver`), with a fresh profile; screenshots land in
//! `target/screenshots/` as test artifacts.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator, elements::Element};

/// A browser session; the driver is killed when dropped.
pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The built web app (`scripts/build-web.sh`), or a failure saying how to build it.
pub fn dist() -> PathBuf {
    let dist = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../dist");
    assert!(
        dist.join("index.html").is_file(),
        "the web app is not built: run scripts/build-web.sh (scripts/test.sh does)"
    );
    dist
}

impl Browser {
    pub async fn start() -> Self {
        let port = super::server::free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("chromedriver is needed (apt-get install chromium chromium-driver; scripts/setup.sh does): {e}")
            });
        let until = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < until, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let profile = tempfile::tempdir().unwrap();
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ]
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .unwrap_or_else(|e| panic!("cannot start headless Chromium: {e}"));
        Self {
            client,
            driver,
            _profile: profile,
        }
    }

    /// Waits for an element (30 s), through navigations (a page being
    /// replaced answers "aborted by navigation" for a moment).
    pub async fn find(&self, css: &str) -> Element {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            match self.client.find(Locator::Css(css)).await {
                Ok(e) => return e,
                Err(e) if Instant::now() > until => panic!("no `{css}` on the page: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Opens the app at `url` and signs in with `token`.
    pub async fn sign_in(&self, url: &str, token: &str) {
        self.client.goto(url).await.unwrap();
        self.find("#token").await.send_keys(token).await.unwrap();
        self.click(".sign-in button").await;
        self.find(".sign-out").await;
    }

    /// An attribute of the first element matching `css` now (`None` when
    /// there is none, or it was just replaced by a re-render).
    pub async fn attr(&self, css: &str, name: &str) -> Option<String> {
        let e = self.client.find(Locator::Css(css)).await.ok()?;
        e.attr(name).await.ok().flatten()
    }

    /// Waits until the element matching `css` has `name` = `value`.
    pub async fn wait_attr(&self, css: &str, name: &str, value: &str) {
        let until = Instant::now() + Duration::from_secs(60);
        while self.attr(css, name).await.as_deref() != Some(value) {
            assert!(
                Instant::now() < until,
                "`{css}` never had {name}={value} (it has {:?})",
                self.attr(css, name).await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Clicks the element matching `css`, again if a re-render replaced it.
    pub async fn click(&self, css: &str) {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(e) = self.client.find(Locator::Css(css)).await
                && e.click().await.is_ok()
            {
                return;
            }
            assert!(Instant::now() < until, "cannot click `{css}`");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `check` holds for the page's text content.
    pub async fn wait_text(&self, css: &str, check: impl Fn(&str) -> bool, what: &str) -> String {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(e) = self.client.find(Locator::Css(css)).await
                && let Ok(t) = e.text().await
                && check(&t)
            {
                return t;
            }
            if Instant::now() > until {
                let source = self.client.source().await.unwrap_or_default();
                panic!("{what}: never true for `{css}`; the page:\n{source}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Saves a screenshot as `target/screenshots/<name>.png`.
    pub async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        std::fs::write(screenshots().join(format!("{name}.png")), png).unwrap();
    }

    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
    }
}
