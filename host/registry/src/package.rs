//! A published step: its component (or a script step's folder as a tar),
//! its manifest text, and the signature over both; the digests that name
//! it.

use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use sentinel_pipeline::StepManifest;

use crate::sign::{self, Signature};

/// The media type of a script step's folder as a tar (Sentinel's own).
pub const SCRIPT_MEDIA_TYPE: &str = "application/vnd.sentinel.step.script.v1.tar";

/// What a package holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A WebAssembly component (`application/wasm`).
    Wasm,
    /// A script step's folder, as a tar ([`SCRIPT_MEDIA_TYPE`]).
    Script,
}

impl Kind {
    /// The body's file name in a folder or bucket registry and in the cache.
    pub fn file(self) -> &'static str {
        match self {
            Self::Wasm => "step.wasm",
            Self::Script => "step.tar",
        }
    }
}

/// `sha256:<hex>` of bytes.
pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// One version of one step, as registries move it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub kind: Kind,
    /// `step.toml` as the author wrote it (empty for a component published
    /// by another tool: it is granted nothing).
    pub manifest_text: String,
    pub body: Vec<u8>,
    pub signature: Option<Signature>,
}

impl Package {
    /// The content digest: of the component, or of a script step's tar.
    pub fn digest(&self) -> String {
        sha256(&self.body)
    }

    /// The digest of the manifest text.
    pub fn manifest_digest(&self) -> String {
        sha256(self.manifest_text.as_bytes())
    }

    /// What a signature of this package covers.
    pub fn message(&self, name: &str, version: &str) -> Vec<u8> {
        sign::message(name, version, &self.digest(), &self.manifest_digest())
    }

    /// The manifest; a package without one (a component another tool
    /// published) gets the name and version it was pulled as, no settings
    /// and no capabilities.
    pub fn manifest(&self, name: &str, version: &str, file: &str) -> Result<StepManifest, String> {
        if self.manifest_text.trim().is_empty() {
            return Ok(StepManifest {
                name: name.to_string(),
                version: version.to_string(),
                description: String::new(),
                settings: Default::default(),
                capabilities: Default::default(),
            });
        }
        StepManifest::parse(&self.manifest_text, file).map_err(|e| e.to_string())
    }
}

/// What a folder or bucket registry's index says of one version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    pub kind: Kind,
    pub digest: String,
    pub manifest_digest: String,
    pub size: u64,
    /// RFC 3339.
    pub published: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_by: Option<String>,
}

impl Published {
    /// The record of `pkg`, published now.
    pub fn of(pkg: &Package) -> Self {
        Self {
            kind: pkg.kind,
            digest: pkg.digest(),
            manifest_digest: pkg.manifest_digest(),
            size: pkg.body.len() as u64,
            published: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            signed_by: pkg.signature.as_ref().map(|s| s.key.clone()),
        }
    }
}

/// A script step's folder as a tar: files in name order, modes kept
/// (`run.sh` stays executable), owners and times cleared, so the same
/// folder always makes the same bytes (and digest). Links and anything
/// but plain files and folders are refused.
pub fn script_tar(dir: &std::path::Path) -> Result<Vec<u8>, String> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = std::fs::read_dir(&d).map_err(|e| format!("cannot read {}: {e}", d.display()))?;
        for e in rd.flatten() {
            let p = e.path();
            let t = e.file_type().map_err(|e| format!("{}: {e}", p.display()))?;
            if t.is_dir() {
                if e.file_name() != ".git" {
                    stack.push(p);
                }
            } else if t.is_file() {
                files.push(p);
            } else {
                return Err(format!(
                    "{} is not a plain file: a published script step holds files and folders only",
                    p.display()
                ));
            }
        }
    }
    files.sort();
    let mut b = tar::Builder::new(Vec::new());
    for f in files {
        let rel = f.strip_prefix(dir).unwrap_or(&f);
        let bytes = std::fs::read(&f).map_err(|e| format!("cannot read {}: {e}", f.display()))?;
        let mode = {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::metadata(&f)
                .map(|m| m.permissions().mode())
                .unwrap_or(0o644)
        };
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(if mode & 0o111 != 0 { 0o755 } else { 0o644 });
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, rel, bytes.as_slice())
            .map_err(|e| format!("cannot pack {}: {e}", f.display()))?;
    }
    b.into_inner().map_err(|e| e.to_string())
}

/// Unpacks a script step's tar into `dest` (never outside it; files and
/// folders only).
pub fn unpack_script(tar_bytes: &[u8], dest: &std::path::Path) -> Result<(), String> {
    let mut a = tar::Archive::new(tar_bytes);
    std::fs::create_dir_all(dest).map_err(|e| e.to_string())?;
    for entry in a.entries().map_err(|e| format!("not a tar: {e}"))? {
        let mut entry = entry.map_err(|e| format!("not a tar: {e}"))?;
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir()) {
            return Err("the step's tar holds something other than files and folders".into());
        }
        if !entry.unpack_in(dest).map_err(|e| e.to_string())? {
            return Err("the step's tar names a path outside its folder".into());
        }
    }
    Ok(())
}
