//! WebAssembly steps as validation sees them: the manifest (`step.toml`),
//! references (`name@1`, `name@1.2.0`, `./path/step.wasm`), and the catalog
//! that resolves a reference to a manifest and a `.wasm` before the pure
//! validation runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use sha2::Digest;

/// What a step may touch in the run's workspace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkspaceAccess {
    #[default]
    None,
    Read,
    Write,
}

/// What a step is granted; nothing else is reachable.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    #[serde(default)]
    pub workspace: WorkspaceAccess,
    /// Outgoing HTTP hosts (`host`, `host:port`, `*.suffix`, or `{setting}`
    /// replaced by the host of that setting's value).
    #[serde(default)]
    pub http: Vec<String>,
}

/// One setting of a step.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingSpec {
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub default: Option<String>,
    /// Masked in logs; recorded only as a reference.
    #[serde(default)]
    pub secret: bool,
    #[serde(default)]
    pub description: String,
}

/// `step.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepManifest {
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub settings: IndexMap<String, SettingSpec>,
    #[serde(default)]
    pub capabilities: Capabilities,
}

/// Context variable names a step's namespace must not collide with.
const RESERVED: &[&str] = &[
    "RUN",
    "RUN_ID",
    "RUN_STATUS",
    "STAGE",
    "WORKSPACE",
    "ARTIFACTS",
    "OUTPUT",
    "COMMIT",
    "BRANCH",
    "REPO",
    "PIPELINE",
];

/// The environment variable of a setting: `SENTINEL_<STEP>_<KEY>`.
pub fn setting_env_name(step: &str, key: &str) -> String {
    format!(
        "SENTINEL_{}_{}",
        step.to_ascii_uppercase().replace('-', "_"),
        key.to_ascii_uppercase().replace('-', "_")
    )
}

fn name_ok(s: &str) -> bool {
    s.as_bytes().first().is_some_and(u8::is_ascii_lowercase)
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && s.len() <= 40
}

/// A manifest that cannot be used, located in its file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{at}{message}")]
pub struct ManifestError {
    pub file: String,
    /// `line:col: ` when known, else empty.
    pub at: String,
    pub message: String,
}

impl StepManifest {
    /// Parses and checks a manifest; errors name the file, line and column.
    pub fn parse(text: &str, file: &str) -> Result<Self, ManifestError> {
        let fail = |at: String, message: String| ManifestError {
            file: file.to_string(),
            at,
            message,
        };
        let m: StepManifest = toml::from_str(text).map_err(|e| {
            let pos = toml_position(text, &e).map(|(line, col)| format!("{line}:{col}: "));
            fail(pos.unwrap_or_default(), e.message().to_string())
        })?;
        let fail = |message: String| fail(" ".into(), message);
        if !name_ok(&m.name) {
            return Err(fail(format!(
                "step name `{}` must be lower-case letters, digits, `-` or `_`",
                m.name
            )));
        }
        let upper = m.name.to_ascii_uppercase().replace('-', "_");
        if RESERVED
            .iter()
            .any(|r| upper == *r || upper.starts_with(&format!("{r}_")))
        {
            return Err(fail(format!(
                "step name `{}` would collide with Sentinel's context variables (SENTINEL_{upper}…)",
                m.name
            )));
        }
        if m.version.split('.').count() != 3
            || !m.version.split('.').all(|p| p.parse::<u64>().is_ok())
        {
            return Err(fail(format!(
                "version `{}` must be MAJOR.MINOR.PATCH",
                m.version
            )));
        }
        for (k, s) in &m.settings {
            if !name_ok(k) {
                return Err(fail(format!(
                    "setting `{k}` must be lower-case letters, digits, `-` or `_`"
                )));
            }
            if s.required && s.default.is_some() {
                return Err(fail(format!(
                    "setting `{k}` is required and has a default; choose one"
                )));
            }
        }
        Ok(m)
    }
}

/// The line and column (from 1) of a TOML mistake in `text`, when the
/// parser says where it is.
pub fn toml_position(text: &str, e: &toml::de::Error) -> Option<(usize, usize)> {
    let start = e.span()?.start.min(text.len());
    let before = &text[..start];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    Some((line, col))
}

/// Why a step reference could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    #[error("unknown step `{reference}`{}", if *.no_folders { " (no step folders are configured)" } else { "" })]
    Unknown { reference: String, no_folders: bool },
    #[error("step `{name}` is version {have}; `{reference}` asks for {want}")]
    Version {
        name: String,
        have: String,
        reference: String,
        want: String,
    },
    #[error("cannot read {path}: {message}{}", if *.manifest { " (a step needs a step.toml beside its .wasm)" } else { "" })]
    Read {
        path: String,
        message: String,
        /// True when it is the manifest that is missing.
        manifest: bool,
    },
    #[error("{0}")]
    Manifest(#[from] ManifestError),
    /// A registry step that could not be resolved, pulled or trusted.
    #[error("{message}")]
    Registry {
        message: String,
        /// The registry did not answer: trying again later may succeed.
        transient: bool,
    },
}

impl StepError {
    /// True when trying again later may succeed (a registry not answering);
    /// every failure of a local step folder is permanent.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Registry {
                transient: true,
                ..
            }
        )
    }
}

/// A step resolved to its manifest and package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResolvedStep {
    pub manifest: StepManifest,
    /// The component file (for a script step: its `run.sh`).
    pub wasm: PathBuf,
    /// `sha256:<hex>` of the component (of a script step: of its folder).
    pub digest: String,
    /// A script step's manifest kind; `None` for a WebAssembly step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub script: Option<crate::script_step::ScriptManifest>,
}

impl ResolvedStep {
    /// A script step's folder (it runs in a job's container); `None` for a
    /// WebAssembly step.
    pub fn script_dir(&self) -> Option<&Path> {
        self.script.and(self.wasm.parent())
    }
}

/// Resolves step references. Implementations do I/O; they run before the
/// pure validation, which only sees their answers.
pub trait StepCatalog: std::fmt::Debug {
    /// Resolves `reference` (relative paths are relative to `base`).
    fn resolve(&self, reference: &str, base: &Path) -> Result<ResolvedStep, StepError>;
    /// Names of the steps it knows, for "did you mean" hints.
    fn names(&self) -> Vec<String>;
}

/// A catalog with no steps.
#[derive(Debug, Default)]
pub struct NoSteps;

impl StepCatalog for NoSteps {
    fn resolve(&self, reference: &str, base: &Path) -> Result<ResolvedStep, StepError> {
        resolve_path(reference, base).unwrap_or_else(|| {
            Err(StepError::Unknown {
                reference: reference.to_string(),
                no_folders: false,
            })
        })
    }
    fn names(&self) -> Vec<String> {
        Vec::new()
    }
}

/// A reference that is a path (`./x/step.wasm`, or `./folder` of a script
/// step), resolved against `base`; `None` when it is a name.
fn resolve_path(reference: &str, base: &Path) -> Option<Result<ResolvedStep, StepError>> {
    if reference.ends_with(".wasm") {
        return Some(load_local(&base.join(reference)));
    }
    if !(reference.starts_with("./") || reference.starts_with("../") || reference.starts_with('/'))
    {
        return None;
    }
    let dir = base.join(reference);
    Some(load_script(&dir).unwrap_or_else(|| {
        Err(StepError::Read {
            path: dir.join("run.sh").display().to_string(),
            message: "no such file (a script step is a folder with a manifest and a run.sh)".into(),
            manifest: false,
        })
    }))
}

/// Loads `dir/step.wasm` + `dir/step.toml`-style pairs: a `.wasm` with a
/// `step.toml` beside it.
pub fn load_local(wasm: &Path) -> Result<ResolvedStep, StepError> {
    let toml_path = wasm.with_file_name("step.toml");
    let text = std::fs::read_to_string(&toml_path).map_err(|e| StepError::Read {
        path: toml_path.display().to_string(),
        message: e.to_string(),
        manifest: true,
    })?;
    let manifest = StepManifest::parse(&text, &toml_path.display().to_string())?;
    let bytes = std::fs::read(wasm).map_err(|e| StepError::Read {
        path: wasm.display().to_string(),
        message: e.to_string(),
        manifest: false,
    })?;
    Ok(ResolvedStep {
        manifest,
        wasm: wasm.to_path_buf(),
        digest: format!("sha256:{}", hex::encode(sha2::Sha256::digest(&bytes))),
        script: None,
    })
}

/// Loads a script step folder (`run.sh` beside a manifest); `None` when the
/// folder holds no `run.sh`.
pub fn load_script(dir: &Path) -> Option<Result<ResolvedStep, StepError>> {
    let (manifest, kind) = match crate::script_step::load_folder(dir)? {
        Ok(m) => m,
        Err(e) => return Some(Err(e)),
    };
    Some(
        crate::script_step::folder_digest(dir).map(|digest| ResolvedStep {
            manifest,
            wasm: dir.join("run.sh"),
            digest,
            script: Some(kind),
        }),
    )
}

/// The step of a folder: a WebAssembly step (`step.wasm`) or a script step
/// (`run.sh`); `None` when it is neither.
fn load_dir(dir: &Path) -> Option<Result<ResolvedStep, StepError>> {
    let wasm = dir.join("step.wasm");
    if wasm.is_file() {
        return Some(load_local(&wasm));
    }
    load_script(dir)
}

/// Splits a reference into its owner (if any), name and wanted version
/// (`acme/deploy@1.2` → `acme`, `deploy`, `1.2`; a registry's name before
/// `:` is left out; `oci://host/ns/deploy:1.2` → no owner, `deploy`, `1.2`).
pub fn split_reference(reference: &str) -> (Option<&str>, &str, &str) {
    if let Some(rest) = reference.strip_prefix("oci://") {
        let (repo, want) = match rest.split_once('@') {
            Some((repo, digest)) => (repo, digest),
            None => {
                let slash = rest.rfind('/').unwrap_or(0);
                match rest[slash..].rfind(':') {
                    Some(i) => (&rest[..slash + i], &rest[slash + i + 1..]),
                    None => (rest, ""),
                }
            }
        };
        return (None, repo.rsplit('/').next().unwrap_or(repo), want);
    }
    let (path, want) = reference.split_once('@').unwrap_or((reference, ""));
    let path = match path.split_once(':') {
        Some((_registry, rest)) => rest,
        None => path,
    };
    match path.split_once('/') {
        Some((owner, name)) => (Some(owner), name, want),
        None => (None, path, want),
    }
}

/// Steps found in folders laid out as `<dir>/<name>/step.{wasm,toml}`
/// (the bundled steps) plus local paths.
#[derive(Debug, Clone, Default)]
pub struct DirCatalog {
    pub dirs: Vec<PathBuf>,
}

impl StepCatalog for DirCatalog {
    fn resolve(&self, reference: &str, base: &Path) -> Result<ResolvedStep, StepError> {
        if let Some(local) = resolve_path(reference, base) {
            return local;
        }
        let (owner, name, want) = split_reference(reference);
        // `owner/name` is looked for under `<dir>/owner/name`, then `<dir>/name`.
        let candidates = self.dirs.iter().flat_map(|dir| {
            owner
                .map(|o| dir.join(o).join(name))
                .into_iter()
                .chain([dir.join(name)])
        });
        for dir in candidates {
            if let Some(step) = load_dir(&dir) {
                let step = step?;
                let have = &step.manifest.version;
                let matches = want.is_empty()
                    || want == "*"
                    || have == want
                    || (want.split('.').count() < 3 && have.starts_with(&format!("{want}.")));
                if !matches {
                    return Err(StepError::Version {
                        name: name.to_string(),
                        have: have.clone(),
                        reference: reference.to_string(),
                        want: want.to_string(),
                    });
                }
                return Ok(step);
            }
        }
        Err(StepError::Unknown {
            reference: reference.to_string(),
            no_folders: self.dirs.is_empty(),
        })
    }

    fn names(&self) -> Vec<String> {
        let mut names = Vec::new();
        for dir in &self.dirs {
            if let Ok(entries) = std::fs::read_dir(dir) {
                names.extend(
                    entries
                        .flatten()
                        .filter(|e| {
                            let p = e.path();
                            p.join("step.wasm").is_file() || p.join("run.sh").is_file()
                        })
                        .map(|e| e.file_name().to_string_lossy().into_owned()),
                );
            }
        }
        names.sort();
        names
    }
}

/// The answers of a catalog for every `step:` of a pipeline.
pub type StepAnswers = BTreeMap<String, Result<ResolvedStep, StepError>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests() {
        let m = StepManifest::parse(
            "name = \"s3sync\"\nversion = \"1.0.0\"\n[settings.bucket]\nrequired = true\n[settings.key_id]\nrequired = true\nsecret = true\n[capabilities]\nworkspace = \"read\"\nhttp = [\"{endpoint}\"]\n",
            "step.toml",
        )
        .unwrap();
        assert_eq!(m.capabilities.workspace, WorkspaceAccess::Read);
        assert!(m.settings["key_id"].secret);
        assert_eq!(
            setting_env_name("jq-pluck", "key-id"),
            "SENTINEL_JQ_PLUCK_KEY_ID"
        );
        let e = StepManifest::parse(
            "name = \"x\"\nversion = \"1.0.0\"\nbogus = 1\n",
            "step.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("step.toml:3:1: unknown field `bogus`"), "{e}");
        assert_eq!(split_reference("acme/x@1.2"), (Some("acme"), "x", "1.2"));
        assert_eq!(split_reference("team:acme/x@^1"), (Some("acme"), "x", "^1"));
        assert_eq!(split_reference("team:x"), (None, "x", ""));
        assert_eq!(
            split_reference("oci://127.0.0.1:5000/steps/x:1.0.0"),
            (None, "x", "1.0.0")
        );
        assert_eq!(
            split_reference("oci://r.example/x@sha256:ab"),
            (None, "x", "sha256:ab")
        );
        for reserved in ["run", "stage", "workspace", "output", "commit", "run-id"] {
            let e = StepManifest::parse(
                &format!("name = \"{reserved}\"\nversion = \"1.0.0\"\n"),
                "s",
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains("collide"), "{reserved}: {e}");
        }
    }
}
