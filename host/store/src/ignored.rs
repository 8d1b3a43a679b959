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

/// A key that sorts by `at`, then by when it was made: a ULID's random part
/// put two events of one millisecond in either order. Older ULID keys
/// (`01…`) sort before these (`1…`, nanoseconds since 1970).
fn order_key(at: DateTime<Utc>) -> String {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = at.timestamp_nanos_opt().unwrap_or_default().max(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{nanos:019}-{seq:020}")
}

impl SledStore {
    /// Records `ignored` (on disk before it returns), dropping the oldest
    /// past [`KEEP`].
    pub async fn record_ignored(&self, ignored: &Ignored) -> Result<(), StorageError> {
        let id = order_key(ignored.at);
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

#[cfg(test)]
mod tests {
    #[test]
    fn keys_sort_by_time_then_by_making_and_after_older_ulid_keys() {
        let at = chrono::Utc::now();
        let (a, b) = (super::order_key(at), super::order_key(at));
        let later = super::order_key(at + chrono::Duration::microseconds(1));
        assert!(a < b && b < later, "{a} {b} {later}");
        assert!(ulid::Ulid::new().to_string() < a);
    }
}
