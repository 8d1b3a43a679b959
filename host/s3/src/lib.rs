//! The S3 results sink: the layout of `docs/results-layout.md` under a
//! bucket and prefix, on AWS or any S3-compatible server (path-style
//! addressing for Garage and MinIO). The only crate that depends on the AWS
//! SDK. Credentials come from the standard AWS chain (environment, profile,
//! web identity / assume-role) — never from a pipeline. Large logs and
//! artifacts go up in parts; every upload carries a SHA-256 checksum the
//! server verifies.

mod cache;
mod location;
mod steps;
mod upload;

use std::path::Path;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use serde::Serialize;
use serde::de::DeserializeOwned;

use sentinel_api::keys;
use sentinel_api::{RunDoc, RunId, RunSummary, SCHEMA_VERSION, StageDoc, StageName};
use sentinel_engine::ports::{LogBody, ResultsSink, StorageError};
use sentinel_results::index::{self, IndexStore};

pub use cache::S3Cache;
pub use location::S3Location;
pub use steps::S3Steps;
pub use upload::PART_SIZE;

/// Where results go in S3.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct S3Config {
    pub bucket: String,
    /// A key prefix (`ci/`, say); empty for the bucket's root.
    #[serde(default)]
    pub prefix: String,
    /// The region; the AWS chain's when absent.
    #[serde(default)]
    pub region: Option<String>,
    /// An S3-compatible endpoint (`http://127.0.0.1:3900`); AWS when absent.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), which Garage and MinIO need.
    #[serde(default)]
    pub path_style: bool,
    /// A role to assume (through STS, with the chain's credentials) for
    /// every request: one server per AWS account reaching its bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<String>,
    /// The external id the role's trust policy asks for, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
}

impl S3Config {
    /// A configuration from `s3://bucket/prefix` with its endpoint, region
    /// and addressing (as a flag or a configuration file gives them).
    pub fn at(
        url: &str,
        endpoint: Option<String>,
        region: Option<String>,
        path_style: bool,
    ) -> Result<Self, AddressError> {
        Ok(Self {
            endpoint,
            region,
            path_style,
            ..Self::from_url(url)?
        })
    }

    /// A configuration from `s3://bucket/prefix` (the prefix may be empty).
    pub fn from_url(url: &str) -> Result<Self, AddressError> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| AddressError::NotS3(url.to_string()))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(AddressError::NoBucket(url.to_string()));
        }
        Ok(Self {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            region: None,
            endpoint: None,
            path_style: false,
            role_arn: None,
            external_id: None,
        })
    }
}

/// An `s3://` address that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("`{0}` is not an s3://bucket/prefix address")]
    NotS3(String),
    #[error("`{0}` names no bucket")]
    NoBucket(String),
}

/// Results in an S3 bucket.
#[derive(Debug, Clone)]
pub struct S3Sink {
    client: Client,
    cfg: S3Config,
    /// Index updates of this process, one at a time (one server per bucket prefix).
    index: std::sync::Arc<tokio::sync::Mutex<()>>,
}

fn io_err(context: impl Into<String>, e: std::io::Error) -> StorageError {
    StorageError::io(context, e)
}

/// An error with its source chain, which holds the server's answer.
fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

/// The SDK's error, transient when the server could not be reached, timed
/// out, answered garbage, or said it is busy or failing (5xx, 429, 408);
/// permanent when it refused the request (any other 4xx: access denied, no
/// such bucket, a checksum that does not match).
fn sdk_err<E: std::error::Error + 'static>(
    context: impl Into<String>,
    e: aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> StorageError {
    use aws_sdk_s3::error::SdkError as S;
    let transient = match &e {
        S::TimeoutError(_) | S::DispatchFailure(_) | S::ResponseError(_) => true,
        S::ServiceError(s) => {
            let code = s.raw().status().as_u16();
            code >= 500 || code == 429 || code == 408
        }
        _ => false,
    };
    let msg = chain(&e);
    if transient {
        StorageError::transient(context, msg)
    } else {
        StorageError::permanent(context, msg)
    }
}

impl S3Sink {
    /// A sink using the standard AWS credential chain — through the
    /// role `cfg.role_arn` when one is named (the SDK's assume-role
    /// provider: STS is asked for short-lived credentials, refreshed before
    /// they expire; STS at the endpoint too when one is given).
    pub async fn connect(cfg: S3Config) -> Self {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(r) = &cfg.region {
            loader = loader.region(aws_config::Region::new(r.clone()));
        }
        if cfg.role_arn.is_some()
            && let Some(e) = &cfg.endpoint
        {
            loader = loader.endpoint_url(e);
        }
        let sdk = loader.load().await;
        let sdk = match &cfg.role_arn {
            Some(arn) => {
                let mut role = aws_config::sts::AssumeRoleProvider::builder(arn)
                    .session_name("sentinel")
                    .configure(&sdk);
                if let Some(id) = &cfg.external_id {
                    role = role.external_id(id);
                }
                let role = role.build().await;
                sdk.into_builder()
                    .credentials_provider(aws_sdk_s3::config::SharedCredentialsProvider::new(role))
                    .build()
            }
            None => sdk,
        };
        Self::with_sdk_config(cfg, &sdk)
    }

    /// A sink with a fixed access key instead of the credential chain.
    pub fn with_keys(cfg: S3Config, access_key: &str, secret_key: &str) -> Self {
        use aws_sdk_s3::config::{BehaviorVersion, Credentials, SharedCredentialsProvider};
        let creds = Credentials::new(access_key, secret_key, None, None, "sentinel");
        let mut sdk = aws_config::SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .credentials_provider(SharedCredentialsProvider::new(creds));
        if let Some(r) = &cfg.region {
            sdk = sdk.region(aws_config::Region::new(r.clone()));
        }
        Self::with_sdk_config(cfg, &sdk.build())
    }

    /// A sink from an SDK configuration the caller built (tests give static
    /// credentials this way).
    pub fn with_sdk_config(cfg: S3Config, sdk: &aws_config::SdkConfig) -> Self {
        let mut b = aws_sdk_s3::config::Builder::from(sdk).force_path_style(cfg.path_style);
        if let Some(e) = &cfg.endpoint {
            b = b.endpoint_url(e);
        }
        if let Some(r) = &cfg.region {
            b = b.region(aws_sdk_s3::config::Region::new(r.clone()));
        }
        Self {
            client: Client::from_conf(b.build()),
            cfg,
            index: Default::default(),
        }
    }

    /// The full key of a results-layout key.
    pub fn key(&self, key: &str) -> String {
        let p = self.cfg.prefix.trim_matches('/');
        if p.is_empty() {
            key.to_string()
        } else {
            format!("{p}/{key}")
        }
    }

    /// The SDK client (for tests and tools that read back).
    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn bucket(&self) -> &str {
        &self.cfg.bucket
    }

    /// Uploads a file at `key` under the prefix, with its content type (the
    /// web app's files; multipart when large).
    pub async fn put_object(
        &self,
        key: &str,
        file: &std::path::Path,
        content_type: &str,
    ) -> Result<(), StorageError> {
        upload::put_file(self, key, file, content_type).await
    }

    /// Writes a JSON document at `key` under the prefix (checksummed).
    pub async fn put_json<T: Serialize + Sync>(
        &self,
        key: &str,
        doc: &T,
    ) -> Result<(), StorageError> {
        let mut bytes =
            serde_json::to_vec_pretty(doc).map_err(|e| StorageError::permanent("encode", e))?;
        bytes.push(b'\n');
        upload::put_bytes(self, key, bytes, "application/json").await
    }

    /// Every full key under `prefix`, page by page (`page`: keys asked
    /// for at a time; the service's own when `None`).
    pub(crate) async fn list_keys(
        &self,
        prefix: &str,
        page: Option<i32>,
    ) -> Result<Vec<String>, StorageError> {
        let what = format!("list s3://{}/{prefix}", self.cfg.bucket);
        let mut keys = Vec::new();
        let mut token = None;
        loop {
            let got = self
                .client
                .list_objects_v2()
                .bucket(&self.cfg.bucket)
                .prefix(prefix)
                .set_max_keys(page)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| sdk_err(what.clone(), e))?;
            keys.extend(
                got.contents()
                    .iter()
                    .filter_map(|o| o.key().map(String::from)),
            );
            match got.next_continuation_token() {
                Some(t) if got.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => break,
            }
        }
        Ok(keys)
    }

    /// Reads an object; `None` when there is none.
    pub(crate) async fn get_bytes(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let full = self.key(key);
        let got = self
            .client
            .get_object()
            .bucket(&self.cfg.bucket)
            .key(&full)
            .send()
            .await;
        match got {
            Ok(o) => {
                let body = o.body.collect().await.map_err(|e| {
                    StorageError::transient(
                        format!("read s3://{}/{full}", self.cfg.bucket),
                        chain(&e),
                    )
                })?;
                Ok(Some(body.into_bytes().to_vec()))
            }
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
            Err(e) => Err(sdk_err(format!("get s3://{}/{full}", self.cfg.bucket), e)),
        }
    }

    /// Reads a document, checking its schema first.
    async fn get_json<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StorageError> {
        match self.get_bytes(key).await? {
            Some(b) => sentinel_api::decode(&b, key, &[u64::from(SCHEMA_VERSION)])
                .map(Some)
                .map_err(|e| StorageError::permanent(format!("decode {key}"), e)),
            None => Ok(None),
        }
    }
}

#[async_trait]
impl IndexStore for S3Sink {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        self.get_bytes(key).await
    }

    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), StorageError> {
        upload::put_bytes(self, key, bytes, "application/json").await
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let full = self.key(key);
        self.client
            .delete_object()
            .bucket(&self.cfg.bucket)
            .key(&full)
            .send()
            .await
            .map_err(|e| sdk_err(format!("delete s3://{}/{full}", self.cfg.bucket), e))?;
        Ok(())
    }
}

#[async_trait]
impl ResultsSink for S3Sink {
    async fn put_log(
        &self,
        run: &RunId,
        stage: &StageName,
        attempt: Option<u32>,
        log: &LogBody,
    ) -> Result<String, StorageError> {
        let key = keys::attempt_log(run, stage, attempt);
        let ctype = "text/plain; charset=utf-8";
        match log {
            LogBody::Memory(bytes) => upload::put_bytes(self, &key, bytes.clone(), ctype).await?,
            LogBody::File(file) => upload::put_file(self, &key, file, ctype).await?,
        }
        Ok(keys::log_name(stage, attempt))
    }

    async fn put_artifacts(
        &self,
        run: &RunId,
        stage: &StageName,
        dir: &Path,
    ) -> Result<Option<String>, StorageError> {
        let key = keys::stage_artifacts(run, stage);
        let zip = tempfile::Builder::new()
            .prefix(".sentinel-artifacts-")
            .suffix(".zip")
            .tempfile()
            .map_err(|e| io_err("artifacts zip", e))?;
        let (src, dst) = (dir.to_path_buf(), zip.path().to_path_buf());
        let n = tokio::task::spawn_blocking(move || sentinel_results::zip_dir(&src, &dst))
            .await
            .map_err(|e| StorageError::permanent(key.clone(), e))?
            .map_err(|e| io_err(format!("zip {key}"), e))?;
        if n == 0 {
            return Ok(None);
        }
        upload::put_file(self, &key, zip.path(), "application/zip").await?;
        Ok(Some(format!("{stage}.zip")))
    }

    async fn put_stage(&self, doc: &StageDoc) -> Result<(), StorageError> {
        self.put_json(&keys::stage_doc(&doc.run_id, &doc.name), doc)
            .await
    }

    async fn put_run(&self, doc: &RunDoc) -> Result<(), StorageError> {
        self.put_json(&keys::run_doc(&doc.id), doc).await
    }

    async fn update_index(&self, summary: &RunSummary) -> Result<(), StorageError> {
        let _one = self.index.lock().await;
        index::upsert(self, summary).await
    }

    async fn remove_from_index(&self, run: &RunId) -> Result<(), StorageError> {
        let _one = self.index.lock().await;
        index::remove(self, run).await
    }

    async fn remove_many_from_index(&self, runs: &[RunId]) -> Result<(), StorageError> {
        let _one = self.index.lock().await;
        index::remove_many(self, runs).await
    }

    async fn remove_run(&self, run: &RunId) -> Result<u64, StorageError> {
        let prefix = format!("{}/", self.key(&keys::run_dir(run)));
        let keys = self.list_keys(&prefix, None).await?;
        for key in &keys {
            self.client
                .delete_object()
                .bucket(&self.cfg.bucket)
                .key(key)
                .send()
                .await
                .map_err(|e| sdk_err(format!("delete s3://{}/{key}", self.cfg.bucket), e))?;
        }
        Ok(keys.len() as u64)
    }

    async fn get_run(&self, run: &RunId) -> Result<Option<RunDoc>, StorageError> {
        self.get_json(&keys::run_doc(run)).await
    }

    async fn get_stage(
        &self,
        run: &RunId,
        stage: &StageName,
    ) -> Result<Option<StageDoc>, StorageError> {
        self.get_json(&keys::stage_doc(run, stage)).await
    }

    async fn get_log(
        &self,
        run: &RunId,
        stage: &StageName,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        self.get_bytes(&keys::stage_log(run, stage)).await
    }

    async fn get_artifacts(
        &self,
        run: &RunId,
        stage: &StageName,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        self.get_bytes(&keys::stage_artifacts(run, stage)).await
    }

    async fn list_index(&self, limit: usize) -> Result<Vec<RunSummary>, StorageError> {
        index::list(self, limit).await
    }

    fn location(&self) -> String {
        format!("s3://{}/{}", self.cfg.bucket, self.key(""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let c = S3Config::from_url("s3://ci-results/team/app/").unwrap();
        assert_eq!(
            (c.bucket.as_str(), c.prefix.as_str()),
            ("ci-results", "team/app")
        );
        assert_eq!(S3Config::from_url("s3://b").unwrap().prefix, "");
        assert!(
            S3Config::from_url("https://b/x")
                .unwrap_err()
                .to_string()
                .contains("s3://")
        );
        assert!(
            S3Config::from_url("s3:///x")
                .unwrap_err()
                .to_string()
                .contains("no bucket")
        );
    }
}
