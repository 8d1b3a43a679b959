//! Pulled steps, content-addressed in the state folder:
//! `<root>/sha256/<component hex>/<manifest hex>/{step.wasm, step.toml,
//! origin.json}` (one component may be published with several manifests:
//! each is its own entry). An entry is written apart and renamed into
//! place, so a reader sees all of it or none; the component's digest is
//! checked when it enters, and again by the runtime each time it loads the
//! bytes (before every run); the manifest's digest on every lookup.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use sentinel_pipeline::ResolvedStep;

use crate::package::{Kind, Package, sha256};
use crate::sign::Signature;

/// Where a cached package came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub name: String,
    pub version: String,
    /// Where it was pulled from (`oci://…:1.0.0`, `file://…`, `s3://…`).
    pub source: String,
    pub kind: Kind,
    pub manifest_digest: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<Signature>,
}

/// An entry found in the cache.
#[derive(Debug, Clone)]
pub struct Entry {
    pub dir: PathBuf,
    pub digest: String,
    pub origin: Origin,
    pub manifest_text: String,
}

impl Entry {
    /// The component's file.
    pub fn body(&self) -> PathBuf {
        self.dir.join(self.origin.kind.file())
    }

    /// The step as validation sees it (a script step: its unpacked folder).
    pub fn resolved(&self) -> Result<ResolvedStep, String> {
        if self.origin.kind == Kind::Script {
            return sentinel_pipeline::step::load_script(&self.dir.join("step"))
                .unwrap_or_else(|| {
                    Err(sentinel_pipeline::StepError::Read {
                        path: self.dir.join("step/run.sh").display().to_string(),
                        message: "no such file".into(),
                        manifest: false,
                    })
                })
                .map_err(|e| e.to_string());
        }
        let pkg = Package {
            kind: self.origin.kind,
            manifest_text: self.manifest_text.clone(),
            body: Vec::new(),
            signature: None,
        };
        let file = self.dir.join("step.toml").display().to_string();
        Ok(ResolvedStep {
            manifest: pkg.manifest(&self.origin.name, &self.origin.version, &file)?,
            wasm: self.body(),
            digest: self.digest.clone(),
            script: None,
        })
    }

    /// Checks its signature against `trust`, as the step `name` `version`;
    /// the signer when it is signed.
    pub fn check(
        &self,
        trust: &crate::sign::Trust,
        name: &str,
        version: &str,
    ) -> Result<Option<String>, String> {
        let msg = crate::sign::message(name, version, &self.digest, &self.origin.manifest_digest);
        trust.check(self.origin.signature.as_ref(), &msg)
    }

    /// The package again, read whole (for `step show` and re-publishing).
    pub fn package(&self) -> std::io::Result<Package> {
        Ok(Package {
            kind: self.origin.kind,
            manifest_text: self.manifest_text.clone(),
            body: std::fs::read(self.body())?,
            signature: self.origin.signature.clone(),
        })
    }
}

/// The cache of pulled steps.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

fn hex_of(digest: &str) -> Option<&str> {
    digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

impl Cache {
    /// The cache under `root` (`<state>/steps`).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir(&self, digest: &str, manifest: &str) -> Option<PathBuf> {
        Some(
            self.root
                .join("sha256")
                .join(hex_of(digest)?)
                .join(hex_of(manifest)?),
        )
    }

    /// The entries of a component, whatever their manifests.
    pub fn of_component(&self, digest: &str) -> Vec<Entry> {
        let Some(hex) = hex_of(digest) else {
            return Vec::new();
        };
        let Ok(rd) = std::fs::read_dir(self.root.join("sha256").join(hex)) else {
            return Vec::new();
        };
        rd.flatten()
            .filter_map(|e| {
                let m = format!("sha256:{}", e.file_name().to_string_lossy());
                self.get(digest, &m).ok().flatten()
            })
            .collect()
    }

    /// The entry of a component with a manifest; `Ok(None)` when absent; an
    /// error when it is damaged (its manifest no longer has its digest).
    pub fn get(&self, digest: &str, manifest: &str) -> Result<Option<Entry>, String> {
        let Some(dir) = self.dir(digest, manifest) else {
            return Ok(None);
        };
        let origin: Origin = match std::fs::read(dir.join("origin.json")) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| format!("the cached step {} is damaged: {e}", dir.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(format!(
                    "cannot read the cached step {}: {e}",
                    dir.display()
                ));
            }
        };
        let manifest_text = match std::fs::read_to_string(dir.join("step.toml")) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                return Err(format!(
                    "cannot read {}: {e}",
                    dir.join("step.toml").display()
                ));
            }
        };
        let have = sha256(manifest_text.as_bytes());
        if have != origin.manifest_digest {
            return Err(format!(
                "the cached manifest {} changed (digest {have}, expected {}): remove {} and run again",
                dir.join("step.toml").display(),
                origin.manifest_digest,
                dir.display()
            ));
        }
        Ok(Some(Entry {
            dir,
            digest: digest.to_string(),
            origin,
            manifest_text,
        }))
    }

    /// Puts a verified package in the cache (a second copy of the same
    /// digest is dropped: the first is the same bytes).
    pub fn put(&self, pkg: &Package, origin: Origin) -> Result<Entry, String> {
        let (digest, manifest) = (pkg.digest(), pkg.manifest_digest());
        let dir = self.dir(&digest, &manifest).ok_or("bad digest")?;
        let fail = |what: &str, e: std::io::Error| {
            format!(
                "cannot {what} in the step cache {}: {e}",
                self.root.display()
            )
        };
        if !dir.join("origin.json").is_file() {
            std::fs::create_dir_all(&self.root).map_err(|e| fail("create", e))?;
            let tmp = tempfile::tempdir_in(&self.root).map_err(|e| fail("write", e))?;
            std::fs::write(tmp.path().join(pkg.kind.file()), &pkg.body)
                .map_err(|e| fail("write", e))?;
            std::fs::write(tmp.path().join("step.toml"), &pkg.manifest_text)
                .map_err(|e| fail("write", e))?;
            if pkg.kind == Kind::Script {
                crate::package::unpack_script(&pkg.body, &tmp.path().join("step"))?;
            }
            let json = serde_json::to_vec_pretty(&origin).map_err(|e| e.to_string())?;
            std::fs::write(tmp.path().join("origin.json"), json).map_err(|e| fail("write", e))?;
            if let Some(parent) = dir.parent() {
                std::fs::create_dir_all(parent).map_err(|e| fail("create", e))?;
            }
            let tmp = tmp.keep();
            if let Err(e) = std::fs::rename(&tmp, &dir) {
                let _ = std::fs::remove_dir_all(&tmp);
                // Another process put the same digest first: the same bytes.
                if !dir.join("origin.json").is_file() {
                    return Err(fail("rename", e));
                }
            }
        }
        self.get(&digest, &manifest)?
            .ok_or_else(|| format!("{} vanished from the step cache", dir.display()))
    }

    /// Every entry (for `step list` and the steps page).
    pub fn entries(&self) -> Vec<Entry> {
        let Ok(rd) = std::fs::read_dir(self.root.join("sha256")) else {
            return Vec::new();
        };
        let mut out: Vec<Entry> = rd
            .flatten()
            .flat_map(|e| self.of_component(&format!("sha256:{}", e.file_name().to_string_lossy())))
            .collect();
        out.sort_by(|a, b| {
            (&a.origin.name, &a.origin.version).cmp(&(&b.origin.name, &b.origin.version))
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::package::script_tar;

    fn origin(kind: Kind, manifest: &str) -> Origin {
        Origin {
            name: "upload".into(),
            version: "2.0.0".into(),
            source: "file:///r/upload/2.0.0".into(),
            kind,
            manifest_digest: sha256(manifest.as_bytes()),
            signature: None,
        }
    }

    #[test]
    fn a_script_step_round_trips_through_a_tar_into_the_cache() {
        let src = tempfile::tempdir().unwrap();
        std::fs::write(
            src.path().join("step.yml"),
            "name: upload\nversion: 2.0.0\nproperties:\n  - name: target\n    type: string\n",
        )
        .unwrap();
        std::fs::write(
            src.path().join("run.sh"),
            "echo \"to $WERCKER_UPLOAD_TARGET\"\n",
        )
        .unwrap();
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(
                src.path().join("run.sh"),
                std::fs::Permissions::from_mode(0o755),
            )
            .unwrap();
        }
        std::fs::create_dir(src.path().join("lib")).unwrap();
        std::fs::write(src.path().join("lib/x.sh"), "true\n").unwrap();
        let tar = script_tar(src.path()).unwrap();
        // The same folder always makes the same bytes.
        assert_eq!(tar, script_tar(src.path()).unwrap());
        let pkg = Package {
            kind: Kind::Script,
            manifest_text: String::new(),
            body: tar,
            signature: None,
        };
        let cache = Cache::new(tempfile::tempdir().unwrap().keep());
        let entry = cache.put(&pkg, origin(Kind::Script, "")).unwrap();
        let step = entry.resolved().unwrap();
        assert_eq!(step.manifest.name, "upload");
        assert!(step.script.is_some());
        // The unpacked folder is the published one: same files, same digest.
        assert_eq!(
            step.digest,
            sentinel_pipeline::script_step::folder_digest(src.path()).unwrap()
        );
        let mode = {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::metadata(entry.dir.join("step/run.sh"))
                .unwrap()
                .permissions()
                .mode()
        };
        assert_eq!(mode & 0o111, 0o111, "run.sh stays executable");
        assert_eq!(cache.of_component(&pkg.digest()).len(), 1);
    }

    #[test]
    fn one_component_under_two_manifests_is_two_entries_and_a_changed_manifest_is_caught() {
        let cache = Cache::new(tempfile::tempdir().unwrap().keep());
        let body = b"\0asm-not-really".to_vec();
        let a = "name = \"upload\"\nversion = \"2.0.0\"\n";
        let b = "name = \"upload\"\nversion = \"2.1.0\"\n";
        for m in [a, b] {
            let pkg = Package {
                kind: Kind::Wasm,
                manifest_text: m.into(),
                body: body.clone(),
                signature: None,
            };
            cache.put(&pkg, origin(Kind::Wasm, m)).unwrap();
        }
        let digest = sha256(&body);
        assert_eq!(cache.of_component(&digest).len(), 2);
        let e = cache.get(&digest, &sha256(a.as_bytes())).unwrap().unwrap();
        assert_eq!(e.resolved().unwrap().manifest.version, "2.0.0");
        std::fs::write(e.dir.join("step.toml"), b).unwrap();
        let err = cache.get(&digest, &sha256(a.as_bytes())).unwrap_err();
        assert!(err.contains("changed"), "{err}");
        assert!(cache.get(&digest, &sha256(b"other")).unwrap().is_none());
    }
}
