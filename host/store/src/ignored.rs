//! Events that started nothing (a push no pipeline's filters take), in
//! sled (`ignored`: a time-ordered id → [`Ignored`]), newest first for the
//! API; only the newest [`KEEP`] are kept.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use sentinel_engine::ports::StorageError;

use crate::{SledStore, decode, encode, err};

/// How many ignored events are kept.
pub const KEEP: usize = 1_000;

/// An event that started nothing, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ignored {
    pub at: DateTime<Utc>,
    /// `push`, …
    pub event: String,
    /// The webhook's delivery id, when it came by one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<String>,
    pub repo: String,
    /// The pipeline it did not start (none: the repository's one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<String>,
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub reason: String,
}

impl SledStore {
    /// Records `ignored` (on disk before it returns), dropping the oldest
    /// past [`KEEP`].
    pub async fn record_ignored(&self, ignored: &Ignored) -> Result<(), StorageError> {
        let id = ulid::Ulid::new().to_string();
        self.ignored
            .insert(id.as_bytes(), encode(ignored)?)
            .map_err(|e| err("ignored", e))?;
        while self.ignored.len() > KEEP {
            if self
                .ignored
                .pop_min()
                .map_err(|e| err("ignored", e))?
                .is_none()
            {
                break;
            }
        }
        self.flush().await
    }

    /// The newest `limit` ignored events, newest first.
    pub fn ignored(&self, limit: usize) -> Result<Vec<Ignored>, StorageError> {
        self.ignored
            .iter()
            .rev()
            .take(limit)
            .map(|kv| {
                let (_, v) = kv.map_err(|e| err("ignored", e))?;
                decode(&v)
            })
            .collect()
    }
}
