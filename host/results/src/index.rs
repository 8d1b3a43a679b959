//! Writing and reading the runs index ([`sentinel_api::index`], layout 2)
//! over any object storage. A new run, or a change to one of the newest,
//! reads and rewrites the small root only; every [`HEAD_MAX`]/2 runs the
//! head's oldest move into the newest chunk (a chunk read and written, the
//! chunk list too when it splits); a change to an older run rewrites its
//! chunk — whatever the number of runs. An index of layout 1 (pages) is
//! converted by the first write. Readers dedup by id, since runs being moved
//! are briefly in two places (always written to the new place first).

use async_trait::async_trait;
use sentinel_api::index::{
    CHUNK_MAX, CHUNKS, ChunkList, ChunkRef, HEAD_MAX, INDEX_SCHEMA, IndexChunk, IndexDoc,
    IndexRoot, ROOT, chunk_key, decode_root, extend_unique,
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

/// The index's documents are written compact: the root is rewritten on
/// nearly every change, so its size is what each change costs.
fn encode<T: serde::Serialize>(doc: &T) -> Result<Vec<u8>, StorageError> {
    serde_json::to_vec(doc).map_err(|e| StorageError::permanent("encode the index", e))
}

fn decode_err(key: &str, e: impl std::error::Error + Send + Sync + 'static) -> StorageError {
    StorageError::permanent(format!("read {key}"), e)
}

async fn read<T: serde::de::DeserializeOwned + Default>(
    store: &dyn IndexStore,
    key: &str,
) -> Result<T, StorageError> {
    match store.get(key).await? {
        Some(b) => sentinel_api::decode(&b, key, &[u64::from(INDEX_SCHEMA)])
            .map_err(|e| decode_err(key, e)),
        // Named but not written yet: empty.
        None => Ok(T::default()),
    }
}

async fn write<T: serde::Serialize + Sync>(
    store: &dyn IndexStore,
    key: &str,
    doc: &T,
) -> Result<(), StorageError> {
    store.put(key, encode(doc)?).await
}

fn chunk(runs: Vec<RunSummary>) -> IndexChunk {
    IndexChunk {
        schema: INDEX_SCHEMA,
        runs,
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
    let mut list = ChunkList::new();
    for part in runs.chunks(INDEX_PAGE_SIZE) {
        let Some(oldest) = part.last() else { continue };
        let key = chunk_key(&oldest.id);
        write(store, &key, &chunk(part.to_vec())).await?;
        list.chunks.push(ChunkRef {
            from: oldest.id.clone(),
            key,
        });
    }
    let root = IndexRoot {
        chunks: list.chunks.len() as u32,
        floor: runs.first().map(|r| r.id.clone()),
        ..IndexRoot::new()
    };
    write(store, CHUNKS, &list).await?;
    write(store, ROOT, &root).await?;
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
    /// Many runs at once (retention): each chunk read and written once.
    RemoveMany(Vec<RunId>),
}

/// Applies a change.
pub async fn apply(store: &dyn IndexStore, change: &Change) -> Result<(), StorageError> {
    match change {
        Change::Upsert(s) => upsert(store, s).await,
        Change::Remove(id) => remove(store, id).await,
        Change::RemoveMany(ids) => remove_many(store, ids).await,
    }
}

/// Adds `summary` to the index, or replaces the run's entry.
pub async fn upsert(store: &dyn IndexStore, summary: &RunSummary) -> Result<(), StorageError> {
    let mut root = root(store).await?;
    if !root.in_head(&summary.id) {
        return upsert_in_chunk(store, summary).await;
    }
    RunSummary::upsert(&mut root.head, summary.clone());
    if root.head.len() > HEAD_MAX {
        // The oldest half go to the chunks: written there first, then
        // taken out of the head.
        let older = root.head.split_off(HEAD_MAX / 2);
        if let Some(newest) = older.first() {
            root.floor = Some(newest.id.clone());
        }
        root.chunks = move_to_chunks(store, older).await?;
    }
    write(store, ROOT, &root).await
}

/// Adds runs (newest first, all newer than any chunk's) to the newest
/// chunk, splitting it when it is full; returns how many chunks there are.
async fn move_to_chunks(
    store: &dyn IndexStore,
    runs: Vec<RunSummary>,
) -> Result<u32, StorageError> {
    let mut list: ChunkList = read(store, CHUNKS).await?;
    let Some(newest) = list.chunks.first().cloned() else {
        let Some(oldest) = runs.last().map(|r| r.id.clone()) else {
            return Ok(0);
        };
        let key = chunk_key(&oldest);
        write(store, &key, &chunk(runs)).await?;
        list.chunks.push(ChunkRef { from: oldest, key });
        write(store, CHUNKS, &list).await?;
        return Ok(1);
    };
    let mut doc: IndexChunk = read(store, &newest.key).await?;
    for r in runs {
        RunSummary::upsert(&mut doc.runs, r);
    }
    write_chunk(store, &mut list, 0, doc).await?;
    Ok(list.chunks.len() as u32)
}

/// Writes chunk `i` of the list, splitting it when it is full: the newer
/// half becomes a chunk of its own, written and listed before the older
/// half leaves this one (a reader in between sees some runs twice, never
/// none).
async fn write_chunk(
    store: &dyn IndexStore,
    list: &mut ChunkList,
    i: usize,
    mut doc: IndexChunk,
) -> Result<(), StorageError> {
    let key = list.chunks[i].key.clone();
    if doc.runs.len() <= CHUNK_MAX {
        return write(store, &key, &doc).await;
    }
    let older = doc.runs.split_off(doc.runs.len() / 2);
    let newer = std::mem::replace(&mut doc.runs, older);
    let Some(from) = newer.last().map(|r| r.id.clone()) else {
        return Ok(());
    };
    let new_key = chunk_key(&from);
    write(store, &new_key, &chunk(newer)).await?;
    list.chunks.insert(i, ChunkRef { from, key: new_key });
    write(store, CHUNKS, list).await?;
    write(store, &key, &doc).await
}

/// Adds or replaces a run older than the head, in its chunk.
async fn upsert_in_chunk(store: &dyn IndexStore, summary: &RunSummary) -> Result<(), StorageError> {
    let mut list: ChunkList = read(store, CHUNKS).await?;
    let Some(i) = list.chunk_for(&summary.id) else {
        return Ok(());
    };
    let mut doc: IndexChunk = read(store, &list.chunks[i].key).await?;
    RunSummary::upsert(&mut doc.runs, summary.clone());
    let before = list.chunks.len();
    write_chunk(store, &mut list, i, doc).await?;
    if list.chunks.len() != before {
        let mut root = root(store).await?;
        root.chunks = list.chunks.len() as u32;
        write(store, ROOT, &root).await?;
    }
    Ok(())
}

/// Removes a run from the index (nothing when it is not there).
pub async fn remove(store: &dyn IndexStore, id: &RunId) -> Result<(), StorageError> {
    let mut root = root(store).await?;
    if root.head.iter().any(|r| &r.id == id) {
        root.head.retain(|r| &r.id != id);
        return write(store, ROOT, &root).await;
    }
    let mut list: ChunkList = read(store, CHUNKS).await?;
    let Some(i) = list.chunk_for(id) else {
        return Ok(());
    };
    let key = list.chunks[i].key.clone();
    let mut doc: IndexChunk = read(store, &key).await?;
    let before = doc.runs.len();
    doc.runs.retain(|r| &r.id != id);
    if doc.runs.len() == before {
        return Ok(());
    }
    if doc.runs.is_empty() {
        // Its range goes to the next older chunk (or, for the oldest, the
        // next newer one takes everything older).
        list.chunks.remove(i);
        write(store, CHUNKS, &list).await?;
        root.chunks = list.chunks.len() as u32;
        if root.chunks == 0 {
            root.floor = None;
        }
        write(store, ROOT, &root).await?;
        return store.delete(&key).await;
    }
    write(store, &key, &doc).await
}

/// Removes many runs: the root, the chunk list and each chunk holding one
/// of them are read and written once (a chunk left empty is deleted).
pub async fn remove_many(store: &dyn IndexStore, ids: &[RunId]) -> Result<(), StorageError> {
    if let [one] = ids {
        return remove(store, one).await;
    }
    let gone: std::collections::BTreeSet<&RunId> = ids.iter().collect();
    let mut root = root(store).await?;
    let head = root.head.len();
    root.head.retain(|r| !gone.contains(&r.id));
    let mut changed_root = root.head.len() != head;
    let mut list: ChunkList = read(store, CHUNKS).await?;
    let mut by_chunk: std::collections::BTreeMap<usize, Vec<&RunId>> = Default::default();
    for id in &gone {
        if let Some(i) = list.chunk_for(id) {
            by_chunk.entry(i).or_default().push(id);
        }
    }
    let mut emptied = Vec::new();
    for i in by_chunk.keys() {
        let key = list.chunks[*i].key.clone();
        let mut doc: IndexChunk = read(store, &key).await?;
        let before = doc.runs.len();
        doc.runs.retain(|r| !gone.contains(&r.id));
        if doc.runs.len() == before {
            continue;
        }
        if doc.runs.is_empty() {
            emptied.push(*i);
        } else {
            write(store, &key, &doc).await?;
        }
    }
    // Emptied chunks leave the list (their range goes to a neighbour), the
    // list and root are written, then the chunks deleted.
    let mut keys = Vec::new();
    for i in emptied.into_iter().rev() {
        keys.push(list.chunks.remove(i).key);
    }
    if !keys.is_empty() {
        write(store, CHUNKS, &list).await?;
        root.chunks = list.chunks.len() as u32;
        if root.chunks == 0 {
            root.floor = None;
        }
        changed_root = true;
    }
    if changed_root {
        write(store, ROOT, &root).await?;
    }
    for key in keys {
        store.delete(&key).await?;
    }
    Ok(())
}

/// The runs of the index, newest first, at most `limit`.
pub async fn list(store: &dyn IndexStore, limit: usize) -> Result<Vec<RunSummary>, StorageError> {
    let Some(bytes) = store.get(ROOT).await? else {
        return Ok(Vec::new());
    };
    let mut runs = Vec::new();
    match decode_root(&bytes).map_err(|e| decode_err(ROOT, e))? {
        IndexDoc::Chunks(root) => {
            extend_unique(&mut runs, root.head);
            if root.chunks > 0 && runs.len() < limit {
                let list: ChunkList = read(store, CHUNKS).await?;
                for c in &list.chunks {
                    if runs.len() >= limit {
                        break;
                    }
                    let doc: IndexChunk = read(store, &c.key).await?;
                    extend_unique(&mut runs, doc.runs);
                }
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
        assert!(most <= 4, "an insert wrote {most} objects");
        let all = list(&mem, usize::MAX).await.unwrap();
        assert_eq!(all.len(), 1000);
        assert!(all.windows(2).all(|w| w[0].id > w[1].id), "newest first");
        assert_eq!(list(&mem, 10).await.unwrap()[0].id, summary(999).id);

        // A new run touches the root alone.
        let before = *mem.writes.lock().unwrap();
        upsert(&mem, &summary(1000)).await.unwrap();
        remove(&mem, &summary(1000).id).await.unwrap();
        assert_eq!(*mem.writes.lock().unwrap() - before, 2);
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
        // Emptying a chunk drops it from the list.
        for i in 0..1000 {
            remove(&mem, &summary(i).id).await.unwrap();
        }
        assert!(list(&mem, usize::MAX).await.unwrap().is_empty());
        let root: IndexRoot = serde_json::from_slice(&mem.objects.lock().unwrap()[ROOT]).unwrap();
        assert_eq!(root.chunks, 0, "emptied chunks are dropped");
        assert!(
            !mem.objects
                .lock()
                .unwrap()
                .keys()
                .any(|k| k.starts_with("runs/index/01"))
        );
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
