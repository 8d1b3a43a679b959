//! The results outbox in sled: results waiting for their sink (`outbox`,
//! by sequence number) and results the sink refused for good (`parked`,
//! by sequence number, with the reason). Both are counted in memory, so
//! asking how many wait never walks a tree — each write during an outage
//! costs the same however long the backlog.

use std::sync::atomic::Ordering;

use async_trait::async_trait;
use chrono::Utc;
use sentinel_engine::ports::{Outbox, Parked, Pending, StorageError};

use crate::{SledStore, decode, encode, err};

impl SledStore {
    fn next_seq(&self) -> Result<u64, StorageError> {
        self.db.generate_id().map_err(|e| err("outbox id", e))
    }

    fn insert_parked(&self, parked: &Parked) -> Result<(), StorageError> {
        let seq = self.next_seq()?;
        self.parked
            .insert(seq.to_be_bytes(), encode(parked)?)
            .map_err(|e| err("park", e))?;
        self.parked_len.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[async_trait]
impl Outbox for SledStore {
    async fn push(&self, item: &Pending) -> Result<(), StorageError> {
        let seq = self.next_seq()?;
        self.outbox
            .insert(seq.to_be_bytes(), encode(item)?)
            .map_err(|e| err("outbox push", e))?;
        self.outbox_len.fetch_add(1, Ordering::SeqCst);
        self.flush().await
    }

    async fn front(&self) -> Result<Option<(u64, Pending)>, StorageError> {
        let Some((k, v)) = self.outbox.first().map_err(|e| err("outbox", e))? else {
            return Ok(None);
        };
        let seq = u64::from_be_bytes(k.as_ref().try_into().map_err(|e| err("outbox key", e))?);
        Ok(Some((seq, decode(&v)?)))
    }

    async fn remove(&self, seq: u64) -> Result<(), StorageError> {
        if self
            .outbox
            .remove(seq.to_be_bytes())
            .map_err(|e| err("outbox remove", e))?
            .is_some()
        {
            self.outbox_len.fetch_sub(1, Ordering::SeqCst);
        }
        self.flush().await
    }

    async fn park(&self, seq: u64, reason: &str) -> Result<(), StorageError> {
        let Some(v) = self
            .outbox
            .get(seq.to_be_bytes())
            .map_err(|e| err("outbox", e))?
        else {
            return Ok(());
        };
        let item: Pending = decode(&v)?;
        self.insert_parked(&Parked {
            item,
            reason: reason.to_string(),
            at: Utc::now(),
        })?;
        self.remove(seq).await
    }

    async fn park_new(&self, item: &Pending, reason: &str) -> Result<(), StorageError> {
        self.insert_parked(&Parked {
            item: item.clone(),
            reason: reason.to_string(),
            at: Utc::now(),
        })?;
        self.flush().await
    }

    async fn parked(&self) -> Result<Vec<Parked>, StorageError> {
        self.parked
            .iter()
            .map(|kv| {
                kv.map_err(|e| err("parked", e))
                    .and_then(|(_, v)| decode(&v))
            })
            .collect()
    }

    async fn unpark_all(&self) -> Result<usize, StorageError> {
        let mut n = 0;
        for kv in self.parked.iter() {
            let (k, v) = kv.map_err(|e| err("parked", e))?;
            let parked: Parked = decode(&v)?;
            let seq = self.next_seq()?;
            self.outbox
                .insert(seq.to_be_bytes(), encode(&parked.item)?)
                .map_err(|e| err("outbox push", e))?;
            self.outbox_len.fetch_add(1, Ordering::SeqCst);
            self.parked.remove(k).map_err(|e| err("parked", e))?;
            self.parked_len.fetch_sub(1, Ordering::SeqCst);
            n += 1;
        }
        self.flush().await?;
        Ok(n)
    }

    fn len(&self) -> usize {
        self.outbox_len.load(Ordering::SeqCst)
    }

    fn parked_len(&self) -> usize {
        self.parked_len.load(Ordering::SeqCst)
    }
}
