//! `cache:` of a container stage or job: the key template (`${hash(…)}`
//! over file contents, `${run.id}`, `${git.*}`, `${env.X}`), the restore
//! keys and the paths kept, parsed and checked.

use std::fmt;

use serde::{Serialize, Serializer};

use crate::template::{self, Part, Ref, TemplateError};

/// What a stage keeps between runs: restored at start from the entry that
/// best matches `key` (exact, then by prefix: the key, then each restore key,
/// newest first), saved under `key` when the stage succeeds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CachePlan {
    pub key: CacheKey,
    pub restore_keys: Vec<CacheKey>,
    pub paths: Vec<CachePath>,
}

/// A folder or file a cache keeps.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum CachePath {
    /// A path relative to the workspace.
    Workspace(String),
    /// The stage's own cache folder, outside the workspace
    /// (`$SENTINEL_CACHE_DIR`, wercker's `$WERCKER_CACHE_DIR`).
    StageCache,
}

/// How `paths:` names the stage's own cache folder.
pub const STAGE_CACHE: &str = "$SENTINEL_CACHE_DIR";

impl fmt::Display for CachePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Workspace(p) => f.write_str(p),
            Self::StageCache => f.write_str(STAGE_CACHE),
        }
    }
}

impl Serialize for CachePath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One piece of a cache key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    Lit(String),
    Ref(Ref),
    /// `${hash(a, b/*.lock)}`: the SHA-256 of the matching workspace files.
    Hash(Vec<String>),
}

/// A cache key template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheKey(pub Vec<KeyPart>);

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.0 {
            match p {
                KeyPart::Lit(s) => f.write_str(&s.replace("${", "$${"))?,
                KeyPart::Ref(r) => write!(f, "{r}")?,
                KeyPart::Hash(files) => write!(f, "${{hash({})}}", files.join(", "))?,
            }
        }
        Ok(())
    }
}

impl Serialize for CacheKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

const HINT: &str = "a cache key may use ${hash(FILE, GLOB…)}, ${run.id}, ${git.branch}, ${git.commit}, ${git.repo} and ${env.X}";

/// Parses a key template; `offset` of an error is in bytes into the value.
pub fn parse_key(value: &str) -> Result<CacheKey, TemplateError> {
    let mut parts = Vec::new();
    let mut rest = value;
    let mut offset = 0;
    loop {
        let Some(i) = find_hash(rest) else {
            literal_parts(rest, offset, &mut parts)?;
            break;
        };
        literal_parts(&rest[..i], offset, &mut parts)?;
        let body = &rest[i + "${hash(".len()..];
        let Some(end) = body.find(")}") else {
            return Err(error(offset + i, "unclosed `${hash(`"));
        };
        let files: Vec<String> = body[..end]
            .split(',')
            .map(|f| f.trim().to_string())
            .collect();
        if files.iter().any(String::is_empty) {
            return Err(error(
                offset + i,
                "`${hash(…)}` needs file names or globs, separated by commas",
            ));
        }
        if let Some(bad) = files.iter().find(|f| path_problem(f).is_some()) {
            let why = path_problem(bad).unwrap_or_default();
            return Err(error(
                offset + i,
                format!("`{bad}` in `${{hash(…)}}` {why}"),
            ));
        }
        parts.push(KeyPart::Hash(files));
        let used = i + "${hash(".len() + end + 2;
        rest = &rest[used..];
        offset += used;
    }
    if parts.is_empty() {
        return Err(error(0, "a cache key cannot be empty"));
    }
    Ok(CacheKey(parts))
}

/// Where `${hash(` starts, skipping the escaped `$${`.
fn find_hash(s: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = s[from..].find("${hash(") {
        let at = from + i;
        if at > 0 && s.as_bytes()[at - 1] == b'$' {
            from = at + 2;
            continue;
        }
        return Some(at);
    }
    None
}

fn literal_parts(s: &str, offset: usize, parts: &mut Vec<KeyPart>) -> Result<(), TemplateError> {
    if s.is_empty() {
        return Ok(());
    }
    let t = template::parse(s).map_err(|mut e| {
        e.offset += offset;
        e.hint = Some(HINT.into());
        e
    })?;
    for p in t.0 {
        match p {
            Part::Lit(l) if l.is_empty() => {}
            Part::Lit(l) => parts.push(KeyPart::Lit(l)),
            Part::Ref(r @ (Ref::Secret(_) | Ref::StageOutput(_) | Ref::StageNamedOutput(..))) => {
                return Err(error(
                    offset,
                    format!(
                        "a cache key cannot use `{r}`: keys are visible to every run of the project"
                    ),
                ));
            }
            Part::Ref(r) => parts.push(KeyPart::Ref(r)),
        }
    }
    Ok(())
}

fn error(offset: usize, message: impl Into<String>) -> TemplateError {
    TemplateError {
        offset,
        message: message.into(),
        hint: Some(HINT.into()),
    }
}

/// Why a workspace path (or glob) of a cache is not acceptable.
pub fn path_problem(p: &str) -> Option<&'static str> {
    if p.is_empty() {
        Some("is empty")
    } else if p.starts_with('/') {
        Some("must be relative to the workspace")
    } else if p.split('/').any(|seg| seg == "..") {
        Some("must stay inside the workspace (no `..`)")
    } else if p.contains('\0') {
        Some("holds a NUL byte")
    } else {
        None
    }
}

/// Reads a `paths:` entry.
pub fn parse_path(p: &str) -> Result<CachePath, &'static str> {
    if p == STAGE_CACHE || p == "${SENTINEL_CACHE_DIR}" {
        return Ok(CachePath::StageCache);
    }
    let trimmed = p.trim_start_matches("./").trim_end_matches('/');
    match path_problem(trimmed) {
        Some(why) => Err(why),
        None if trimmed == "." => {
            Err("must name a folder or file inside the workspace, not all of it")
        }
        None => Ok(CachePath::Workspace(trimmed.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_and_print_back() {
        let k = parse_key("cargo-${git.branch}-${hash(Cargo.lock, */Cargo.toml)}-$${x}").unwrap();
        assert_eq!(
            k.0,
            vec![
                KeyPart::Lit("cargo-".into()),
                KeyPart::Ref(Ref::GitBranch),
                KeyPart::Lit("-".into()),
                KeyPart::Hash(vec!["Cargo.lock".into(), "*/Cargo.toml".into()]),
                KeyPart::Lit("-${x}".into()),
            ]
        );
        assert_eq!(
            k.to_string(),
            "cargo-${git.branch}-${hash(Cargo.lock, */Cargo.toml)}-$${x}"
        );
        assert_eq!(parse_key(&k.to_string()).unwrap(), k);
    }

    #[test]
    fn bad_keys_say_where() {
        assert_eq!(parse_key("a-${hash(x").unwrap_err().offset, 2);
        assert!(
            parse_key("${hash(/etc/passwd)}")
                .unwrap_err()
                .message
                .contains("relative")
        );
        assert!(parse_key("${hash(a,)}").is_err());
        let e = parse_key("k-${hash(a)}-${secrets.T}").unwrap_err();
        assert!(
            e.message.contains("cannot use `${secrets.T}`"),
            "{}",
            e.message
        );
        assert_eq!(parse_key("k-${oops}").unwrap_err().offset, 2);
        assert!(parse_key("").is_err());
    }

    #[test]
    fn paths_stay_in_the_workspace() {
        assert_eq!(
            parse_path("./target/"),
            Ok(CachePath::Workspace("target".into()))
        );
        assert_eq!(parse_path("$SENTINEL_CACHE_DIR"), Ok(CachePath::StageCache));
        assert!(parse_path("/root/.cargo").is_err());
        assert!(parse_path("a/../../b").is_err());
        assert!(parse_path(".").is_err());
    }
}
