//! Schedules' state in sled (`schedules`: name → [`ScheduleState`]): the
//! next firing of each schedule, and the last one that queued a run; and
//! (`version/NAME`) the last version each version watch saw. The
//! firing's run is queued with an idempotency key of its own, so this
//! state may lag the queue (a crash between the two) without a firing
//! running twice.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use sentinel_api::RunId;
use sentinel_engine::ports::StorageError;

use crate::{SledStore, encode, err, get_decoded};

/// Where a schedule stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleState {
    /// What the next firing was computed from (cron and time zone): a
    /// schedule whose expression changed starts afresh.
    pub pattern: String,
    /// Its next firing.
    pub next: DateTime<Utc>,
    /// The last firing that queued a run, and that run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_firing: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<RunId>,
}

impl SledStore {
    /// Schedule `name`'s state, if it has one.
    pub fn schedule_state(&self, name: &str) -> Result<Option<ScheduleState>, StorageError> {
        get_decoded(&self.schedules, name.as_bytes(), "schedule")
    }

    /// Stores schedule `name`'s state, on disk before it returns.
    pub async fn put_schedule_state(
        &self,
        name: &str,
        state: &ScheduleState,
    ) -> Result<(), StorageError> {
        self.schedules
            .insert(name.as_bytes(), encode(state)?)
            .map_err(|e| err("schedule", e))?;
        self.flush().await
    }
}

impl SledStore {
    /// The last version version watch `name` saw, if it saw one.
    pub fn version_seen(&self, name: &str) -> Result<Option<String>, StorageError> {
        get_decoded(
            &self.schedules,
            format!("version/{name}").as_bytes(),
            "version watch",
        )
    }

    /// Records the version watch `name` saw (on disk before it returns).
    pub async fn set_version_seen(&self, name: &str, version: &str) -> Result<(), StorageError> {
        self.schedules
            .insert(format!("version/{name}").as_bytes(), encode(&version)?)
            .map_err(|e| err("version watch", e))?;
        self.flush().await
    }
}
