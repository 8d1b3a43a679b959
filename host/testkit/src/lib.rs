//! Test support shared by the crates' tests (a dev-dependency only): the
//! real S3 server on loopback, started by `scripts/s3-server.sh`, reads
//! through its bucket website endpoint, and deploy payloads ([`payload`]).

pub mod payload;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;

/// The repository's top folder.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Starts (or reuses) the S3 server and returns its settings, the
/// `KEY=value` lines of `scripts/s3-server.sh`: `S3_ENDPOINT`, `S3_REGION`,
/// `S3_BUCKET`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `S3_WEBSITE`.
/// Panics, saying how to install it, when the server cannot start.
pub fn s3_server() -> BTreeMap<String, String> {
    let script = repo_root().join("scripts/s3-server.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "the S3 server could not be started by {} (scripts/setup.sh installs it): {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

/// The URL of `key` in `bucket`'s website (as a browser would open it).
pub fn website_url(s3: &BTreeMap<String, String>, bucket: &str, key: &str) -> String {
    let port = s3["S3_WEBSITE"].rsplit(':').next().unwrap_or_default();
    format!("http://{bucket}.web.localhost:{port}/{key}")
}

/// A page of a bucket's website.
#[derive(Debug)]
pub struct WebPage {
    pub status: u16,
    pub content_type: String,
    pub body: Vec<u8>,
}

/// GETs `key` from `bucket`'s website endpoint (plain HTTP/1.1 over
/// loopback, with the bucket in the `Host` header).
pub fn website_get(s3: &BTreeMap<String, String>, bucket: &str, key: &str) -> WebPage {
    let mut sock = std::net::TcpStream::connect(&s3["S3_WEBSITE"]).expect("the website endpoint");
    write!(
        sock,
        "GET /{key} HTTP/1.1\r\nHost: {bucket}.web.localhost\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut raw = Vec::new();
    sock.read_to_end(&mut raw).expect("read");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP answer");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type:")
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default();
    WebPage {
        status,
        content_type,
        body: raw[split + 4..].to_vec(),
    }
}
