//! A deploy payload (`.tar.gz`) checked completely before anything runs:
//! exactly one metadata `.json` (`name`, `version`, `imageVersion`,
//! `numInstance`, types checked, `name` and `version` those of the
//! marker), exactly one `.service` or `.service.tmpl`, at most one `.etcd2`,
//! an optional `README.md`, nothing else — at the top or in the one folder
//! named after the archive, as the monitor's payloads unpacked. Only plain
//! files and that folder: no link, no device, no path that leaves. The
//! uncompressed size is capped: an entry declaring more is refused from its
//! header, and no more than the cap is ever read (a decompression bomb is
//! refused without being inflated, let alone written).

use std::io::Read;

use flate2::read::MultiGzDecoder;
use serde_json::Value;

use crate::marker::Marker;

/// The largest uncompressed payload by default.
pub const MAX_BYTES: u64 = 16 << 20;

/// What the metadata file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    pub name: String,
    pub version: String,
    pub image_version: String,
    pub instances: u64,
}

/// A checked payload: its metadata and its files (name, bytes), the
/// metadata file first.
#[derive(Debug, Clone)]
pub struct Payload {
    pub metadata: Metadata,
    pub files: Vec<(String, Vec<u8>)>,
}

/// Why a payload is refused; the message names the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("the payload is not a .tar.gz: {0}")]
    NotTar(String),
    #[error("the payload is larger than {cap} bytes uncompressed")]
    TooLarge { cap: u64 },
    #[error("`{name}` {why}")]
    Entry { name: String, why: String },
    #[error("the payload has two {kind} files: `{first}` and `{second}`")]
    Two {
        kind: &'static str,
        first: String,
        second: String,
    },
    #[error("the payload has no {0}")]
    Missing(&'static str),
    #[error("the metadata file `{file}`: {why}")]
    Metadata { file: String, why: String },
}

/// Counts what passes, stopping past `cap` bytes.
struct Capped<R> {
    inner: R,
    left: u64,
    over: bool,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            // One byte more means the cap is passed.
            let mut probe = [0u8; 1];
            let n = self.inner.read(&mut probe)?;
            if n > 0 {
                self.over = true;
                return Err(std::io::Error::other("over the cap"));
            }
            return Ok(0);
        }
        let want = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut buf[..want])?;
        self.left -= n as u64;
        Ok(n)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Metadata,
    Service,
    Keys,
    Readme,
}

impl Kind {
    fn of(name: &str) -> Option<Self> {
        if name == "README.md" {
            Some(Self::Readme)
        } else if name.ends_with(".json") {
            Some(Self::Metadata)
        } else if name.ends_with(".service") || name.ends_with(".service.tmpl") {
            Some(Self::Service)
        } else if name.ends_with(".etcd2") {
            Some(Self::Keys)
        } else {
            None
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Metadata => "metadata (.json)",
            Self::Service => "unit (.service or .service.tmpl)",
            Self::Keys => "keys (.etcd2)",
            Self::Readme => "README.md",
        }
    }
}

fn entry(name: &str, why: impl Into<String>) -> PayloadError {
    PayloadError::Entry {
        name: name.to_string(),
        why: why.into(),
    }
}

/// Checks a payload for `marker`; `folder` is the archive's name less
/// `.tar.gz` (the one folder its files may be in); at most `cap` bytes are
/// inflated.
pub fn check(
    r: impl Read,
    marker: &Marker,
    folder: &str,
    cap: u64,
) -> Result<Payload, PayloadError> {
    let mut capped = Capped {
        inner: MultiGzDecoder::new(r),
        left: cap,
        over: false,
    };
    let files = read_entries(&mut capped, folder, cap);
    if capped.over {
        return Err(PayloadError::TooLarge { cap });
    }
    let files = files?;
    let of = |k: Kind| files.iter().filter(move |(kind, _, _)| *kind == k);
    for k in [Kind::Metadata, Kind::Service, Kind::Keys, Kind::Readme] {
        let mut same = of(k);
        if let (Some(a), Some(b)) = (same.next(), same.next()) {
            return Err(PayloadError::Two {
                kind: k.name(),
                first: a.1.clone(),
                second: b.1.clone(),
            });
        }
    }
    let (_, meta_name, meta_bytes) = of(Kind::Metadata)
        .next()
        .ok_or(PayloadError::Missing(Kind::Metadata.name()))?;
    if of(Kind::Service).next().is_none() {
        return Err(PayloadError::Missing(Kind::Service.name()));
    }
    let metadata = metadata(meta_name, meta_bytes, marker)?;
    let mut out: Vec<(String, Vec<u8>)> = vec![(meta_name.clone(), meta_bytes.clone())];
    out.extend(
        files
            .iter()
            .filter(|(k, _, _)| *k != Kind::Metadata)
            .map(|(_, n, b)| (n.clone(), b.clone())),
    );
    Ok(Payload {
        metadata,
        files: out,
    })
}

fn read_entries(
    r: &mut impl Read,
    folder: &str,
    cap: u64,
) -> Result<Vec<(Kind, String, Vec<u8>)>, PayloadError> {
    let mut archive = tar::Archive::new(r);
    let mut files = Vec::new();
    let mut total = 0u64;
    let entries = archive
        .entries()
        .map_err(|e| PayloadError::NotTar(e.to_string()))?;
    for e in entries {
        let mut e = e.map_err(|e| PayloadError::NotTar(e.to_string()))?;
        let raw = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        let path = raw
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_string();
        if path.is_empty() {
            continue;
        }
        let parts: Vec<&str> = path.split('/').collect();
        if raw.starts_with('/')
            || parts
                .iter()
                .any(|p| *p == ".." || p.is_empty() || *p == ".")
        {
            return Err(entry(
                &raw,
                "leaves the payload: only plain names are allowed",
            ));
        }
        let kind = e.header().entry_type();
        if kind.is_dir() {
            if parts == [folder] {
                continue;
            }
            return Err(entry(
                &raw,
                format!("is a folder: only `{folder}/` may hold the files"),
            ));
        }
        if !kind.is_file() {
            let what = if kind.is_symlink() || kind.is_hard_link() {
                "a link"
            } else {
                "not a plain file (a device, a pipe…)"
            };
            return Err(entry(
                &raw,
                format!("is {what}: only plain files are allowed"),
            ));
        }
        let name = match parts.as_slice() {
            [name] => *name,
            [dir, name] if *dir == folder => *name,
            _ => {
                return Err(entry(
                    &raw,
                    format!("is outside the payload's folder `{folder}/`"),
                ));
            }
        };
        let Some(k) = Kind::of(name) else {
            return Err(entry(
                &raw,
                "is not allowed: a payload holds one metadata .json, one .service or .service.tmpl, at most one .etcd2 and a README.md",
            ));
        };
        let size = e
            .header()
            .size()
            .map_err(|err| PayloadError::NotTar(err.to_string()))?;
        total = total.saturating_add(size);
        if total > cap {
            return Err(PayloadError::TooLarge { cap });
        }
        let mut bytes = Vec::with_capacity(size as usize);
        e.read_to_end(&mut bytes)
            .map_err(|err| PayloadError::NotTar(err.to_string()))?;
        files.push((k, name.to_string(), bytes));
    }
    Ok(files)
}

fn metadata(file: &str, bytes: &[u8], marker: &Marker) -> Result<Metadata, PayloadError> {
    let bad = |why: String| PayloadError::Metadata {
        file: file.to_string(),
        why,
    };
    let v: Value = serde_json::from_slice(bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| bad("not a JSON object".into()))?;
    let text = |key: &str| -> Result<String, PayloadError> {
        match obj.get(key) {
            None => Err(bad(format!("`{key}` is missing"))),
            Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            Some(other) => Err(bad(format!(
                "`{key}` must be a non-empty string, found {other}"
            ))),
        }
    };
    let name = text("name")?;
    let version = text("version")?;
    let image_version = text("imageVersion")?;
    let instances = match obj.get("numInstance") {
        None => return Err(bad("`numInstance` is missing".into())),
        Some(n) => n.as_u64().filter(|n| *n >= 1).ok_or_else(|| {
            bad(format!(
                "`numInstance` must be a whole number of at least 1, found {n}"
            ))
        })?,
    };
    if name != marker.app {
        return Err(bad(format!(
            "`name` is `{name}` but the marker is for `{}`",
            marker.app
        )));
    }
    if version != marker.version.as_str() {
        return Err(bad(format!(
            "`version` is `{version}` but the marker is for `{}`",
            marker.version
        )));
    }
    Ok(Metadata {
        name,
        version,
        image_version,
        instances,
    })
}

#[cfg(test)]
mod tests;
