//! Cache entries in a private S3 prefix (never the results prefix, which may
//! be a public website): the engine's [`CacheBackend`] over the same client,
//! checksummed uploads and error kinds as the results.

use std::path::Path;

use async_trait::async_trait;
use sentinel_engine::ports::{CacheBackend, StorageError};
use tokio::io::AsyncWriteExt;

use crate::{S3Sink, chain, io_err, sdk_err, upload};

/// A cache in `s3://bucket/prefix`.
#[derive(Debug, Clone)]
pub struct S3Cache {
    s3: S3Sink,
}

impl S3Cache {
    /// A cache using the client and address of `s3` (its prefix is the
    /// cache's, not the results').
    pub fn new(s3: S3Sink) -> Self {
        Self { s3 }
    }
}

#[async_trait]
impl CacheBackend for S3Cache {
    async fn read(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        self.s3.get_bytes(name).await
    }

    async fn write(&self, name: &str, bytes: &[u8]) -> Result<(), StorageError> {
        upload::put_bytes(&self.s3, name, bytes.to_vec(), "application/json").await
    }

    async fn download(&self, name: &str, to: &Path) -> Result<bool, StorageError> {
        let (bucket, full) = (self.s3.bucket().to_string(), self.s3.key(name));
        let got = self
            .s3
            .client()
            .get_object()
            .bucket(&bucket)
            .key(&full)
            .send()
            .await;
        let mut body = match got {
            Ok(o) => o.body,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => return Ok(false),
            Err(e) => return Err(sdk_err(format!("get s3://{bucket}/{full}"), e)),
        };
        let mut f = tokio::fs::File::create(to)
            .await
            .map_err(|e| io_err(format!("create {}", to.display()), e))?;
        while let Some(chunk) = body
            .try_next()
            .await
            .map_err(|e| StorageError::transient(format!("read s3://{bucket}/{full}"), chain(&e)))?
        {
            f.write_all(&chunk)
                .await
                .map_err(|e| io_err(format!("write {}", to.display()), e))?;
        }
        f.flush()
            .await
            .map_err(|e| io_err(format!("write {}", to.display()), e))?;
        Ok(true)
    }

    async fn upload(&self, name: &str, from: &Path) -> Result<(), StorageError> {
        upload::put_file(&self.s3, name, from, "application/x-tar").await
    }

    async fn delete(&self, name: &str) -> Result<(), StorageError> {
        let (bucket, full) = (self.s3.bucket().to_string(), self.s3.key(name));
        self.s3
            .client()
            .delete_object()
            .bucket(&bucket)
            .key(&full)
            .send()
            .await
            .map_err(|e| sdk_err(format!("delete s3://{bucket}/{full}"), e))?;
        Ok(())
    }

    fn location(&self) -> String {
        format!("s3://{}/{}", self.s3.bucket(), self.s3.key(""))
    }
}
