//! `sentinel.lock` beside the pipeline: for every step reference resolved
//! through a registry, the exact version, where it came from, and the
//! digests of its component and manifest. Runs use it; `--locked` refuses
//! to change it; `sentinel step update` moves it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The lock file's name.
pub const FILE: &str = "sentinel.lock";

const HEADER: &str = "# sentinel.lock: the exact steps this pipeline runs, pinned by digest.\n# Written by `sentinel run`, moved by `sentinel step update`. Commit it.\n";

/// One pinned reference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pin {
    /// The reference as the pipeline writes it.
    pub reference: String,
    pub name: String,
    pub version: String,
    /// Where it was pulled from.
    pub source: String,
    /// The component's (or script tar's) digest.
    pub digest: String,
    /// The manifest's digest.
    pub manifest: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    version: u32,
    #[serde(default, rename = "step")]
    steps: Vec<Pin>,
}

/// A lock file's pins by reference.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lock {
    pub pins: BTreeMap<String, Pin>,
}

impl Lock {
    /// The lock beside a pipeline file.
    pub fn path_for(pipeline: &Path) -> PathBuf {
        pipeline.parent().unwrap_or(Path::new(".")).join(FILE)
    }

    /// Reads a lock file; an absent file is an empty lock.
    pub fn read(path: &Path) -> Result<Self, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let file: File = toml::from_str(&text).map_err(|e| {
            let at = sentinel_pipeline::step::toml_position(&text, &e)
                .map(|(line, col)| format!("{line}:{col}: "))
                .unwrap_or_default();
            format!("{}:{at}{}", path.display(), e.message())
        })?;
        if file.version != 1 {
            return Err(format!(
                "{}: lock file version {} is not known to this sentinel (1 is)",
                path.display(),
                file.version
            ));
        }
        Ok(Self {
            pins: file
                .steps
                .into_iter()
                .map(|p| (p.reference.clone(), p))
                .collect(),
        })
    }

    /// The file's text.
    pub fn to_text(&self) -> String {
        let file = File {
            version: 1,
            steps: self.pins.values().cloned().collect(),
        };
        format!(
            "{HEADER}{}",
            toml::to_string_pretty(&file).unwrap_or_default()
        )
    }

    /// Writes it (atomically); an empty lock removes the file.
    pub fn write(&self, path: &Path) -> Result<(), String> {
        let fail = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
        if self.pins.is_empty() {
            return match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(fail(e)),
                _ => Ok(()),
            };
        }
        let tmp = path.with_extension("lock.tmp");
        std::fs::write(&tmp, self.to_text()).map_err(fail)?;
        std::fs::rename(&tmp, path).map_err(fail)
    }

    /// What changes from `self` to `new`, one line each (for `--locked`).
    pub fn changes(&self, new: &Lock) -> Vec<String> {
        let mut out = Vec::new();
        for (r, p) in &new.pins {
            match self.pins.get(r) {
                None => out.push(format!(
                    "`{r}`: added, {} {} ({})",
                    p.name, p.version, p.digest
                )),
                Some(o) if o != p => out.push(format!(
                    "`{r}`: {} ({}) → {} ({})",
                    o.version, o.digest, p.version, p.digest
                )),
                _ => {}
            }
        }
        for r in self.pins.keys().filter(|r| !new.pins.contains_key(*r)) {
            out.push(format!("`{r}`: removed (the pipeline no longer uses it)"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_changes() {
        let pin = Pin {
            reference: "acme/x@^1".into(),
            name: "x".into(),
            version: "1.0.0".into(),
            source: "oci://127.0.0.1:5000/steps/acme/x:1.0.0".into(),
            digest: format!("sha256:{}", "a".repeat(64)),
            manifest: format!("sha256:{}", "b".repeat(64)),
            signer: None,
        };
        let lock = Lock {
            pins: [(pin.reference.clone(), pin.clone())].into(),
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        lock.write(&path).unwrap();
        assert_eq!(Lock::read(&path).unwrap(), lock);
        let mut moved = lock.clone();
        moved.pins.get_mut("acme/x@^1").unwrap().version = "1.1.0".into();
        assert_eq!(lock.changes(&moved).len(), 1);
        assert!(lock.changes(&lock).is_empty());
        assert!(lock.changes(&Lock::default())[0].contains("no longer uses"));
        assert!(Lock::default().changes(&lock)[0].contains("added, x 1.0.0"));
        std::fs::write(&path, "version = 1\n[[step]]\nreference = 1\n").unwrap();
        let e = Lock::read(&path).unwrap_err();
        assert!(e.contains(":3:"), "{e}");
        Lock::default().write(&path).unwrap();
        assert!(!path.exists());
    }
}
