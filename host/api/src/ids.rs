//! Validated identifiers: a [`RunId`] and a [`StageName`] can only hold valid
//! values, so every later layer (file names, container names, S3 keys) can
//! rely on them without re-checking.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("a run id is 26 characters of Crockford base32 (a ULID), got `{0}`")]
    RunId(String),
    #[error(
        "stage name `{0}` is not valid: use 1 to 63 letters, digits, `_` or `-`, starting with a letter or digit"
    )]
    StageName(String),
    #[error("stage name `{0}` is reserved (it would collide with `{0}.json` of the run)")]
    ReservedStageName(String),
}

/// A run's id: a ULID, so ids sort by creation time.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RunId(String);

impl RunId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for RunId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const ALPHABET: &str = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
        let upper = s.to_ascii_uppercase();
        let ok = upper.len() == 26
            && upper.chars().all(|c| ALPHABET.contains(c))
            && upper.as_bytes()[0] <= b'7';
        if ok {
            Ok(Self(upper))
        } else {
            Err(IdError::RunId(s.to_string()))
        }
    }
}

/// A stage's name as written in the pipeline file.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StageName(String);

/// Names that would collide with a document the run itself writes.
const RESERVED_STAGE_NAMES: &[&str] = &["run", "index"];

impl StageName {
    /// The longest name accepted (it becomes part of container names and keys).
    pub const MAX_LEN: usize = 63;

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for StageName {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = s.as_bytes();
        let ok = !bytes.is_empty()
            && bytes.len() <= Self::MAX_LEN
            && bytes[0].is_ascii_alphanumeric()
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-');
        if !ok {
            return Err(IdError::StageName(s.to_string()));
        }
        if RESERVED_STAGE_NAMES.contains(&s) {
            return Err(IdError::ReservedStageName(s.to_string()));
        }
        Ok(Self(s.to_string()))
    }
}

macro_rules! string_newtype_impls {
    ($t:ty) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", self.0)
            }
        }
        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
string_newtype_impls!(RunId);
string_newtype_impls!(StageName);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_names() {
        for good in ["build", "a", "aws_access_key_id", "deploy-prod", "9lives"] {
            assert!(good.parse::<StageName>().is_ok(), "{good}");
        }
        for bad in [
            "",
            "-x",
            "_x",
            "a b",
            "a/b",
            "..",
            "a.b",
            &"x".repeat(64),
            "ü",
        ] {
            assert!(bad.parse::<StageName>().is_err(), "{bad}");
        }
        assert_eq!(
            "run".parse::<StageName>(),
            Err(IdError::ReservedStageName("run".into()))
        );
    }

    #[test]
    fn run_ids() {
        let id: RunId = "01jdx3k6q2t8w9v5m4n3p2r1s0".parse().unwrap();
        assert_eq!(id.as_str(), "01JDX3K6Q2T8W9V5M4N3P2R1S0");
        assert!("01JDX3K6Q2T8W9V5M4N3P2R1SU".parse::<RunId>().is_err());
        assert!("short".parse::<RunId>().is_err());
        assert!("../../etc/passwd".parse::<RunId>().is_err());
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<RunId>(&json).unwrap(), id);
    }
}
