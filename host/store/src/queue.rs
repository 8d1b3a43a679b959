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

use crate::{SledStore, decode, encode, err};

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
        use sled::transaction::{ConflictableTransactionError, TransactionError};
        let seq = self.db.generate_id().map_err(|e| err("queue id", e))?;
        let value = encode(entry)?;
        let outcome = (&self.deliveries, &self.queue, &self.queued, &self.requests).transaction(
            |(deliveries, queue, queued, requests)| {
                if let Some(existing) = deliveries.get(key.as_bytes())? {
                    let id = String::from_utf8_lossy(&existing).into_owned();
                    return Ok(Err(id));
                }
                if queued.get(entry.run_id.as_str())?.is_some() {
                    return Err(ConflictableTransactionError::Abort(format!(
                        "run {} is already queued",
                        entry.run_id
                    )));
                }
                deliveries.insert(key.as_bytes(), entry.run_id.as_str())?;
                queue.insert(&seq.to_be_bytes(), value.clone())?;
                queued.insert(entry.run_id.as_str(), &seq.to_be_bytes())?;
                requests.insert(entry.run_id.as_str(), value.clone())?;
                Ok(Ok(()))
            },
        );
        let result = match outcome {
            Ok(Ok(())) => (entry.run_id.clone(), true),
            Ok(Err(id)) => (
                id.parse()
                    .map_err(|e| err("delivery", format!("stored run id `{id}`: {e}")))?,
                false,
            ),
            Err(TransactionError::Abort(m)) => return Err(err("enqueue", m)),
            Err(TransactionError::Storage(e)) => return Err(err("enqueue", e)),
        };
        // The first caller's write is on disk before any caller answers.
        self.flush().await?;
        Ok(result)
    }

    /// The entry a run was queued with (kept after it ran), for re-runs.
    pub fn request_of(&self, run: &RunId) -> Result<Option<QueueEntry>, StorageError> {
        self.requests
            .get(run.as_str())
            .map_err(|e| err("requests", e))?
            .map(|v| decode(&v))
            .transpose()
    }

    /// The queue key of a run.
    fn queue_key(&self, run: &RunId) -> Result<Option<sled::IVec>, StorageError> {
        self.queued
            .get(run.as_str())
            .map_err(|e| err("queue index", e))
    }
}

#[async_trait]
impl RunQueue for SledStore {
    async fn enqueue(&self, entry: &QueueEntry) -> Result<(), StorageError> {
        if self.queue_key(&entry.run_id)?.is_some() {
            return Err(err(
                "enqueue",
                format!("run {} is already queued", entry.run_id),
            ));
        }
        let seq = self.db.generate_id().map_err(|e| err("queue id", e))?;
        self.queue
            .insert(seq.to_be_bytes(), encode(entry)?)
            .map_err(|e| err("enqueue", e))?;
        self.queued
            .insert(entry.run_id.as_str(), &seq.to_be_bytes())
            .map_err(|e| err("enqueue", e))?;
        self.requests
            .insert(entry.run_id.as_str(), encode(entry)?)
            .map_err(|e| err("enqueue", e))?;
        self.flush().await
    }

    async fn withdraw(&self, run: &RunId) -> Result<Option<QueueEntry>, StorageError> {
        let Some(k) = self.queue_key(run)? else {
            return Ok(None);
        };
        let Some(v) = self.queue.get(&k).map_err(|e| err("withdraw", e))? else {
            return Ok(None);
        };
        let entry: QueueEntry = decode(&v)?;
        if entry.claim.is_some() {
            return Ok(None);
        }
        // Only if no worker claimed it meanwhile.
        let removed = self
            .queue
            .compare_and_swap(&k, Some(&v), None::<&[u8]>)
            .map_err(|e| err("withdraw", e))?;
        if removed.is_err() {
            return Ok(None);
        }
        self.queued
            .remove(run.as_str())
            .map_err(|e| err("withdraw", e))?;
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
            let mut entry: QueueEntry = decode(&v)?;
            if entry.claim.is_some() {
                continue;
            }
            entry.claim = Some(Claim {
                owner: owner.clone(),
                until,
            });
            // Only if nobody claimed it meanwhile.
            let swapped = self
                .queue
                .compare_and_swap(&k, Some(&v), Some(encode(&entry)?))
                .map_err(|e| err("claim", e))?;
            if swapped.is_ok() {
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
        let Some(k) = self.queue_key(run)? else {
            return Ok(false);
        };
        let Some(v) = self.queue.get(&k).map_err(|e| err("renew", e))? else {
            return Ok(false);
        };
        let mut entry: QueueEntry = decode(&v)?;
        if entry.claim.as_ref().is_none_or(|c| &c.owner != owner) {
            return Ok(false);
        }
        entry.claim = Some(Claim {
            owner: owner.clone(),
            until,
        });
        let swapped = self
            .queue
            .compare_and_swap(&k, Some(&v), Some(encode(&entry)?))
            .map_err(|e| err("renew", e))?;
        Ok(swapped.is_ok())
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
            let removed = self
                .queue
                .compare_and_swap(&k, Some(&v), None::<&[u8]>)
                .map_err(|e| err("reclaim", e))?;
            if removed.is_ok() {
                self.queued
                    .remove(entry.run_id.as_str())
                    .map_err(|e| err("reclaim", e))?;
                taken.push(entry);
            }
        }
        if !taken.is_empty() {
            self.flush().await?;
        }
        Ok(taken)
    }

    async fn get(&self, run: &RunId) -> Result<Option<QueueEntry>, StorageError> {
        let Some(k) = self.queue_key(run)? else {
            return Ok(None);
        };
        self.queue
            .get(&k)
            .map_err(|e| err("queue", e))?
            .map(|v| decode(&v))
            .transpose()
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
