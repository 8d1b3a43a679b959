//! A bucket prefix as a step registry's storage (`s3://bucket/prefix`):
//! the registry crate's folder layout, its objects read and written here.

use async_trait::async_trait;
use sentinel_engine::StorageError;
use sentinel_registry::{Blobs, RegistryError};

use crate::{S3Config, S3Sink};

/// `s3://bucket/prefix` holding steps; connected (the AWS credential
/// chain read) at its first use.
#[derive(Debug)]
pub struct S3Steps {
    cfg: S3Config,
    sink: tokio::sync::OnceCell<S3Sink>,
}

impl S3Steps {
    pub fn new(cfg: S3Config) -> Self {
        Self {
            cfg,
            sink: tokio::sync::OnceCell::new(),
        }
    }

    /// Over a sink already connected (tests: explicit keys).
    pub fn with_sink(sink: S3Sink) -> Self {
        Self {
            cfg: sink.cfg.clone(),
            sink: tokio::sync::OnceCell::new_with(Some(sink)),
        }
    }

    async fn sink(&self) -> &S3Sink {
        self.sink
            .get_or_init(|| S3Sink::connect(self.cfg.clone()))
            .await
    }
}

fn registry_err(e: StorageError) -> RegistryError {
    let message = e.to_string();
    if e.is_transient() {
        RegistryError::transient(message)
    } else {
        RegistryError::permanent(message)
    }
}

#[async_trait]
impl Blobs for S3Steps {
    fn url(&self) -> String {
        format!("s3://{}/{}", self.cfg.bucket, self.cfg.prefix)
            .trim_end_matches('/')
            .to_string()
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, RegistryError> {
        self.sink().await.get_bytes(key).await.map_err(registry_err)
    }

    async fn keys(&self) -> Result<Vec<String>, RegistryError> {
        let sink = self.sink().await;
        let root = sink.key("");
        let root = if root.is_empty() {
            String::new()
        } else {
            format!("{}/", root.trim_end_matches('/'))
        };
        Ok(sink
            .list_keys(&root, None)
            .await
            .map_err(registry_err)?
            .into_iter()
            .filter_map(|k| k.strip_prefix(&root).map(str::to_string))
            .collect())
    }

    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), RegistryError> {
        let kind = if key.ends_with(".json") {
            "application/json"
        } else if key.ends_with(".wasm") {
            "application/wasm"
        } else {
            "application/octet-stream"
        };
        crate::upload::put_bytes(self.sink().await, key, bytes, kind)
            .await
            .map_err(registry_err)
    }
}
