//! s3sync: uploads a workspace folder to an S3 bucket (AWS or any
//! S3-compatible endpoint), skipping files whose size and MD5 match the
//! remote object, optionally deleting remote objects gone locally. Requests
//! are signed inside the sandbox with SigV4 (aws-sigv4).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    PercentEncodingMode, SignableBody, SignableRequest, SigningSettings, UriPathNormalizationMode,
    sign,
};
use aws_sigv4::sign::v4;
use md5::{Digest, Md5};
use sentinel_step::{Error, Step, fail};
use serde::Deserialize;
use wstd::http::{Body, Client, Request};

#[derive(Deserialize)]
struct Settings {
    bucket: String,
    key_id: String,
    key_secret: String,
    #[serde(default)]
    session_token: Option<String>,
    #[serde(default)]
    source_dir: Option<String>,
    #[serde(default)]
    prefix: Option<String>,
    endpoint: String,
    region: String,
    #[serde(default)]
    path_style: bool,
    #[serde(default)]
    delete: bool,
}

struct S3 {
    s: Settings,
    client: Client,
}

/// Percent-encodes a key, keeping `/` between segments.
fn encode(key: &str, keep_slash: bool) -> String {
    let mut out = String::new();
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn content_type(path: &Path) -> &'static str {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("json" | "map") => "application/json",
        Some("txt" | "log" | "md") => "text/plain; charset=utf-8",
        Some("xml") => "application/xml",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("ico") => "image/x-icon",
        Some("wasm") => "application/wasm",
        Some("zip") => "application/zip",
        Some("gz") => "application/gzip",
        Some("pdf") => "application/pdf",
        _ => "application/octet-stream",
    }
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

fn tag<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{name}>"))? + start;
    Some(&xml[start..end])
}

impl S3 {
    fn base(&self) -> String {
        let endpoint = self.s.endpoint.trim_end_matches('/');
        if self.s.path_style {
            format!("{endpoint}/{}", self.s.bucket)
        } else {
            let (scheme, host) = endpoint.split_once("://").unwrap_or(("https", endpoint));
            format!("{scheme}://{}.{host}", self.s.bucket)
        }
    }

    /// Sends a signed request; returns the status and body.
    async fn send(
        &self,
        method: &str,
        url: &str,
        body: Vec<u8>,
        ctype: Option<&str>,
    ) -> Result<(u16, Vec<u8>), Error> {
        let identity = Credentials::new(
            &self.s.key_id,
            &self.s.key_secret,
            self.s.session_token.clone(),
            None,
            "sentinel",
        )
        .into();
        let mut settings = SigningSettings::default();
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        settings.payload_checksum_kind = aws_sigv4::http_request::PayloadChecksumKind::XAmzSha256;
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.s.region)
            .name("s3")
            .time(SystemTime::now())
            .settings(settings)
            .build()
            .map_err(|e| fail(format!("cannot sign: {e}")))?
            .into();
        let mut headers: Vec<(&str, &str)> = Vec::new();
        if let Some(c) = ctype {
            headers.push(("content-type", c));
        }
        let signable = SignableRequest::new(
            method,
            url,
            headers.iter().copied(),
            SignableBody::Bytes(&body),
        )
        .map_err(|e| fail(format!("cannot sign {url}: {e}")))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| fail(format!("cannot sign: {e}")))?
            .into_parts();
        let mut req = Request::builder().method(method).uri(url);
        for (k, v) in &headers {
            req = req.header(*k, *v);
        }
        for (k, v) in instructions.headers() {
            req = req.header(k, v);
        }
        let req = req
            .body(Body::from(body))
            .map_err(|e| fail(format!("invalid request {url}: {e}")))?;
        let resp = self
            .client
            .send(req)
            .await
            .map_err(|e| fail(format!("{method} {url}: {e}")))?;
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        let bytes = body
            .contents()
            .await
            .map(<[u8]>::to_vec)
            .unwrap_or_default();
        Ok((status, bytes))
    }

    fn explain(&self, what: &str, status: u16, body: &[u8]) -> Error {
        let text = String::from_utf8_lossy(body);
        let code = tag(&text, "Code").unwrap_or("");
        let message = tag(&text, "Message").unwrap_or("");
        let hint = match status {
            403 => " (access denied: check key_id, key_secret and the bucket's permissions)",
            404 if code == "NoSuchBucket" => " (the bucket does not exist)",
            404 => " (not found: check the bucket, the endpoint and path_style)",
            301 | 307 => " (the bucket lives in another region or needs path_style)",
            _ => "",
        };
        fail(format!("{what}: HTTP {status} {code} {message}{hint}"))
    }

    /// Remote objects under the prefix: key → (size, etag).
    async fn list(&self, prefix: &str) -> Result<BTreeMap<String, (u64, String)>, Error> {
        let mut out = BTreeMap::new();
        let mut token: Option<String> = None;
        loop {
            let mut url = format!(
                "{}?list-type=2&prefix={}",
                self.base(),
                encode(prefix, false)
            );
            if let Some(t) = &token {
                url.push_str(&format!("&continuation-token={}", encode(t, false)));
            }
            let (status, body) = self.send("GET", &url, Vec::new(), None).await?;
            if status != 200 {
                return Err(self.explain(
                    &format!("cannot list s3://{}/{prefix}", self.s.bucket),
                    status,
                    &body,
                ));
            }
            let xml = String::from_utf8_lossy(&body).into_owned();
            for item in xml.split("<Contents>").skip(1) {
                let key = unescape(tag(item, "Key").unwrap_or_default());
                let size = tag(item, "Size").and_then(|s| s.parse().ok()).unwrap_or(0);
                let etag = unescape(tag(item, "ETag").unwrap_or_default())
                    .trim_matches('"')
                    .to_string();
                out.insert(key, (size, etag));
            }
            token = (tag(&xml, "IsTruncated") == Some("true"))
                .then(|| tag(&xml, "NextContinuationToken").map(unescape))
                .flatten();
            if token.is_none() {
                return Ok(out);
            }
        }
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let ft = entry.file_type()?;
        if ft.is_dir() {
            walk(&entry.path(), out)?;
        } else if ft.is_file() {
            out.push(entry.path());
        }
    }
    Ok(())
}

async fn sync(step: &Step) -> Result<(), Error> {
    let s: Settings = step.settings()?;
    let source = step.workspace_path(s.source_dir.as_deref().unwrap_or("."));
    let prefix = s
        .prefix
        .clone()
        .unwrap_or_default()
        .trim_start_matches('/')
        .to_string();
    let mut files = Vec::new();
    walk(&source, &mut files)
        .map_err(|e| fail(format!("cannot read {}: {e}", source.display())))?;
    files.sort();
    let s3 = S3 {
        s,
        client: Client::new(),
    };
    let remote = s3.list(&prefix).await?;
    let (mut uploaded, mut unchanged, mut deleted) = (0, 0, 0);
    let mut local_keys = Vec::new();
    for file in &files {
        let rel = file
            .strip_prefix(&source)
            .unwrap_or(file)
            .to_string_lossy()
            .replace('\\', "/");
        let key = if prefix.is_empty() {
            rel.clone()
        } else {
            format!("{}/{rel}", prefix.trim_end_matches('/'))
        };
        let bytes = std::fs::read(file).map_err(|e| fail(format!("cannot read {rel}: {e}")))?;
        let md5 = hex::encode(Md5::digest(&bytes));
        local_keys.push(key.clone());
        if remote
            .get(&key)
            .is_some_and(|(size, etag)| *size == bytes.len() as u64 && *etag == md5)
        {
            unchanged += 1;
            continue;
        }
        let url = format!("{}/{}", s3.base(), encode(&key, true));
        let (status, body) = s3
            .send("PUT", &url, bytes, Some(content_type(file)))
            .await?;
        if status != 200 {
            return Err(s3.explain(&format!("cannot upload {key}"), status, &body));
        }
        step.log(format!("uploaded {key}"));
        uploaded += 1;
    }
    if s3.s.delete {
        for key in remote.keys().filter(|k| !local_keys.contains(k)) {
            let url = format!("{}/{}", s3.base(), encode(key, true));
            let (status, body) = s3.send("DELETE", &url, Vec::new(), None).await?;
            if status != 204 && status != 200 {
                return Err(s3.explain(&format!("cannot delete {key}"), status, &body));
            }
            step.log(format!("deleted {key}"));
            deleted += 1;
        }
    }
    step.set_output("uploaded", &uploaded.to_string())?;
    step.set_output("unchanged", &unchanged.to_string())?;
    step.set_output("deleted", &deleted.to_string())?;
    println!(
        "s3://{}/{prefix}: {uploaded} uploaded, {unchanged} unchanged, {deleted} deleted",
        s3.s.bucket
    );
    Ok(())
}

#[wstd::main]
async fn main() {
    let step = Step::current();
    if let Err(e) = sync(&step).await {
        eprintln!("s3sync: {e}");
        std::process::exit(1);
    }
}
