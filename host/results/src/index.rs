//! Writing and reading the runs index ([`sentinel_api::index`], layout 2)
//! over any object storage: adding, changing or removing a run reads the
//! root and one chunk and writes one chunk — two more objects when a chunk
//! splits — whatever the number of runs. An index of layout 1 (pages) is
//! converted by the first write. Readers dedup by id, since a chunk being
//! split briefly shares runs with its new neighbour.

use async_trait::async_trait;
use sentinel_api::index::{
    CHUNK_MAX, ChunkRef, INDEX_SCHEMA, IndexChunk, IndexDoc, IndexRoot, ROOT, chunk_key,
    decode_root, extend_unique,
};
use sentinel_api::keys::{self, INDEX_PAGE_SIZE};
use sentinel_api::{IndexPage, RunId, RunSummary};
use sentinel_engine::ports::StorageError;

/// The objects an index lives in.
#[async_trait]
pub trait IndexStore: Send + Sync {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError>;
    /// Writes an object whole (readers never see half of it).
    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), StorageError>;
    async fn delete(&self, key: &str) -> Result<(), StorageError>;
}

fn encode<T: serde::Serialize>(doc: &T) -> Result<Vec<u8>, StorageError> {
    let mut bytes = serde_json::to_vec_pretty(doc)
        .map_err(|e| StorageError::permanent("encode the index", e))?;
    bytes.push(b'\n');
    Ok(bytes)
}

fn decode_err(key: &str, e: impl std::error::Error + Send + Sync + 'static) -> StorageError {
    StorageError::permanent(format!("read {key}"), e)
}

async fn chunk(store: &dyn IndexStore, key: &str) -> Result<IndexChunk, StorageError> {
    match store.get(key).await? {
        Some(b) => sentinel_api::decode(&b, key, &[u64::from(INDEX_SCHEMA)])
            .map_err(|e| decode_err(key, e)),
        // A chunk the root names but that is not written yet is empty.
        None => Ok(IndexChunk {
            schema: INDEX_SCHEMA,
            runs: Vec::new(),
        }),
    }
}

/// The root, converting an index of layout 1 (written by an older
/// Sentinel) into chunks first.
async fn root(store: &dyn IndexStore) -> Result<IndexRoot, StorageError> {
    let Some(bytes) = store.get(ROOT).await? else {
        return Ok(IndexRoot::new());
    };
    match decode_root(&bytes).map_err(|e| decode_err(ROOT, e))? {
        IndexDoc::Chunks(root) => Ok(root),
        IndexDoc::Pages(first) => convert(store, first).await,
    }
}

/// Reads every page of layout 1 and writes them as chunks.
async fn convert(store: &dyn IndexStore, first: IndexPage) -> Result<IndexRoot, StorageError> {
    let mut runs = Vec::new();
    let mut pages = vec![keys::index_page(0)];
    let mut next = first.next.clone();
    extend_unique(&mut runs, first.runs);
    while let Some(key) = next.take() {
        let Some(b) = store.get(&key).await? else {
            break;
        };
        let page: IndexPage =
            sentinel_api::decode(&b, &key, &[1]).map_err(|e| decode_err(&key, e))?;
        next = page.next.clone();
        pages.push(key);
        extend_unique(&mut runs, page.runs);
    }
    runs.sort_by(|a, b| b.id.cmp(&a.id));
    let mut root = IndexRoot::new();
    for part in runs.chunks(INDEX_PAGE_SIZE) {
        let Some(oldest) = part.last() else { continue };
        let key = chunk_key(&oldest.id);
        let doc = IndexChunk {
            schema: INDEX_SCHEMA,
            runs: part.to_vec(),
        };
        store.put(&key, encode(&doc)?).await?;
        root.chunks.push(ChunkRef {
            from: oldest.id.clone(),
            key,
        });
    }
    store.put(ROOT, encode(&root)?).await?;
    for old in pages.iter().skip(1) {
        store.delete(old).await?;
    }
    Ok(root)
}

/// A change to the index.
#[derive(Debug, Clone)]
pub enum Change {
    Upsert(RunSummary),
    Remove(RunId),
}

/// Applies a change.
pub async fn apply(store: &dyn IndexStore, change: &Change) -> Result<(), StorageError> {
    match change {
        Change::Upsert(s) => upsert(store, s).await,
        Change::Remove(id) => remove(store, id).await,
    }
}

/// Adds `summary` to the index, or replaces the run's entry.
pub async fn upsert(store: &dyn IndexStore, summary: &RunSummary) -> Result<(), StorageError> {
    let mut root = root(store).await?;
    let Some(i) = root.chunk_for(&summary.id) else {
        let key = chunk_key(&summary.id);
        let doc = IndexChunk {
            schema: INDEX_SCHEMA,
            runs: vec![summary.clone()],
        };
        store.put(&key, encode(&doc)?).await?;
        root.chunks.push(ChunkRef {
            from: summary.id.clone(),
            key,
        });
        return store.put(ROOT, encode(&root)?).await;
    };
    let key = root.chunks[i].key.clone();
    let mut doc = chunk(store, &key).await?;
    RunSummary::upsert(&mut doc.runs, summary.clone());
    if doc.runs.len() <= CHUNK_MAX {
        return store.put(&key, encode(&doc)?).await;
    }
    // Split: the newer half becomes a chunk of its own, written and named
    // by the root before the older half leaves this one (a reader in
    // between sees some runs twice, never none).
    let older = doc.runs.split_off(doc.runs.len() / 2);
    let newer = std::mem::replace(&mut doc.runs, older);
    let Some(from) = newer.last().map(|r| r.id.clone()) else {
        return Ok(());
    };
    let new_key = chunk_key(&from);
    let both = IndexChunk {
        schema: INDEX_SCHEMA,
        runs: newer,
    };
    store.put(&new_key, encode(&both)?).await?;
    root.chunks.insert(i, ChunkRef { from, key: new_key });
    store.put(ROOT, encode(&root)?).await?;
    store.put(&key, encode(&doc)?).await
}

/// Removes a run from the index (nothing when it is not there).
pub async fn remove(store: &dyn IndexStore, id: &RunId) -> Result<(), StorageError> {
    let mut root = root(store).await?;
    let Some(i) = root.chunk_for(id) else {
        return Ok(());
    };
    let key = root.chunks[i].key.clone();
    let mut doc = chunk(store, &key).await?;
    let before = doc.runs.len();
    doc.runs.retain(|r| &r.id != id);
    if doc.runs.len() == before {
        return Ok(());
    }
    if doc.runs.is_empty() && root.chunks.len() > 1 {
        // Its range goes to the next older chunk (or, for the oldest, the
        // next newer one takes everything older).
        let gone = root.chunks.remove(i);
        store.put(ROOT, encode(&root)?).await?;
        return store.delete(&gone.key).await;
    }
    store.put(&key, encode(&doc)?).await
}

/// The runs of the index, newest first, at most `limit`.
pub async fn list(store: &dyn IndexStore, limit: usize) -> Result<Vec<RunSummary>, StorageError> {
    let Some(bytes) = store.get(ROOT).await? else {
        return Ok(Vec::new());
    };
    let mut runs = Vec::new();
    match decode_root(&bytes).map_err(|e| decode_err(ROOT, e))? {
        IndexDoc::Chunks(root) => {
            for c in &root.chunks {
                if runs.len() >= limit {
                    break;
                }
                extend_unique(&mut runs, chunk(store, &c.key).await?.runs);
            }
        }
        IndexDoc::Pages(first) => {
            let mut next = first.next.clone();
            extend_unique(&mut runs, first.runs);
            while let Some(key) = next.take() {
                if runs.len() >= limit {
                    break;
                }
                let Some(b) = store.get(&key).await? else {
                    break;
                };
                let page: IndexPage =
                    sentinel_api::decode(&b, &key, &[1]).map_err(|e| decode_err(&key, e))?;
                next = page.next.clone();
                extend_unique(&mut runs, page.runs);
            }
        }
    }
    runs.truncate(limit);
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Mem {
        objects: Mutex<BTreeMap<String, Vec<u8>>>,
        writes: Mutex<usize>,
    }

    #[async_trait]
    impl IndexStore for Mem {
        async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
            Ok(self.objects.lock().unwrap().get(key).cloned())
        }
        async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), StorageError> {
            *self.writes.lock().unwrap() += 1;
            self.objects.lock().unwrap().insert(key.into(), bytes);
            Ok(())
        }
        async fn delete(&self, key: &str) -> Result<(), StorageError> {
            *self.writes.lock().unwrap() += 1;
            self.objects.lock().unwrap().remove(key);
            Ok(())
        }
    }

    fn summary(i: u32) -> RunSummary {
        RunSummary {
            id: format!("01JDX3K6Q2T8W9V5M4N3P{i:05}").parse().unwrap(),
            pipeline: "p".into(),
            status: sentinel_api::RunStatus::Succeeded,
            created: chrono::Utc::now(),
            duration_ms: Some(1),
            git: None,
            stages: BTreeMap::new(),
        }
    }

    #[tokio::test]
    async fn every_change_writes_a_bounded_number_of_objects() {
        let mem = Mem::default();
        let mut most = 0;
        for i in 0..1000 {
            let before = *mem.writes.lock().unwrap();
            upsert(&mem, &summary(i)).await.unwrap();
            most = most.max(*mem.writes.lock().unwrap() - before);
        }
        assert!(most <= 3, "an insert wrote {most} objects");
        let all = list(&mem, usize::MAX).await.unwrap();
        assert_eq!(all.len(), 1000);
        assert!(all.windows(2).all(|w| w[0].id > w[1].id), "newest first");
        assert_eq!(list(&mem, 10).await.unwrap()[0].id, summary(999).id);

        // A change in the middle and a removal touch one chunk each.
        let mut again = summary(500);
        again.status = sentinel_api::RunStatus::Failed;
        let before = *mem.writes.lock().unwrap();
        upsert(&mem, &again).await.unwrap();
        remove(&mem, &summary(10).id).await.unwrap();
        assert_eq!(*mem.writes.lock().unwrap() - before, 2);
        let all = list(&mem, usize::MAX).await.unwrap();
        assert_eq!(all.len(), 999);
        assert_eq!(
            all.iter().find(|r| r.id == again.id).unwrap().status,
            sentinel_api::RunStatus::Failed
        );
        // Emptying a chunk drops it from the root.
        for i in 0..1000 {
            remove(&mem, &summary(i).id).await.unwrap();
        }
        assert!(list(&mem, usize::MAX).await.unwrap().is_empty());
        let root: IndexRoot = serde_json::from_slice(&mem.objects.lock().unwrap()[ROOT]).unwrap();
        assert_eq!(root.chunks.len(), 1);
    }

    #[tokio::test]
    async fn an_index_of_pages_is_read_and_converted() {
        let mem = Mem::default();
        let runs: Vec<RunSummary> = (0..250).rev().map(summary).collect();
        for page in crate::pages::index_pages(&runs) {
            mem.put(
                &keys::index_page(page.page),
                serde_json::to_vec(&page).unwrap(),
            )
            .await
            .unwrap();
        }
        assert_eq!(list(&mem, 120).await.unwrap().len(), 120);
        upsert(&mem, &summary(250)).await.unwrap();
        let all = list(&mem, usize::MAX).await.unwrap();
        assert_eq!(all.len(), 251);
        assert!(
            !mem.objects
                .lock()
                .unwrap()
                .contains_key("runs/index-1.json")
        );
    }
}
