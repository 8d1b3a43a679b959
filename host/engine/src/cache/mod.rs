//! Caches between runs: entries found by key (exact, then by prefix — the
//! key, then each restore key —, newest first, on the run's branch, then
//! on the default branch), saved only when a stage succeeds and never
//! replaced, evicted least recently used past a size budget and after a
//! time to live. Entries and one small index per project live behind a
//! [`CacheBackend`] (a folder of this machine, or a private S3 prefix).

pub mod archive;
mod local;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sentinel_api::{CacheDoc, CacheResult, StageName};
use sentinel_pipeline::CachePath;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use local::CacheDir;

use crate::error::StorageError;
use crate::exec::Workspace;
use crate::masker::SecretSet;
use crate::ports::CacheBackend;

/// How much a cache keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachePolicy {
    /// Total bytes of a project's entries; the least recently used go first.
    pub budget: u64,
    /// Entries not used for this long are removed.
    pub ttl: Duration,
    /// A larger entry is not saved (wercker's cap: 1,000 MiB).
    pub max_entry: u64,
}

impl Default for CachePolicy {
    fn default() -> Self {
        Self {
            budget: 10 << 30,
            ttl: Duration::from_secs(7 * 24 * 3600),
            max_entry: 1000 << 20,
        }
    }
}

/// One saved entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub key: String,
    pub branch: String,
    /// Its object's name, relative to the backend.
    pub object: String,
    pub size: u64,
    pub created: DateTime<Utc>,
    pub last_used: DateTime<Utc>,
}

/// A project's entries (`<project>/index.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Index {
    schema: u32,
    entries: Vec<Entry>,
}

/// Whose entries a stage reads and writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// The project (repository) the entries belong to.
    pub project: String,
    /// The run's branch: entries are saved here.
    pub branch: String,
    /// Read when the branch has no match.
    pub default_branch: String,
    /// False for a run that may read the cache but not write it (a fork's
    /// pull request).
    pub write: bool,
}

/// Finds the entry to restore in `entries`: on each branch of the scope
/// in turn, an exact key, then the newest entry whose key starts with the
/// key, then with each restore key. Entries past `ttl` are ignored.
pub fn lookup(
    entries: &[Entry],
    now: DateTime<Utc>,
    ttl: Duration,
    scope: &Scope,
    key: &str,
    restore_keys: &[String],
) -> Option<(usize, CacheResult)> {
    let live = |e: &Entry| !expired(e, now, ttl);
    let mut branches = vec![scope.branch.as_str()];
    if scope.default_branch != scope.branch {
        branches.push(&scope.default_branch);
    }
    for b in branches {
        let on = |e: &Entry| e.branch == b && live(e);
        if let Some(i) = entries.iter().position(|e| on(e) && e.key == key) {
            return Some((i, CacheResult::Hit));
        }
        for prefix in std::iter::once(key).chain(restore_keys.iter().map(String::as_str)) {
            let newest = entries
                .iter()
                .enumerate()
                .filter(|(_, e)| on(e) && e.key.starts_with(prefix))
                .max_by_key(|(_, e)| e.created);
            if let Some((i, _)) = newest {
                return Some((i, CacheResult::Partial));
            }
        }
    }
    None
}

fn expired(e: &Entry, now: DateTime<Utc>, ttl: Duration) -> bool {
    (now - e.last_used).to_std().is_ok_and(|age| age > ttl)
}

/// Takes out of `entries` those past the time to live, then the least
/// recently used until the rest fit the budget (`keep` is never taken: it
/// was just saved). Returns what was taken.
pub fn evict(
    entries: &mut Vec<Entry>,
    now: DateTime<Utc>,
    policy: &CachePolicy,
    keep: &str,
) -> Vec<Entry> {
    let mut gone = Vec::new();
    let (old, kept): (Vec<Entry>, Vec<Entry>) = std::mem::take(entries)
        .into_iter()
        .partition(|e| e.object != keep && expired(e, now, policy.ttl));
    gone.extend(old);
    *entries = kept;
    let mut total: u64 = entries.iter().map(|e| e.size).sum();
    while total > policy.budget {
        let lru = entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.object != keep)
            .min_by_key(|(_, e)| e.last_used)
            .map(|(i, _)| i);
        let Some(i) = lru else { break };
        let e = entries.remove(i);
        total -= e.size;
        gone.push(e);
    }
    gone
}

/// A project's folder name: readable, and unique through a short hash.
fn project_dir(project: &str) -> String {
    let clean: String = project
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .take(48)
        .collect();
    let h = hex::encode(Sha256::digest(project.as_bytes()));
    format!("{clean}-{}", &h[..12])
}

/// An entry's object name.
fn object_name(project: &str, branch: &str, key: &str) -> String {
    let mut h = Sha256::new();
    h.update(branch.as_bytes());
    h.update([0]);
    h.update(key.as_bytes());
    format!(
        "{}/{}.tar",
        project_dir(project),
        &hex::encode(h.finalize())[..32]
    )
}

/// What saving did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Saved {
    /// Stored; these many older entries were evicted.
    Stored { evicted: usize },
    /// An entry with this key exists on the branch: entries are immutable.
    Exists,
}

/// The caches of every project behind one backend, with one policy.
#[derive(Debug)]
pub struct Cache {
    backend: Arc<dyn CacheBackend>,
    pub policy: CachePolicy,
    /// Index updates of this process, one at a time.
    lock: tokio::sync::Mutex<()>,
}

impl Cache {
    pub fn new(backend: Arc<dyn CacheBackend>, policy: CachePolicy) -> Self {
        Self {
            backend,
            policy,
            lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Where the entries live, for messages.
    pub fn location(&self) -> String {
        self.backend.location()
    }

    fn index_name(project: &str) -> String {
        format!("{}/index.json", project_dir(project))
    }

    async fn index(&self, project: &str) -> Result<Index, StorageError> {
        match self.backend.read(&Self::index_name(project)).await? {
            None => Ok(Index {
                schema: 1,
                entries: Vec::new(),
            }),
            Some(b) => serde_json::from_slice(&b)
                .map_err(|e| StorageError::permanent("read the cache index", e)),
        }
    }

    async fn put_index(&self, project: &str, index: &Index) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec_pretty(index)
            .map_err(|e| StorageError::permanent("write the cache index", e))?;
        self.backend.write(&Self::index_name(project), &bytes).await
    }

    /// Applies the policy to a project's entries now (retention's pass):
    /// those past the time to live, then the least recently used past the
    /// budget, go; returns how many and their bytes.
    pub async fn sweep(&self, project: &str) -> Result<(usize, u64), StorageError> {
        let gone = {
            let _one = self.lock.lock().await;
            let mut index = self.index(project).await?;
            let gone = evict(&mut index.entries, Utc::now(), &self.policy, "");
            if !gone.is_empty() {
                self.put_index(project, &index).await?;
            }
            gone
        };
        for e in &gone {
            if let Err(err) = self.backend.delete(&e.object).await {
                tracing::warn!("cannot remove the expired cache entry {}: {err}", e.object);
            }
        }
        Ok((gone.len(), gone.iter().map(|e| e.size).sum()))
    }

    /// A project's entries (newest first).
    pub async fn entries(&self, project: &str) -> Result<Vec<Entry>, StorageError> {
        let mut e = self.index(project).await?.entries;
        e.sort_by_key(|x| std::cmp::Reverse(x.created));
        Ok(e)
    }

    /// Finds the entry to restore and copies it into `to`; marks it used.
    pub async fn restore(
        &self,
        scope: &Scope,
        key: &str,
        restore_keys: &[String],
        to: &Path,
    ) -> Result<Option<(Entry, CacheResult)>, StorageError> {
        let _guard = self.lock.lock().await;
        let mut index = self.index(&scope.project).await?;
        let now = Utc::now();
        let Some((i, result)) = lookup(
            &index.entries,
            now,
            self.policy.ttl,
            scope,
            key,
            restore_keys,
        ) else {
            return Ok(None);
        };
        let entry = index.entries[i].clone();
        if !self.backend.download(&entry.object, to).await? {
            // Gone behind the index's back: forget it.
            index.entries.remove(i);
            self.put_index(&scope.project, &index).await?;
            return Ok(None);
        }
        index.entries[i].last_used = now;
        self.put_index(&scope.project, &index).await?;
        Ok(Some((entry, result)))
    }

    /// Saves the tar `from` under `key` on the scope's branch, then evicts.
    pub async fn save(&self, scope: &Scope, key: &str, from: &Path) -> Result<Saved, StorageError> {
        let size = std::fs::metadata(from)
            .map_err(|e| StorageError::io("read the cache entry", e))?
            .len();
        let _guard = self.lock.lock().await;
        let mut index = self.index(&scope.project).await?;
        if index
            .entries
            .iter()
            .any(|e| e.branch == scope.branch && e.key == key)
        {
            return Ok(Saved::Exists);
        }
        let object = object_name(&scope.project, &scope.branch, key);
        self.backend.upload(&object, from).await?;
        let now = Utc::now();
        index.entries.push(Entry {
            key: key.to_string(),
            branch: scope.branch.clone(),
            object: object.clone(),
            size,
            created: now,
            last_used: now,
        });
        let gone = evict(&mut index.entries, now, &self.policy, &object);
        self.put_index(&scope.project, &index).await?;
        for e in &gone {
            if let Err(err) = self.backend.delete(&e.object).await {
                tracing::warn!("cannot remove the evicted cache entry {}: {err}", e.object);
            }
        }
        Ok(Saved::Stored {
            evicted: gone.len(),
        })
    }
}

/// The cache a run may use, from its request.
#[derive(Debug, Clone)]
pub struct CacheAccess {
    pub cache: Arc<Cache>,
    pub project: String,
    /// The branch a run without git context is on, and every run's fallback.
    pub default_branch: String,
    /// False: read only (a fork's pull request).
    pub write: bool,
}

/// One piece of a key whose references are resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    /// The hash of these workspace files, computed when the stage starts.
    Hash(Vec<String>),
}

/// A stage's cache with its scope and keys resolved but for file hashes.
#[derive(Debug, Clone)]
pub struct StageCache {
    pub cache: Arc<Cache>,
    pub scope: Scope,
    pub key: Vec<Piece>,
    pub restore_keys: Vec<Vec<Piece>>,
    pub paths: Vec<CachePath>,
}

/// A stage's cache once restored, until it is saved.
#[derive(Debug)]
pub struct Started {
    pub doc: CacheDoc,
    /// Save under the key when the stage succeeds.
    save: bool,
    tmp: PathBuf,
}

impl StageCache {
    /// A key with its file hashes made; `hashes` keeps those made already
    /// (the key and its restore keys often hash the same files).
    async fn render(
        &self,
        ws: &dyn Workspace,
        pieces: &[Piece],
        hashes: &mut std::collections::BTreeMap<Vec<String>, String>,
    ) -> Result<String, String> {
        let mut out = String::new();
        for p in pieces {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Hash(files) => {
                    if !hashes.contains_key(files) {
                        let h = ws.hash_files(files).await.map_err(|e| e.to_string())?;
                        hashes.insert(files.clone(), h);
                    }
                    out.push_str(&hashes[files]);
                }
            }
        }
        Ok(out)
    }

    /// Renders the keys and restores the best entry into the workspace
    /// (and the stage's cache folder). Never fails the stage: what went
    /// wrong is said in the document.
    pub async fn start(
        &self,
        ws: &dyn Workspace,
        stage: &StageName,
        user: &str,
        tmp: &Path,
    ) -> Started {
        let mut started = Started {
            doc: CacheDoc {
                key: String::new(),
                result: CacheResult::Miss,
                restored_key: None,
                restored_branch: None,
                restored_bytes: 0,
                saved_bytes: None,
                note: None,
            },
            save: false,
            tmp: tmp.join(format!("{stage}.tar")),
        };
        let mut hashes = std::collections::BTreeMap::new();
        let key = match self.render(ws, &self.key, &mut hashes).await {
            Ok(k) => k,
            Err(e) => {
                started.doc.note = Some(format!("no cache: the key cannot be made: {e}"));
                return started;
            }
        };
        started.doc.key = key.clone();
        let mut restore_keys = Vec::new();
        for k in &self.restore_keys {
            match self.render(ws, k, &mut hashes).await {
                Ok(k) => restore_keys.push(k),
                Err(e) => started.doc.note = Some(format!("a restore key cannot be made: {e}")),
            }
        }
        started.save = self.scope.write;
        if let Err(e) = std::fs::create_dir_all(tmp) {
            started.doc.note = Some(format!("no cache: {e}"));
            started.save = false;
            return started;
        }
        match self
            .cache
            .restore(&self.scope, &key, &restore_keys, &started.tmp)
            .await
        {
            Ok(None) => {}
            Ok(Some((entry, result))) => {
                started.doc.result = result;
                started.doc.restored_bytes = entry.size;
                started.doc.restored_key = Some(entry.key.clone());
                started.doc.restored_branch = Some(entry.branch.clone());
                // Entries are never replaced: an exact hit is not saved again.
                if result == CacheResult::Hit && entry.branch == self.scope.branch {
                    started.save = false;
                }
                let staging = tmp.join(format!("{stage}.staging"));
                if let Err(e) = ws.restore_cache(stage, &started.tmp, &staging, user).await {
                    started.doc.result = CacheResult::Miss;
                    started.doc.note = Some(format!(
                        "the entry `{}` could not be restored: {e}",
                        entry.key
                    ));
                }
            }
            Err(e) => {
                started.doc.note = Some(format!(
                    "the cache at {} cannot be read: {e}",
                    self.cache.location()
                ))
            }
        }
        let _ = std::fs::remove_file(&started.tmp);
        started
    }

    /// After the stage: saves its paths under the key when it succeeded
    /// and the entry is new; returns the document.
    /// An entry holding a secret is not saved.
    pub async fn finish(
        &self,
        mut started: Started,
        ws: &dyn Workspace,
        stage: &StageName,
        succeeded: bool,
        secrets: Arc<SecretSet>,
    ) -> CacheDoc {
        let doc = &mut started.doc;
        if doc.key.is_empty() {
            return started.doc;
        }
        if !succeeded {
            doc.note
                .get_or_insert_with(|| "not saved: the stage did not succeed".into());
            return started.doc;
        }
        if !started.save {
            if !self.scope.write {
                doc.note.get_or_insert_with(|| {
                    "not saved: this run may read the cache, not write it".into()
                });
            }
            return started.doc;
        }
        // The size is checked before the entry is read for secrets: an
        // entry too large to keep is not read at all.
        let result = match ws.pack_cache(stage, &self.paths, &started.tmp).await {
            Err(e) => Err(format!("not saved: {e}")),
            Ok(size) if size > self.cache.policy.max_entry => Err(format!(
                "not saved: {} is more than the {} an entry may hold",
                human(size),
                human(self.cache.policy.max_entry)
            )),
            Ok(size) => {
                let tar = started.tmp.clone();
                let leaks = tokio::task::spawn_blocking(move || {
                    crate::stage::file_leaks(&tar, &secrets).unwrap_or(true)
                })
                .await
                .unwrap_or(true);
                if leaks {
                    Err("not saved: one of its files holds a secret".into())
                } else {
                    match self.cache.save(&self.scope, &doc.key, &started.tmp).await {
                        Ok(Saved::Stored { .. }) => Ok(size),
                        Ok(Saved::Exists) => Err(
                            "not saved: an entry with this key exists (entries are never replaced)"
                                .into(),
                        ),
                        Err(e) => Err(format!("not saved to {}: {e}", self.cache.location())),
                    }
                }
            }
        };
        match result {
            Ok(size) => doc.saved_bytes = Some(size),
            Err(note) => doc.note = Some(note),
        }
        let _ = std::fs::remove_file(&started.tmp);
        started.doc
    }
}

/// What a stage's cache did, in one line (the log, the CLI).
pub fn describe(doc: &CacheDoc) -> String {
    let mut out = match (doc.result, &doc.restored_key) {
        (CacheResult::Miss, _) => format!("miss for `{}`", doc.key),
        (r, Some(from)) => {
            let on = doc
                .restored_branch
                .as_ref()
                .map(|b| format!(" of branch {b}"))
                .unwrap_or_default();
            format!(
                "{} for `{}`: restored {} from `{from}`{on}",
                r.as_str(),
                doc.key,
                human(doc.restored_bytes)
            )
        }
        (r, None) => format!("{} for `{}`", r.as_str(), doc.key),
    };
    if let Some(n) = doc.saved_bytes {
        out.push_str(&format!("; saved {}", human(n)));
    }
    if let Some(note) = &doc.note {
        out.push_str("; ");
        out.push_str(note);
    }
    out
}

/// Bytes for people.
pub fn human(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} bytes"),
    }
}

#[cfg(test)]
mod tests;
