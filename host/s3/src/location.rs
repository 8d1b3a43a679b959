//! A bucket prefix as a deploy watcher's [`Location`]: markers listed with
//! `ListObjectsV2` (every page), payloads read with `GetObject`, refused
//! from their length when larger than the cap and never read past it.

use async_trait::async_trait;
use sentinel_deploy::{Location, SourceError};

use crate::{S3Sink, chain, sdk_err};

/// `s3://bucket/prefix` as a location.
#[derive(Debug, Clone)]
pub struct S3Location {
    s3: S3Sink,
    /// Keys per `ListObjectsV2` page (the server's most, 1,000, unless a
    /// test asks for fewer).
    page: Option<i32>,
}

impl S3Location {
    pub fn new(s3: S3Sink) -> Self {
        Self { s3, page: None }
    }

    /// Lists `keys` keys per page.
    pub fn with_page_size(mut self, keys: i32) -> Self {
        self.page = Some(keys);
        self
    }
}

fn read_err(what: String, why: impl std::fmt::Display) -> SourceError {
    SourceError::Read {
        what,
        why: why.to_string(),
    }
}

#[async_trait]
impl Location for S3Location {
    async fn list(&self, folder: &str) -> Result<Vec<String>, SourceError> {
        let root = self.s3.key("");
        let root = if root.is_empty() {
            String::new()
        } else {
            format!("{}/", root.trim_end_matches('/'))
        };
        let folder = folder.trim_matches('/');
        let prefix = if folder.is_empty() {
            root.clone()
        } else {
            format!("{root}{folder}/")
        };
        let what = format!("list {}", self.describe());
        let mut keys: Vec<String> = self
            .s3
            .list_keys(&prefix, self.page)
            .await
            .map_err(|e| read_err(what, e))?
            .into_iter()
            .filter_map(|k| k.strip_prefix(&root).map(String::from))
            .collect();
        keys.sort();
        Ok(keys)
    }

    async fn read(&self, key: &str, cap: u64) -> Result<Option<Vec<u8>>, SourceError> {
        let (bucket, full) = (self.s3.bucket().to_string(), self.s3.key(key));
        let what = format!("s3://{bucket}/{full}");
        let got = self
            .s3
            .client()
            .get_object()
            .bucket(&bucket)
            .key(&full)
            .send()
            .await;
        let o = match got {
            Ok(o) => o,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => return Ok(None),
            Err(e) => return Err(read_err(what.clone(), sdk_err(&what, e))),
        };
        if o.content_length().is_some_and(|n| n as u64 > cap) {
            return Err(SourceError::TooLarge { what, cap });
        }
        let mut body = o.body;
        let mut bytes = Vec::new();
        while let Some(chunk) = body
            .try_next()
            .await
            .map_err(|e| read_err(what.clone(), chain(&e)))?
        {
            bytes.extend_from_slice(&chunk);
            if bytes.len() as u64 > cap {
                return Err(SourceError::TooLarge { what, cap });
            }
        }
        Ok(Some(bytes))
    }

    fn describe(&self) -> String {
        format!("s3://{}/{}", self.s3.bucket(), self.s3.key(""))
            .trim_end_matches('/')
            .to_string()
    }
}
