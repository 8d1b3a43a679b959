//! Script steps: a folder with a manifest and a `run.sh`, run by a job's
//! shell in the job's container (no WebAssembly). Two manifests are read:
//! Sentinel's `step.toml` (settings exported as `SENTINEL_<STEP>_<KEY>`) and
//! wercker's — `step.yml` (properties as a list, current wercker) or
//! `wercker-step.yml` (properties as a map, older steps) — whose settings are
//! exported as `WERCKER_<STEP>_<KEY>`, so a wercker step runs unchanged.

use std::path::Path;

use indexmap::IndexMap;
use sha2::Digest;

use crate::step::{ManifestError, SettingSpec, StepError, StepManifest};
use crate::yaml::{self, Caps, Node, Value};

/// Which manifest a script step folder has: it decides the settings' prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScriptManifest {
    /// `step.toml`: settings as `SENTINEL_<STEP>_<KEY>`.
    Sentinel,
    /// `step.yml` or `wercker-step.yml`: settings as `WERCKER_<STEP>_<KEY>`;
    /// settings the manifest does not list are exported too, as wercker did.
    Wercker,
}

impl ScriptManifest {
    /// The prefix of its settings' variables.
    pub fn prefix(self) -> &'static str {
        match self {
            Self::Sentinel => "SENTINEL",
            Self::Wercker => "WERCKER",
        }
    }
}

/// The variable a script step's setting is exported as: wercker's rule —
/// `<PREFIX>_<step>_<key>` with `-` made `_`, upper-cased.
pub fn script_setting_env(prefix: &str, step: &str, key: &str) -> String {
    format!("{prefix}_{step}_{key}")
        .replace('-', "_")
        .to_ascii_uppercase()
}

/// A file name's text within a folder, for messages.
fn shown(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

/// Reads a script step folder: its manifest and `run.sh`; `None` when the
/// folder holds no `run.sh` (it is not a script step).
pub fn load_folder(dir: &Path) -> Option<Result<(StepManifest, ScriptManifest), StepError>> {
    if !dir.join("run.sh").is_file() {
        return None;
    }
    Some(read_manifest(dir))
}

fn read_manifest(dir: &Path) -> Result<(StepManifest, ScriptManifest), StepError> {
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name)).map_err(|e| StepError::Read {
            path: shown(dir, name),
            message: e.to_string(),
            manifest: true,
        })
    };
    if dir.join("step.toml").is_file() {
        let file = shown(dir, "step.toml");
        let m = StepManifest::parse(&read("step.toml")?, &file)?;
        if m.capabilities != Default::default() {
            return Err(ManifestError {
                file,
                at: " ".into(),
                message: "a script step runs in the job's container: `capabilities` are for WebAssembly steps".into(),
            }
            .into());
        }
        return Ok((m, ScriptManifest::Sentinel));
    }
    for name in ["step.yml", "wercker-step.yml"] {
        if dir.join(name).is_file() {
            let m = parse_wercker(&read(name)?, &shown(dir, name))?;
            return Ok((m, ScriptManifest::Wercker));
        }
    }
    Err(StepError::Read {
        path: shown(dir, "step.yml"),
        message: "no manifest".into(),
        manifest: true,
    })
}

/// A scalar's text (wercker read defaults as the raw YAML text).
fn text(n: &Node) -> Option<String> {
    match &n.value {
        Value::Scalar(s, _) => Some(s.clone()),
        Value::Null => Some(String::new()),
        _ => None,
    }
}

/// Parses a wercker step manifest: `name`, `version`, and `properties` as a
/// list of `{name, type, required, default}` (step.yml) or a map of
/// `name: {type, required, default}` (wercker-step.yml).
pub fn parse_wercker(src: &str, file: &str) -> Result<StepManifest, ManifestError> {
    let fail = |pos: yaml::Pos, message: String| ManifestError {
        file: file.to_string(),
        at: format!("{pos}: "),
        message,
    };
    let root = yaml::parse(src, Caps::default()).map_err(|e| fail(e.pos, e.message))?;
    let Value::Map(_) = &root.value else {
        return Err(fail(root.pos, "a step manifest is a mapping".into()));
    };
    let field = |key: &str| root.get(key).and_then(text);
    let name = field("name").filter(|n| !n.is_empty()).ok_or_else(|| {
        fail(
            root.pos,
            "the manifest has no `name` (the step's name)".into(),
        )
    })?;
    let version = field("version").unwrap_or_else(|| "0.0.0".into());
    let description = field("description")
        .or_else(|| field("summary"))
        .unwrap_or_default();
    let mut settings = IndexMap::new();
    let mut property = |key: &str, body: &Node| -> Result<(), ManifestError> {
        let flag = |k: &str| {
            body.get(k)
                .and_then(text)
                .is_some_and(|v| v == "true" || v == "yes")
        };
        let default = body.get("default").and_then(text);
        settings.insert(
            key.to_string(),
            SettingSpec {
                required: flag("required") && default.is_none(),
                default,
                secret: false,
                description: body.get("description").and_then(text).unwrap_or_default(),
            },
        );
        Ok(())
    };
    match root.get("properties").map(|p| (&p.value, p.pos)) {
        None | Some((Value::Null, _)) => {}
        Some((Value::Seq(items), _)) => {
            for item in items {
                let key = item
                    .get("name")
                    .and_then(text)
                    .ok_or_else(|| fail(item.pos, "each property has a `name`".into()))?;
                property(&key, item)?;
            }
        }
        Some((Value::Map(entries), _)) => {
            for (k, v) in entries {
                property(&text(k).unwrap_or_default(), v)?;
            }
        }
        Some((_, pos)) => {
            return Err(fail(
                pos,
                "`properties` is a list (step.yml) or a mapping (wercker-step.yml)".into(),
            ));
        }
    }
    Ok(StepManifest {
        name,
        version,
        description,
        settings,
        capabilities: Default::default(),
    })
}

/// `sha256:<hex>` over a folder's files (names and contents, in name order):
/// the identity of a script step's bytes.
pub fn folder_digest(dir: &Path) -> Result<String, StepError> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| StepError::Read {
            path: d.display().to_string(),
            message: e.to_string(),
            manifest: false,
        })?;
        for e in entries.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(t) if t.is_file() => files.push(p),
                _ => {}
            }
        }
    }
    files.sort();
    let mut h = sha2::Sha256::new();
    for f in files {
        let rel = f
            .strip_prefix(dir)
            .unwrap_or(&f)
            .to_string_lossy()
            .into_owned();
        let bytes = std::fs::read(&f).map_err(|e| StepError::Read {
            path: f.display().to_string(),
            message: e.to_string(),
            manifest: false,
        })?;
        h.update((rel.len() as u64).to_le_bytes());
        h.update(rel.as_bytes());
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wercker_manifests_in_both_forms() {
        let list = "name: slack-notify\nversion: 1.2.0\nproperties:\n  - name: url\n    type: string\n    required: true\n  - name: channel\n    default: builds\n";
        let m = parse_wercker(list, "step.yml").unwrap();
        assert_eq!(m.name, "slack-notify");
        assert!(m.settings["url"].required);
        assert_eq!(m.settings["channel"].default.as_deref(), Some("builds"));
        let map = "name: gitter-notify\nversion: 0.1.0\nproperties:\n  room:\n    type: string\n    required: false\n  level:\n    default: 3\n";
        let m = parse_wercker(map, "wercker-step.yml").unwrap();
        assert!(!m.settings["room"].required);
        assert_eq!(m.settings["level"].default.as_deref(), Some("3"));
        let e = parse_wercker("version: 1\n", "step.yml").unwrap_err();
        assert!(e.to_string().contains("no `name`"), "{e}");
        let e = parse_wercker("name: x\nproperties: 3\n", "step.yml").unwrap_err();
        assert_eq!(
            e.to_string(),
            "step.yml:2:13: `properties` is a list (step.yml) or a mapping (wercker-step.yml)"
        );
    }

    #[test]
    fn setting_names_follow_wercker() {
        assert_eq!(
            script_setting_env("WERCKER", "add-to-known_hosts", "hostname"),
            "WERCKER_ADD_TO_KNOWN_HOSTS_HOSTNAME"
        );
        assert_eq!(
            script_setting_env("WERCKER", "s3sync", "key-id"),
            "WERCKER_S3SYNC_KEY_ID"
        );
    }
}
