//! Where markers and payloads are read from: a [`Location`] (a local folder
//! here; an S3 prefix in the S3 crate) lists keys and reads objects, never
//! more than a cap.

use std::path::{Path, PathBuf};

use async_trait::async_trait;

/// Why a location could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    #[error("{what}: {why}")]
    Read { what: String, why: String },
    #[error("{what} is larger than {cap} bytes")]
    TooLarge { what: String, cap: u64 },
}

/// A folder of objects (a bucket prefix or a local folder); keys are
/// relative to it, with `/` between folders.
#[async_trait]
pub trait Location: Send + Sync + std::fmt::Debug {
    /// Every key at or below `folder` (`""`: everything), sorted.
    async fn list(&self, folder: &str) -> Result<Vec<String>, SourceError>;
    /// The object at `key` (`None`: there is none), refused when larger than `cap`.
    async fn read(&self, key: &str, cap: u64) -> Result<Option<Vec<u8>>, SourceError>;
    /// Where it is, for messages (`s3://bucket/prefix`, a path).
    fn describe(&self) -> String;
}

/// A local folder.
#[derive(Debug, Clone)]
pub struct Folder {
    root: PathBuf,
}

impl Folder {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
}

/// True for a key that stays inside its folder.
fn key_ok(key: &str) -> bool {
    !key.starts_with('/')
        && key
            .split('/')
            .all(|p| !p.is_empty() && p != "." && p != "..")
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for e in entries {
        let e = e?;
        // Links are not followed: a marker folder holds plain files.
        let kind = e.file_type()?;
        let path = e.path();
        if kind.is_dir() {
            walk(root, &path, out)?;
        } else if kind.is_file()
            && let Ok(rel) = path.strip_prefix(root)
            && let Some(rel) = rel.to_str()
        {
            out.push(rel.replace(std::path::MAIN_SEPARATOR, "/"));
        }
    }
    Ok(())
}

#[async_trait]
impl Location for Folder {
    async fn list(&self, folder: &str) -> Result<Vec<String>, SourceError> {
        let root = self.root.clone();
        let folder = folder.trim_matches('/').to_string();
        let what = format!("list {}", self.describe());
        tokio::task::spawn_blocking(move || {
            if !folder.is_empty() && !key_ok(&folder) {
                return Ok(Vec::new());
            }
            let mut out = Vec::new();
            walk(&root, &root.join(&folder), &mut out)?;
            out.sort();
            Ok(out)
        })
        .await
        .map_err(|e| SourceError::Read {
            what: what.clone(),
            why: e.to_string(),
        })?
        .map_err(|e: std::io::Error| SourceError::Read {
            what,
            why: e.to_string(),
        })
    }

    async fn read(&self, key: &str, cap: u64) -> Result<Option<Vec<u8>>, SourceError> {
        let what = self.root.join(key).display().to_string();
        if !key_ok(key) {
            return Ok(None);
        }
        let path = self.root.join(key);
        let w = what.clone();
        tokio::task::spawn_blocking(move || {
            use std::io::Read as _;
            let f = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e.to_string()),
            };
            let meta = f.metadata().map_err(|e| e.to_string())?;
            if !meta.is_file() {
                return Ok(None);
            }
            let mut bytes = Vec::new();
            f.take(cap + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| e.to_string())?;
            if bytes.len() as u64 > cap {
                return Err(String::new());
            }
            Ok(Some(bytes))
        })
        .await
        .map_err(|e| SourceError::Read {
            what: what.clone(),
            why: e.to_string(),
        })?
        .map_err(|why| {
            if why.is_empty() {
                SourceError::TooLarge { what: w, cap }
            } else {
                SourceError::Read { what, why }
            }
        })
    }

    fn describe(&self) -> String {
        self.root.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_folder_lists_and_reads_inside_itself_only() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir_all(root.join("d/app")).unwrap();
        std::fs::write(root.join("d/app/1.0.deploy"), b"").unwrap();
        std::fs::write(root.join("d/app/big"), vec![7u8; 100]).unwrap();
        std::fs::write(tmp.path().join("outside"), b"secret").unwrap();
        let f = Folder::new(root.join("d"));
        assert_eq!(f.list("").await.unwrap(), vec!["app/1.0.deploy", "app/big"]);
        assert_eq!(f.list("app").await.unwrap().len(), 2);
        assert!(f.list("none").await.unwrap().is_empty());
        assert_eq!(f.read("app/1.0.deploy", 10).await.unwrap(), Some(vec![]));
        assert_eq!(f.read("app/missing", 10).await.unwrap(), None);
        assert_eq!(f.read("../outside", 10).await.unwrap(), None);
        assert!(matches!(
            f.read("app/big", 99).await,
            Err(SourceError::TooLarge { cap: 99, .. })
        ));
        assert_eq!(f.read("app/big", 100).await.unwrap().unwrap().len(), 100);
    }
}
