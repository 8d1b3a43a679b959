//! The registry interface, and the layout a folder and an S3 bucket prefix
//! share: `<root>/<owner>/<name>/index.json` (every version's digests) and
//! `<root>/<owner>/<name>/<version>/{step.wasm, step.toml, signature.json}`
//! (`<root>/<name>/…` without an owner). A version's files are written
//! before the index names it, so a reader never finds a version whose files
//! are missing.

use std::collections::BTreeMap;
use std::path::PathBuf;

use async_trait::async_trait;
use semver::Version;
use serde::{Deserialize, Serialize};

use crate::package::{Package, Published};
use crate::sign::Signature;

/// Why a registry did not answer as hoped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RegistryError {
    pub message: String,
    /// Trying again later may succeed (the registry did not answer).
    pub transient: bool,
}

impl RegistryError {
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            transient: false,
        }
    }
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            transient: true,
        }
    }
}

/// The newest version of a step a registry holds.
#[derive(Debug, Clone)]
pub struct Newest {
    pub path: String,
    pub version: Version,
    pub location: String,
    pub published: Published,
    /// Its `step.toml` (empty for a script step: its manifest is in the tar).
    pub manifest_text: String,
}

/// One version as a registry lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub version: Version,
    /// The content digest, when the listing says it without a pull.
    pub digest: Option<String>,
}

/// A place steps are published to and pulled from.
#[async_trait]
pub trait Registry: Send + Sync + std::fmt::Debug {
    /// Its address: `file:///…`, `s3://bucket/prefix`, `oci://host/ns`.
    fn address(&self) -> String;
    /// Where a version of a step is (`file:///…/x/1.0.0`,
    /// `s3://bucket/prefix/x/1.0.0`, `oci://host/ns/x:1.0.0`), as the lock
    /// file and documents record it.
    fn location(&self, path: &str, version: &Version) -> String;
    /// The versions of `path` (`owner/name` or `name`); empty when the
    /// registry has no such step.
    async fn versions(&self, path: &str) -> Result<Vec<Listed>, RegistryError>;
    /// The newest version of every step it holds, with what its index says
    /// and its manifest, when it can list them (a folder or a bucket can; an
    /// OCI registry is asked by name: empty).
    async fn newest(&self) -> Result<Vec<Newest>, RegistryError> {
        Ok(Vec::new())
    }
    /// One version, whole.
    async fn pull(&self, path: &str, version: &Version) -> Result<Package, RegistryError>;
    /// A package by the registry's own digest of it (an OCI manifest
    /// digest), with the version it says it is; registries without such
    /// digests refuse.
    async fn pull_digest(
        &self,
        path: &str,
        digest: &str,
    ) -> Result<(Package, Option<Version>), RegistryError> {
        Err(RegistryError::permanent(format!(
            "{path}: this registry finds packages by version, not by the digest {digest}"
        )))
    }
    /// Publishes a version; refuses to replace a published version with
    /// other bytes unless `force`. Returns its location.
    async fn publish(
        &self,
        path: &str,
        version: &Version,
        pkg: &Package,
        force: bool,
    ) -> Result<String, RegistryError>;
}

/// Objects by key: what a folder and a bucket prefix both are.
#[async_trait]
pub trait Blobs: Send + Sync + std::fmt::Debug {
    /// `file:///…` or `s3://bucket/prefix`.
    fn url(&self) -> String;
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, RegistryError>;
    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), RegistryError>;
    /// Every key (relative to its root).
    async fn keys(&self) -> Result<Vec<String>, RegistryError>;
}

/// A registry in a folder.
#[derive(Debug, Clone)]
pub struct Folder {
    pub root: PathBuf,
}

#[async_trait]
impl Blobs for Folder {
    fn url(&self) -> String {
        format!("file://{}", self.root.display())
    }
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, RegistryError> {
        match tokio::fs::read(self.root.join(key)).await {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(RegistryError::permanent(format!(
                "cannot read {}: {e}",
                self.root.join(key).display()
            ))),
        }
    }
    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), RegistryError> {
        let path = self.root.join(key);
        let fail = |e: std::io::Error| {
            RegistryError::permanent(format!("cannot write {}: {e}", path.display()))
        };
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        tokio::fs::create_dir_all(&dir).await.map_err(fail)?;
        let tmp = dir.join(format!(
            ".{}.tmp-{}",
            path.file_name().unwrap_or_default().to_string_lossy(),
            std::process::id()
        ));
        tokio::fs::write(&tmp, bytes).await.map_err(fail)?;
        tokio::fs::rename(&tmp, &path).await.map_err(fail)
    }
    async fn keys(&self) -> Result<Vec<String>, RegistryError> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || {
            let mut keys = Vec::new();
            let mut stack = vec![root.clone()];
            while let Some(dir) = stack.pop() {
                let Ok(rd) = std::fs::read_dir(&dir) else {
                    continue;
                };
                for e in rd.flatten() {
                    let p = e.path();
                    if p.is_dir() {
                        stack.push(p);
                    } else if let Ok(rel) = p.strip_prefix(&root) {
                        keys.push(rel.to_string_lossy().into_owned());
                    }
                }
            }
            keys
        })
        .await
        .map_err(|e| RegistryError::permanent(e.to_string()))
    }
}

/// A step's index in a folder or bucket.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    schema: u32,
    versions: BTreeMap<String, Published>,
}

/// The shared layout over any [`Blobs`].
#[derive(Debug)]
pub struct Layout<B>(pub B);

impl<B: Blobs> Layout<B> {
    async fn index(&self, path: &str) -> Result<Index, RegistryError> {
        let key = format!("{path}/index.json");
        match self.0.get(&key).await? {
            None => Ok(Index::default()),
            Some(b) => serde_json::from_slice(&b).map_err(|e| {
                RegistryError::permanent(format!("{}/{key} is not a step index: {e}", self.0.url()))
            }),
        }
    }
}

#[async_trait]
impl<B: Blobs> Registry for Layout<B> {
    fn address(&self) -> String {
        self.0.url()
    }

    fn location(&self, path: &str, version: &Version) -> String {
        format!("{}/{path}/{version}", self.0.url())
    }

    async fn versions(&self, path: &str) -> Result<Vec<Listed>, RegistryError> {
        Ok(self
            .index(path)
            .await?
            .versions
            .into_iter()
            .filter_map(|(v, p)| {
                Version::parse(&v).ok().map(|version| Listed {
                    version,
                    digest: Some(p.digest),
                })
            })
            .collect())
    }

    async fn newest(&self) -> Result<Vec<Newest>, RegistryError> {
        let mut paths: Vec<String> = self
            .0
            .keys()
            .await?
            .into_iter()
            .filter_map(|k| k.strip_suffix("/index.json").map(str::to_string))
            .collect();
        paths.sort();
        let mut out = Vec::new();
        for path in paths {
            let newest = self
                .index(&path)
                .await?
                .versions
                .into_iter()
                .filter_map(|(v, p)| Some((Version::parse(&v).ok()?, p)))
                .max_by(|a, b| a.0.cmp(&b.0));
            let Some((version, published)) = newest else {
                continue;
            };
            let manifest_text = self
                .0
                .get(&format!("{path}/{version}/step.toml"))
                .await?
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            out.push(Newest {
                location: self.location(&path, &version),
                path,
                version,
                published,
                manifest_text,
            });
        }
        Ok(out)
    }

    async fn pull(&self, path: &str, version: &Version) -> Result<Package, RegistryError> {
        let index = self.index(path).await?;
        let at = self.location(path, version);
        let Some(entry) = index.versions.get(&version.to_string()) else {
            return Err(RegistryError::permanent(format!("{at} is not published")));
        };
        let get = |name: &'static str| {
            let key = format!("{path}/{version}/{name}");
            async move { self.0.get(&key).await }
        };
        let body = get(entry.kind.file()).await?.ok_or_else(|| {
            RegistryError::permanent(format!("{at}/{} is missing", entry.kind.file()))
        })?;
        let manifest_text = get("step.toml")
            .await?
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        // `null` when the version is not signed.
        let signature = match get("signature.json").await? {
            None => None,
            Some(b) => serde_json::from_slice::<Option<Signature>>(&b)
                .map_err(|e| RegistryError::permanent(format!("{at}/signature.json: {e}")))?,
        };
        Ok(Package {
            kind: entry.kind,
            manifest_text,
            body,
            signature,
        })
    }

    async fn publish(
        &self,
        path: &str,
        version: &Version,
        pkg: &Package,
        force: bool,
    ) -> Result<String, RegistryError> {
        let mut index = self.index(path).await?;
        let at = self.location(path, version);
        if let Some(old) = index.versions.get(&version.to_string()) {
            if old.digest == pkg.digest() && old.manifest_digest == pkg.manifest_digest() && !force
            {
                return Ok(at);
            }
            if !force {
                return Err(RegistryError::permanent(format!(
                    "{at} is already published with other content ({}); publish a new version (or --force to replace it: runs that pinned it will refuse the new bytes)",
                    old.digest
                )));
            }
        }
        let put = |name: &str, bytes: Vec<u8>| {
            let key = format!("{path}/{version}/{name}");
            async move { self.0.put(&key, bytes).await }
        };
        put(pkg.kind.file(), pkg.body.clone()).await?;
        put("step.toml", pkg.manifest_text.clone().into_bytes()).await?;
        put(
            "signature.json",
            serde_json::to_vec_pretty(&pkg.signature).unwrap_or_default(),
        )
        .await?;
        index.schema = 1;
        index
            .versions
            .insert(version.to_string(), Published::of(pkg));
        let json = serde_json::to_vec_pretty(&index).unwrap_or_default();
        self.0.put(&format!("{path}/index.json"), json).await?;
        Ok(at)
    }
}
