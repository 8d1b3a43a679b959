//! The durable run queue in sled: FIFO by sequence number (`queue`), run id
//! → sequence number (`queued`), every accepted entry kept for re-runs
//! (`requests`), and idempotency keys (`deliveries`). Claims, renewals and
//! removals are compare-and-swap, so two workers never get one run.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sled::Transactional as _;

use sentinel_api::RunId;
use sentinel_engine::lease::Owner;
use sentinel_engine::ports::{Claim, QueueEntry, RunQueue, StorageError};

use crate::{SledStore, decode, encode, err, get_decoded, transaction_err};

/// Inside a transaction: queues the encoded entry `value` of `run` at
/// sequence number `seq` (queue, queued, requests).
pub(crate) fn queue_in(
    queue: &sled::transaction::TransactionalTree,
    queued: &sled::transaction::TransactionalTree,
    requests: &sled::transaction::TransactionalTree,
    seq: u64,
    run: &RunId,
    value: &[u8],
) -> Result<(), sled::transaction::UnabortableTransactionError> {
    queue.insert(&seq.to_be_bytes(), value)?;
    queued.insert(run.as_str(), &seq.to_be_bytes())?;
    requests.insert(run.as_str(), value)?;
    Ok(())
}

impl SledStore {
    /// Queues `entry` unless a trigger with the same idempotency `key` (a
    /// webhook's delivery id) was queued before: returns the run id that
    /// key owns and whether this call queued it. Atomic — of concurrent
    /// callers with one key exactly one queues — and on disk before it
    /// returns, for the winner and the others alike.
    pub async fn enqueue_once(
        &self,
        key: &str,
        entry: &QueueEntry,
    ) -> Result<(RunId, bool), StorageError> {
        let result = match self.insert_entry(Some(key), entry)? {
            None => (entry.run_id.clone(), true),
            Some(id) => (
                id.parse()
                    .map_err(|e| err("delivery", format!("stored run id `{id}`: {e}")))?,
                false,
            ),
        };
        // The first caller's write is on disk before any caller answers.
        self.flush().await?;
        Ok(result)
    }

    /// The one write path of the queue: in one transaction, queues `entry`
    /// (queue, queued, requests) and records its idempotency `key`, unless
    /// the key is known — then returns the run id it owns. A run id queued
    /// twice is an error. Not flushed.
    fn insert_entry(
        &self,
        key: Option<&str>,
        entry: &QueueEntry,
    ) -> Result<Option<String>, StorageError> {
        use sled::transaction::ConflictableTransactionError;
        let seq = self.db.generate_id().map_err(|e| err("queue id", e))?;
        let value = encode(entry)?;
        let outcome = (&self.deliveries, &self.queue, &self.queued, &self.requests).transaction(
            |(deliveries, queue, queued, requests)| {
                if let Some(key) = key
                    && let Some(existing) = deliveries.get(key.as_bytes())?
                {
                    return Ok(Some(String::from_utf8_lossy(&existing).into_owned()));
                }
                if queued.get(entry.run_id.as_str())?.is_some() {
                    return Err(ConflictableTransactionError::Abort(format!(
                        "run {} is already queued",
                        entry.run_id
                    )));
                }
                if let Some(key) = key {
                    deliveries.insert(key.as_bytes(), entry.run_id.as_str())?;
                }
                queue_in(queue, queued, requests, seq, &entry.run_id, &value)?;
                Ok(None)
            },
        );
        outcome.map_err(|e| transaction_err("enqueue", e))
    }

    /// Removes run `run`'s queue entry `v` at `k`, only if it is still `v`;
    /// true when this call removed it. Not flushed.
    fn remove_unchanged(
        &self,
        k: &[u8],
        v: &sled::IVec,
        run: &RunId,
    ) -> Result<bool, StorageError> {
        let removed = self
            .queue
            .compare_and_swap(k, Some(v), None::<&[u8]>)
            .map_err(|e| err("dequeue", e))?;
        if removed.is_ok() {
            self.queued
                .remove(run.as_str())
                .map_err(|e| err("dequeue", e))?;
        }
        Ok(removed.is_ok())
    }

    /// Claims the queue entry `v` at `k` for `owner` until `until`, only if
    /// it is still `v` (nobody claimed, renewed or removed it meanwhile).
    fn swap_claim(
        &self,
        k: &[u8],
        v: &sled::IVec,
        mut entry: QueueEntry,
        owner: &Owner,
        until: DateTime<Utc>,
    ) -> Result<Option<QueueEntry>, StorageError> {
        entry.claim = Some(Claim {
            owner: owner.clone(),
            until,
        });
        let swapped = self
            .queue
            .compare_and_swap(k, Some(v), Some(encode(&entry)?))
            .map_err(|e| err("claim", e))?;
        Ok(swapped.is_ok().then_some(entry))
    }

    /// Up to `limit` accepted runs that have not started (no run document
    /// yet: waiting, or claimed and being prepared), in queue order.
    pub fn unstarted(&self, limit: usize) -> Result<Vec<QueueEntry>, StorageError> {
        let mut out = Vec::new();
        for kv in self.queue.iter() {
            if out.len() == limit {
                break;
            }
            let (_, v) = kv.map_err(|e| err("queue", e))?;
            let entry: QueueEntry = decode(&v)?;
            let started = self
                .runs
                .contains_key(entry.run_id.as_str())
                .map_err(|e| err("runs", e))?;
            if !started {
                out.push(entry);
            }
        }
        Ok(out)
    }

    /// Forgets the idempotency keys of runs accepted before `before` (their
    /// run ids carry the time); returns how many. A delivery repeated after
    /// that queues a new run.
    pub async fn prune_deliveries(&self, before: DateTime<Utc>) -> Result<usize, StorageError> {
        let cutoff = u64::try_from(before.timestamp_millis()).unwrap_or(0);
        let mut pruned = 0;
        for kv in self.deliveries.iter() {
            let (k, v) = kv.map_err(|e| err("deliveries", e))?;
            let accepted = std::str::from_utf8(&v)
                .ok()
                .and_then(|id| ulid::Ulid::from_string(id).ok())
                .map(|u| u.timestamp_ms());
            if accepted.is_some_and(|ms| ms < cutoff) {
                self.deliveries
                    .remove(k)
                    .map_err(|e| err("deliveries", e))?;
                pruned += 1;
            }
        }
        if pruned > 0 {
            self.flush().await?;
        }
        Ok(pruned)
    }

    /// Records that `key` is done for run `run`, kept (and forgotten) like
    /// a delivery id; false when it was done before.
    pub async fn mark_done(&self, key: &str, run: &RunId) -> Result<bool, StorageError> {
        let fresh = self
            .deliveries
            .compare_and_swap(key.as_bytes(), None::<&[u8]>, Some(run.as_str().as_bytes()))
            .map_err(|e| err("deliveries", e))?
            .is_ok();
        self.flush().await?;
        Ok(fresh)
    }

    /// True when `key` was [marked done](SledStore::mark_done).
    pub fn is_done(&self, key: &str) -> Result<bool, StorageError> {
        self.deliveries
            .contains_key(key.as_bytes())
            .map_err(|e| err("deliveries", e))
    }

    /// The entry a run was queued with (kept after it ran), for re-runs.
    pub fn request_of(&self, run: &RunId) -> Result<Option<QueueEntry>, StorageError> {
        get_decoded(&self.requests, run.as_str(), "requests")
    }

    /// The queue key of a run.
    fn queue_key(&self, run: &RunId) -> Result<Option<sled::IVec>, StorageError> {
        self.queued
            .get(run.as_str())
            .map_err(|e| err("queue index", e))
    }

    /// A run's queue key and its raw entry there (for compare-and-swap).
    fn queued_entry(&self, run: &RunId) -> Result<Option<(sled::IVec, sled::IVec)>, StorageError> {
        let Some(k) = self.queue_key(run)? else {
            return Ok(None);
        };
        let v = self.queue.get(&k).map_err(|e| err("queue", e))?;
        Ok(v.map(|v| (k, v)))
    }
}

#[async_trait]
impl RunQueue for SledStore {
    async fn enqueue(&self, entry: &QueueEntry) -> Result<(), StorageError> {
        self.insert_entry(None, entry)?;
        self.flush().await
    }

    async fn withdraw(&self, run: &RunId) -> Result<Option<QueueEntry>, StorageError> {
        let Some((k, v)) = self.queued_entry(run)? else {
            return Ok(None);
        };
        let entry: QueueEntry = decode(&v)?;
        if entry.claim.is_some() {
            return Ok(None);
        }
        // Only if no worker claimed it meanwhile.
        if !self.remove_unchanged(&k, &v, run)? {
            return Ok(None);
        }
        self.flush().await?;
        Ok(Some(entry))
    }

    async fn claim(
        &self,
        owner: &Owner,
        until: DateTime<Utc>,
    ) -> Result<Option<QueueEntry>, StorageError> {
        for kv in self.queue.iter() {
            let (k, v) = kv.map_err(|e| err("queue", e))?;
            let entry: QueueEntry = decode(&v)?;
            if entry.claim.is_some() {
                continue;
            }
            if let Some(entry) = self.swap_claim(&k, &v, entry, owner, until)? {
                self.flush().await?;
                return Ok(Some(entry));
            }
        }
        Ok(None)
    }

    async fn renew(
        &self,
        run: &RunId,
        owner: &Owner,
        until: DateTime<Utc>,
    ) -> Result<bool, StorageError> {
        let Some((k, v)) = self.queued_entry(run)? else {
            return Ok(false);
        };
        let entry: QueueEntry = decode(&v)?;
        if entry.claim.as_ref().is_none_or(|c| &c.owner != owner) {
            return Ok(false);
        }
        Ok(self.swap_claim(&k, &v, entry, owner, until)?.is_some())
    }

    async fn finish(&self, run: &RunId) -> Result<(), StorageError> {
        if let Some(k) = self.queue_key(run)? {
            self.queue.remove(&k).map_err(|e| err("finish", e))?;
            self.queued
                .remove(run.as_str())
                .map_err(|e| err("finish", e))?;
            self.flush().await?;
        }
        Ok(())
    }

    async fn take_abandoned(
        &self,
        now: DateTime<Utc>,
        dead: &(dyn for<'o> Fn(&'o Owner) -> bool + Sync),
    ) -> Result<Vec<QueueEntry>, StorageError> {
        let mut taken = Vec::new();
        for kv in self.queue.iter() {
            let (k, v) = kv.map_err(|e| err("queue", e))?;
            let entry: QueueEntry = decode(&v)?;
            let Some(claim) = &entry.claim else { continue };
            if claim.until >= now && !dead(&claim.owner) {
                continue;
            }
            if self.remove_unchanged(&k, &v, &entry.run_id)? {
                taken.push(entry);
            }
        }
        if !taken.is_empty() {
            self.flush().await?;
        }
        Ok(taken)
    }

    async fn get(&self, run: &RunId) -> Result<Option<QueueEntry>, StorageError> {
        self.queued_entry(run)?.map(|(_, v)| decode(&v)).transpose()
    }

    async fn waiting(&self) -> Result<usize, StorageError> {
        let mut n = 0;
        for kv in self.queue.iter() {
            let (_, v) = kv.map_err(|e| err("queue", e))?;
            if decode::<QueueEntry>(&v)?.claim.is_none() {
                n += 1;
            }
        }
        Ok(n)
    }
}
