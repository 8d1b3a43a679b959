//! The cache in a folder of this machine (`<state>/cache` for `sentinel
//! run`): objects are files, written to a temporary name and renamed, so a
//! crash never leaves half an entry under its name.

use std::path::{Path, PathBuf};

use async_trait::async_trait;

use crate::error::StorageError;
use crate::ports::CacheBackend;

/// A folder holding cache entries.
#[derive(Debug, Clone)]
pub struct CacheDir {
    pub dir: PathBuf,
}

impl CacheDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

fn io(what: &str, name: &str, e: std::io::Error) -> StorageError {
    StorageError::io(format!("{what} cache object {name}"), e)
}

/// Writes `to` by way of a temporary file renamed over it.
fn replace(to: &Path, write: impl FnOnce(&Path) -> std::io::Result<()>) -> std::io::Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = to.with_extension(format!("tmp-{}", std::process::id()));
    write(&tmp)?;
    std::fs::rename(&tmp, to)
}

#[async_trait]
impl CacheBackend for CacheDir {
    async fn read(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        match tokio::fs::read(self.path(name)).await {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("read", name, e)),
        }
    }

    async fn write(&self, name: &str, bytes: &[u8]) -> Result<(), StorageError> {
        let (to, bytes) = (self.path(name), bytes.to_vec());
        tokio::task::spawn_blocking(move || replace(&to, |tmp| std::fs::write(tmp, &bytes)))
            .await
            .map_err(|e| StorageError::permanent("write a cache object", e))?
            .map_err(|e| io("write", name, e))
    }

    async fn download(&self, name: &str, to: &Path) -> Result<bool, StorageError> {
        let (from, to) = (self.path(name), to.to_path_buf());
        if !from.exists() {
            return Ok(false);
        }
        // A hard link when the folders share a file system (entries are
        // never changed in place), else a copy.
        tokio::task::spawn_blocking(move || {
            let _ = std::fs::remove_file(&to);
            std::fs::hard_link(&from, &to).or_else(|_| std::fs::copy(&from, &to).map(|_| ()))
        })
        .await
        .map_err(|e| StorageError::permanent("read a cache object", e))?
        .map_err(|e| io("read", name, e))?;
        Ok(true)
    }

    async fn upload(&self, name: &str, from: &Path) -> Result<(), StorageError> {
        let (to, from) = (self.path(name), from.to_path_buf());
        tokio::task::spawn_blocking(move || {
            replace(&to, |tmp| {
                std::fs::hard_link(&from, tmp).or_else(|_| std::fs::copy(&from, tmp).map(|_| ()))
            })
        })
        .await
        .map_err(|e| StorageError::permanent("write a cache object", e))?
        .map_err(|e| io("write", name, e))
    }

    async fn delete(&self, name: &str) -> Result<(), StorageError> {
        match tokio::fs::remove_file(self.path(name)).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("remove", name, e)),
            _ => Ok(()),
        }
    }

    fn location(&self) -> String {
        self.dir.display().to_string()
    }
}
