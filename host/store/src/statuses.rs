//! Commit statuses waiting to be sent to GitHub, in sled (`statuses`: a
//! sequence number → [`CommitStatus`]), oldest first: the sender takes the
//! oldest due one, so the statuses of one commit arrive in order; one that
//! cannot be sent waits and is tried again, across restarts.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use sentinel_engine::ports::StorageError;

use crate::{SledStore, decode, encode, err};

/// A commit status to send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitStatus {
    /// `owner/name`.
    pub repo: String,
    pub sha: String,
    /// `pending`, `success`, `failure` or `error`.
    pub state: String,
    pub target_url: String,
    pub description: String,
    pub context: String,
    /// Attempts so far.
    #[serde(default)]
    pub tries: u32,
    /// Not tried again before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<DateTime<Utc>>,
}

impl SledStore {
    /// Queues a status to send (on disk before it returns).
    pub async fn push_status(&self, status: &CommitStatus) -> Result<(), StorageError> {
        let seq = self.db.generate_id().map_err(|e| err("status id", e))?;
        self.statuses
            .insert(seq.to_be_bytes(), encode(status)?)
            .map_err(|e| err("statuses", e))?;
        self.flush().await
    }

    /// The oldest status waiting, with its key — if it is due at `now`.
    pub fn next_status(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Option<(Vec<u8>, CommitStatus)>, StorageError> {
        let Some((k, v)) = self.statuses.first().map_err(|e| err("statuses", e))? else {
            return Ok(None);
        };
        let s: CommitStatus = decode(&v)?;
        if s.not_before.is_some_and(|t| t > now) {
            return Ok(None);
        }
        Ok(Some((k.to_vec(), s)))
    }

    /// Drops a status (sent, or refused for good).
    pub async fn status_done(&self, key: &[u8]) -> Result<(), StorageError> {
        self.statuses.remove(key).map_err(|e| err("statuses", e))?;
        self.flush().await
    }

    /// Puts a status back, to be tried again.
    pub async fn status_again(
        &self,
        key: &[u8],
        status: &CommitStatus,
    ) -> Result<(), StorageError> {
        self.statuses
            .insert(key, encode(status)?)
            .map_err(|e| err("statuses", e))?;
        self.flush().await
    }

    /// How many statuses wait.
    pub fn statuses_waiting(&self) -> usize {
        self.statuses.len()
    }
}
