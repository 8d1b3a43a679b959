//! Step references as a pipeline writes them: `name`, `owner/name`,
//! `name@1.2.3` (exact), `name@1.2` / `name@1` (the newest matching),
//! semver requirements (`name@^1.2`, `name@~1.2`, `name@>=1, <3`), a content
//! digest (`name@sha256:…`), a named registry (`team:owner/name@^1`) and a
//! full OCI reference (`oci://host/ns/name:1.2.3`, `…@sha256:…`).

use semver::{Version, VersionReq};

/// Which version a reference wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Want {
    /// Any: the newest.
    Newest,
    /// Exactly this version.
    Exact(Version),
    /// The newest version matching.
    Req(VersionReq),
    /// The package with this content digest (`sha256:<hex>`).
    Digest(String),
}

impl Want {
    /// True when `v` is wanted (a digest is checked against content, not
    /// versions: every version is a candidate).
    pub fn matches(&self, v: &Version) -> bool {
        match self {
            Self::Newest | Self::Digest(_) => true,
            Self::Exact(e) => e == v,
            Self::Req(r) => r.matches(v),
        }
    }

    /// Parses the part after `@`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() || s == "*" || s == "latest" {
            return Ok(Self::Newest);
        }
        if let Some(hex) = s.strip_prefix("sha256:") {
            if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Ok(Self::Digest(format!("sha256:{}", hex.to_ascii_lowercase())));
            }
            return Err(format!("`{s}` is not a sha256 digest (64 hex digits)"));
        }
        if let Ok(v) = Version::parse(s) {
            return Ok(Self::Exact(v));
        }
        // `1` and `1.2`: the newest of that major / minor, as step
        // references always meant (`~` in semver's words).
        let parts: Vec<&str> = s.split('.').collect();
        if parts.len() < 3 && parts.iter().all(|p| p.parse::<u64>().is_ok()) {
            return VersionReq::parse(&format!("~{s}"))
                .map(Self::Req)
                .map_err(|e| format!("`{s}`: {e}"));
        }
        VersionReq::parse(s).map(Self::Req).map_err(|e| {
            format!("`{s}` is not a version, a requirement (`^1.2`, `~1.2`) or a digest: {e}")
        })
    }
}

/// Where a reference says to look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The local step folders, then the default registry.
    Anywhere,
    /// The registry of this name.
    Named(String),
    /// An OCI repository (`host[:port]/path/name`) given in full.
    Oci(String),
}

/// A parsed step reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRef {
    pub origin: Origin,
    pub owner: Option<String>,
    pub name: String,
    pub want: Want,
}

impl StepRef {
    /// `owner/name` or `name`.
    pub fn path(&self) -> String {
        match &self.owner {
            Some(o) => format!("{o}/{}", self.name),
            None => self.name.clone(),
        }
    }

    /// Parses a reference; `None` for a path (`./x.wasm`, `../folder`),
    /// which the local catalog reads.
    pub fn parse(reference: &str) -> Option<Result<Self, String>> {
        if reference.ends_with(".wasm")
            || reference.starts_with("./")
            || reference.starts_with("../")
            || reference.starts_with('/')
        {
            return None;
        }
        Some(parse(reference))
    }
}

fn segment_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
        })
        && !s.starts_with('.')
}

fn parse(reference: &str) -> Result<StepRef, String> {
    if let Some(rest) = reference.strip_prefix("oci://") {
        return parse_oci(rest);
    }
    let (origin, rest) = match reference.split_once(':') {
        // `sha256:` only ever follows `@`.
        Some((reg, rest)) if !reg.contains('@') => {
            if !segment_ok(reg) {
                return Err(format!("`{reg}` is not a registry name"));
            }
            (Origin::Named(reg.to_string()), rest)
        }
        _ => (Origin::Anywhere, reference),
    };
    let (path, want) = rest.split_once('@').unwrap_or((rest, ""));
    let (owner, name) = match path.split_once('/') {
        Some((o, n)) => (Some(o), n),
        None => (None, path),
    };
    for part in owner.iter().chain([&name]) {
        if !segment_ok(part) || part.contains('/') {
            return Err(format!(
                "`{path}` is not `name` or `owner/name` (lower-case letters, digits, `-`, `_`, `.`)"
            ));
        }
    }
    Ok(StepRef {
        origin,
        owner: owner.map(str::to_string),
        name: name.to_string(),
        want: Want::parse(want)?,
    })
}

/// `host[:port]/path/name[:tag|@sha256:…]`.
fn parse_oci(rest: &str) -> Result<StepRef, String> {
    let (repo, want) = if let Some((repo, digest)) = rest.split_once('@') {
        (repo, Want::parse(digest)?)
    } else {
        // A tag follows the last `:` after the last `/` (a port comes before).
        let slash = rest.rfind('/').unwrap_or(0);
        match rest[slash..].rfind(':') {
            Some(i) => (&rest[..slash + i], Want::parse(&rest[slash + i + 1..])?),
            None => (rest, Want::Newest),
        }
    };
    let Some((host_path, name)) = repo.rsplit_once('/') else {
        return Err(format!(
            "`oci://{rest}` names no repository: write oci://host[:port]/namespace/name:version"
        ));
    };
    if !segment_ok(name) || host_path.is_empty() {
        return Err(format!(
            "`oci://{rest}` is not oci://host[:port]/namespace/name"
        ));
    }
    Ok(StepRef {
        origin: Origin::Oci(repo.to_string()),
        owner: None,
        name: name.to_string(),
        want,
    })
}

/// The newest of `versions` that `want` accepts.
pub fn newest<'a>(
    want: &Want,
    versions: impl IntoIterator<Item = &'a Version>,
) -> Option<&'a Version> {
    versions.into_iter().filter(|v| want.matches(v)).max()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn references() {
        let r = StepRef::parse("acme/deploy-notify@1.2").unwrap().unwrap();
        assert_eq!(r.origin, Origin::Anywhere);
        assert_eq!(r.owner.as_deref(), Some("acme"));
        assert_eq!(r.name, "deploy-notify");
        assert!(r.want.matches(&v("1.2.9")) && !r.want.matches(&v("1.3.0")));
        let r = StepRef::parse("x@1").unwrap().unwrap();
        assert!(r.want.matches(&v("1.9.0")) && !r.want.matches(&v("2.0.0")));
        let r = StepRef::parse("x@^1.2").unwrap().unwrap();
        assert!(r.want.matches(&v("1.9.0")) && !r.want.matches(&v("1.1.0")));
        let r = StepRef::parse("x@~1.2").unwrap().unwrap();
        assert!(r.want.matches(&v("1.2.5")) && !r.want.matches(&v("1.3.0")));
        assert_eq!(
            StepRef::parse("x@1.2.3").unwrap().unwrap().want,
            Want::Exact(v("1.2.3"))
        );
        let d = "a".repeat(64);
        assert_eq!(
            StepRef::parse(&format!("x@sha256:{d}"))
                .unwrap()
                .unwrap()
                .want,
            Want::Digest(format!("sha256:{d}"))
        );
        let r = StepRef::parse("team:acme/x@^1").unwrap().unwrap();
        assert_eq!(r.origin, Origin::Named("team".into()));
        assert_eq!(r.path(), "acme/x");
        let r = StepRef::parse("oci://127.0.0.1:5000/steps/jq-pluck:1.0.0")
            .unwrap()
            .unwrap();
        assert_eq!(
            r.origin,
            Origin::Oci("127.0.0.1:5000/steps/jq-pluck".into())
        );
        assert_eq!(r.want, Want::Exact(v("1.0.0")));
        let r = StepRef::parse("oci://127.0.0.1:5000/steps/jq-pluck")
            .unwrap()
            .unwrap();
        assert_eq!(r.want, Want::Newest);
        let r = StepRef::parse(&format!("oci://r.example/s/x@sha256:{d}"))
            .unwrap()
            .unwrap();
        assert_eq!(r.origin, Origin::Oci("r.example/s/x".into()));
        assert!(StepRef::parse("./x/step.wasm").is_none());
        assert!(StepRef::parse("../x").is_none());
        for bad in [
            "x@sha256:12",
            "x@nope",
            "Big",
            "a/b/c",
            "oci://host",
            "x@1.2.3.4",
        ] {
            assert!(StepRef::parse(bad).unwrap().is_err(), "{bad}");
        }
        let vs = [v("1.0.0"), v("1.1.0"), v("2.0.0")];
        assert_eq!(newest(&Want::parse("^1").unwrap(), &vs), Some(&vs[1]));
        assert_eq!(newest(&Want::Newest, &vs), Some(&vs[2]));
        assert_eq!(newest(&Want::parse("3").unwrap(), &vs), None);
    }
}
