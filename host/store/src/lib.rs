//! Durable run state in sled, behind the engine's [`Store`] interface.
//!
//! One process opens a database at a time: [`SledStore::try_open`] takes an
//! exclusive lock without waiting and says [`OpenError::Locked`] when another
//! process holds it. Values are JSON in a versioned envelope
//! (`{"v":1,"doc":…}`), so later versions can read what earlier ones wrote.
//! Trees: `runs` (by run id, which sorts by time), `stages` (`run/stage`),
//! `events` (`run` + sequence number), `leases` (by run id), `outbox`
//! (results waiting for their sink, by sequence number), `queue` (accepted
//! runs by sequence number), `queued` (run id → sequence number),
//! `deliveries` (a trigger's idempotency key → its run id), `requests`
//! (every queued run's entry, kept after it ran, for re-runs), `tokens` (API
//! tokens by id, hashed: see [`tokens`]), `secrets` (run secrets,
//! encrypted: see [`secrets`]), `open` (the runs not final yet, so recovery
//! finds every one however old), `kept` (stages' outputs kept for re-runs,
//! sealed like secrets: see [`kept`]), `parked` (results the sink refused
//! for good: see [`outbox`]), `meta` (settings of the state folder, such
//! as the bucket its runs are mirrored to) and the deployments' trees (see
//! [`deploys`]).

pub mod deploys;
mod gates;
pub mod ignored;
pub mod kept;
pub mod outbox;
mod queue;
mod runs;
pub mod schedules;
pub mod secrets;
pub mod statuses;
pub mod tokens;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use sentinel_api::{RunDoc, RunId, StageDoc};
use sentinel_engine::lease::Lease;
use sentinel_engine::ports::{Event, KeptOutputs, StorageError, Store};

/// The version of the stored values' envelope.
pub const VALUE_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    v: u32,
    doc: T,
}

/// Why the database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("another sentinel process is using {0}")]
    Locked(PathBuf),
    #[error("cannot open the state database {path}: {message}")]
    Other { path: PathBuf, message: String },
}

/// The sled-backed store.
#[derive(Debug, Clone)]
pub struct SledStore {
    db: sled::Db,
    runs: sled::Tree,
    stages: sled::Tree,
    events: sled::Tree,
    leases: sled::Tree,
    outbox: sled::Tree,
    queue: sled::Tree,
    queued: sled::Tree,
    deliveries: sled::Tree,
    requests: sled::Tree,
    tokens: sled::Tree,
    secrets: sled::Tree,
    open: sled::Tree,
    kept: sled::Tree,
    parked: sled::Tree,
    meta: sled::Tree,
    deployments: sled::Tree,
    deploy_marks: sled::Tree,
    deploy_latest: sled::Tree,
    deploy_current: sled::Tree,
    deploy_pending: sled::Tree,
    schedules: sled::Tree,
    ignored: sled::Tree,
    statuses: sled::Tree,
    /// Runs marked to be kept whatever the retention policy says.
    keep: sled::Tree,
    /// Items in `outbox` and `parked`, counted (sled's `len` walks the tree).
    outbox_len: Arc<AtomicUsize>,
    parked_len: Arc<AtomicUsize>,
    /// Runs by status, counted once and then kept as runs are written
    /// (`/metrics` reads it without walking the runs).
    run_counts: Arc<std::sync::Mutex<Option<std::collections::BTreeMap<String, u64>>>>,
    /// What seals kept outputs: the server's secrets key, else the state
    /// folder's own (`seal.key`).
    seal: Arc<std::sync::RwLock<Arc<secrets::SecretsKey>>>,
    _lock: std::sync::Arc<std::fs::File>,
}

fn err(context: &str, e: impl std::fmt::Display) -> StorageError {
    StorageError::permanent(context.to_string(), e.to_string())
}

/// A failed transaction, aborted with a message or failed in storage.
fn transaction_err(context: &str, e: sled::transaction::TransactionError<String>) -> StorageError {
    match e {
        sled::transaction::TransactionError::Abort(m) => err(context, m),
        sled::transaction::TransactionError::Storage(e) => err(context, e),
    }
}

fn encode<T: Serialize>(doc: &T) -> Result<Vec<u8>, StorageError> {
    serde_json::to_vec(&Envelope {
        v: VALUE_VERSION,
        doc,
    })
    .map_err(|e| err("encode", e))
}

/// The value at `key` of `tree`, decoded; `what` names it in errors.
fn get_decoded<T: DeserializeOwned>(
    tree: &sled::Tree,
    key: impl AsRef<[u8]>,
    what: &str,
) -> Result<Option<T>, StorageError> {
    tree.get(key)
        .map_err(|e| err(what, e))?
        .map(|v| decode(&v))
        .transpose()
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StorageError> {
    #[derive(Deserialize)]
    struct Version {
        v: u32,
    }
    let version: Version = serde_json::from_slice(bytes).map_err(|e| err("decode", e))?;
    if version.v != VALUE_VERSION {
        return Err(err(
            "decode",
            format!(
                "stored value has version {}; this Sentinel reads {VALUE_VERSION}",
                version.v
            ),
        ));
    }
    let env: Envelope<T> = serde_json::from_slice(bytes).map_err(|e| err("decode", e))?;
    Ok(env.doc)
}

impl SledStore {
    /// Opens (creating) the database in `dir`, without waiting for a lock.
    pub fn try_open(dir: &Path) -> Result<Self, OpenError> {
        let other = |e: &dyn std::fmt::Display| OpenError::Other {
            path: dir.to_path_buf(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(|e| other(&e))?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("sentinel.lock"))
            .map_err(|e| other(&e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(OpenError::Locked(dir.to_path_buf()));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(other(&e)),
        }
        // `sentinel.lock` is ours, so no other process has the database;
        // sled's own lock can still be held for a moment by a handle of
        // this process that was just dropped (its flusher thread ends
        // after the drop): wait for it rather than fail.
        let since = std::time::Instant::now();
        let db = loop {
            match sled::Config::new()
                .path(dir.join("db"))
                .flush_every_ms(Some(200))
                .open()
            {
                Err(sled::Error::Io(e))
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        && since.elapsed() < std::time::Duration::from_secs(5) =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                r => break r.map_err(|e| other(&e))?,
            }
        };
        let tree = |name: &str| db.open_tree(name).map_err(|e| other(&e));
        let seal = secrets::SecretsKey::of_folder(dir).map_err(|e| other(&e))?;
        let outbox = tree("outbox")?;
        let parked = tree("parked")?;
        let store = Self {
            outbox_len: Arc::new(AtomicUsize::new(outbox.len())),
            run_counts: Arc::default(),
            parked_len: Arc::new(AtomicUsize::new(parked.len())),
            outbox,
            parked,
            open: tree("open")?,
            kept: tree("kept")?,
            meta: tree("meta")?,
            deployments: tree("deployments")?,
            deploy_marks: tree("deploy_marks")?,
            deploy_latest: tree("deploy_latest")?,
            deploy_current: tree("deploy_current")?,
            deploy_pending: tree("deploy_pending")?,
            schedules: tree("schedules")?,
            ignored: tree("ignored")?,
            statuses: tree("statuses")?,
            keep: tree("keep")?,
            seal: Arc::new(std::sync::RwLock::new(Arc::new(seal))),
            runs: tree("runs")?,
            stages: tree("stages")?,
            events: tree("events")?,
            leases: tree("leases")?,
            queue: tree("queue")?,
            queued: tree("queued")?,
            deliveries: tree("deliveries")?,
            requests: tree("requests")?,
            tokens: tree("tokens")?,
            secrets: tree("secrets")?,
            db,
            _lock: std::sync::Arc::new(lock),
        };
        store.index_open_runs().map_err(|e| other(&e))?;
        Ok(store)
    }

    /// Builds the `open` tree once for a database written before it existed.
    fn index_open_runs(&self) -> Result<(), StorageError> {
        const BUILT: &[u8] = b"\0built";
        if self
            .open
            .contains_key(BUILT)
            .map_err(|e| err("open runs", e))?
        {
            return Ok(());
        }
        for kv in self.runs.iter() {
            let (k, v) = kv.map_err(|e| err("runs", e))?;
            let run: RunDoc = decode(&v)?;
            if !run.status.is_final() {
                self.open.insert(k, &[]).map_err(|e| err("open runs", e))?;
            }
        }
        self.open
            .insert(BUILT, &[])
            .map_err(|e| err("open runs", e))?;
        Ok(())
    }

    /// Remembers a setting of the state folder (the bucket runs mirror to).
    pub fn remember(&self, key: &str, value: &serde_json::Value) -> Result<(), StorageError> {
        self.meta
            .insert(key.as_bytes(), encode(value)?)
            .map_err(|e| err("remember", e))?;
        Ok(())
    }

    /// A setting [`SledStore::remember`] kept.
    pub fn recall(&self, key: &str) -> Result<Option<serde_json::Value>, StorageError> {
        get_decoded(&self.meta, key.as_bytes(), "recall")
    }

    /// Seals kept outputs with `key` from now on (the server's secrets key).
    pub fn set_sealing_key(&self, key: Arc<secrets::SecretsKey>) {
        if let Ok(mut k) = self.seal.write() {
            *k = key;
        }
    }

    fn sealing_key(&self) -> Result<Arc<secrets::SecretsKey>, StorageError> {
        self.seal
            .read()
            .map(|k| k.clone())
            .map_err(|_| err("sealing key", "poisoned"))
    }

    pub async fn flush(&self) -> Result<(), StorageError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| err("flush", e))?
            .map_err(|e| err("flush", e))?;
        Ok(())
    }

    fn stage_key(run: &RunId, stage: &str) -> Vec<u8> {
        format!("{run}/{stage}").into_bytes()
    }
}

#[async_trait]
impl Store for SledStore {
    async fn put_run(&self, run: &RunDoc, durable: bool) -> Result<(), StorageError> {
        use sled::Transactional;
        let value = encode(run)?;
        let key = run.id.as_str().as_bytes();
        let open = !run.status.is_final();
        let old = std::cell::RefCell::new(None);
        (&self.runs, &self.open)
            .transaction(|(runs, opened)| {
                *old.borrow_mut() = runs.insert(key, value.as_slice())?;
                if open {
                    opened.insert(key, &[])?;
                } else {
                    opened.remove(key)?;
                }
                Ok::<(), sled::transaction::ConflictableTransactionError>(())
            })
            .map_err(|e| err("put run", e))?;
        self.counted(old.into_inner().as_deref(), run.status);
        if durable {
            self.flush().await?;
        }
        Ok(())
    }

    async fn end_run(&self, run: &RunDoc, event: &Event) -> Result<(), StorageError> {
        use sled::Transactional;
        let value = encode(run)?;
        let event = encode(event)?;
        let key = run.id.as_str().as_bytes();
        let seq = self.db.generate_id().map_err(|e| err("event id", e))?;
        let mut event_key = format!("{}/", run.id).into_bytes();
        event_key.extend_from_slice(&seq.to_be_bytes());
        let old = std::cell::RefCell::new(None);
        (&self.runs, &self.open, &self.events)
            .transaction(|(runs, opened, events)| {
                *old.borrow_mut() = runs.insert(key, value.as_slice())?;
                opened.remove(key)?;
                events.insert(event_key.as_slice(), event.as_slice())?;
                Ok::<(), sled::transaction::ConflictableTransactionError>(())
            })
            .map_err(|e| err("end run", e))?;
        self.counted(old.into_inner().as_deref(), run.status);
        self.flush().await
    }

    async fn put_stage(&self, stage: &StageDoc) -> Result<(), StorageError> {
        self.stages
            .insert(
                Self::stage_key(&stage.run_id, stage.name.as_str()),
                encode(stage)?,
            )
            .map_err(|e| err("put stage", e))?;
        Ok(())
    }

    async fn append_event(&self, run: &RunId, event: &Event) -> Result<(), StorageError> {
        let seq = self.db.generate_id().map_err(|e| err("event id", e))?;
        let mut key = format!("{run}/").into_bytes();
        key.extend_from_slice(&seq.to_be_bytes());
        self.events
            .insert(key, encode(event)?)
            .map_err(|e| err("append event", e))?;
        Ok(())
    }

    async fn get_run(&self, id: &RunId) -> Result<Option<RunDoc>, StorageError> {
        get_decoded(&self.runs, id.as_str(), "get run")
    }

    async fn get_stages(&self, id: &RunId) -> Result<Vec<StageDoc>, StorageError> {
        self.stages
            .scan_prefix(format!("{id}/"))
            .map(|kv| {
                kv.map_err(|e| err("get stages", e))
                    .and_then(|(_, v)| decode(&v))
            })
            .collect()
    }

    async fn get_events(&self, id: &RunId) -> Result<Vec<Event>, StorageError> {
        self.events
            .scan_prefix(format!("{id}/"))
            .map(|kv| {
                kv.map_err(|e| err("get events", e))
                    .and_then(|(_, v)| decode(&v))
            })
            .collect()
    }

    async fn list_runs(&self, limit: usize) -> Result<Vec<RunDoc>, StorageError> {
        self.list_runs_before(None, limit).await
    }

    async fn list_runs_before(
        &self,
        before: Option<&RunId>,
        limit: usize,
    ) -> Result<Vec<RunDoc>, StorageError> {
        let iter = self.runs_before(before);
        iter.rev()
            .take(limit)
            .map(|kv| {
                kv.map_err(|e| err("list runs", e))
                    .and_then(|(_, v)| decode(&v))
            })
            .collect()
    }

    async fn delete_run(&self, id: &RunId) -> Result<(), StorageError> {
        let key = id.as_str().as_bytes();
        let prefix = format!("{id}/");
        for tree in [&self.stages, &self.events, &self.kept] {
            for k in tree.scan_prefix(&prefix).keys() {
                tree.remove(k.map_err(|e| err("delete run", e))?)
                    .map_err(|e| err("delete run", e))?;
            }
        }
        for tree in [&self.open, &self.requests, &self.leases, &self.keep] {
            tree.remove(key).map_err(|e| err("delete run", e))?;
        }
        // The document last: a run half forgotten is still listed, and
        // pruned again.
        if let Some(old) = self.runs.remove(key).map_err(|e| err("delete run", e))? {
            self.uncounted(&old);
        }
        // Not flushed here (the next flush takes it): a run whose removal
        // is lost to a crash is listed again, and removed again.
        Ok(())
    }

    async fn open_runs(&self) -> Result<Vec<RunDoc>, StorageError> {
        let mut out = Vec::new();
        for kv in self.open.iter() {
            let (k, _) = kv.map_err(|e| err("open runs", e))?;
            if k.first() == Some(&0) {
                continue;
            }
            if let Some(run) = get_decoded::<RunDoc>(&self.runs, &k, "get run")? {
                out.push(run);
            }
        }
        Ok(out)
    }

    async fn keep_outputs(
        &self,
        run: &RunId,
        stage: &sentinel_api::StageName,
        kept: &KeptOutputs,
    ) -> Result<(), StorageError> {
        kept::put(self, run, stage, kept)
    }

    async fn kept_outputs(
        &self,
        run: &RunId,
        stage: &sentinel_api::StageName,
    ) -> Result<Option<KeptOutputs>, StorageError> {
        kept::get(self, run, stage)
    }

    async fn put_lease(&self, lease: &Lease) -> Result<(), StorageError> {
        self.leases
            .insert(lease.run_id.as_str(), encode(lease)?)
            .map_err(|e| err("put lease", e))?;
        self.flush().await
    }

    async fn remove_lease(&self, run: &RunId) -> Result<(), StorageError> {
        self.leases
            .remove(run.as_str())
            .map_err(|e| err("remove lease", e))?;
        Ok(())
    }

    async fn leases(&self) -> Result<Vec<Lease>, StorageError> {
        self.leases
            .iter()
            .map(|kv| {
                kv.map_err(|e| err("leases", e))
                    .and_then(|(_, v)| decode(&v))
            })
            .collect()
    }
}

/// Every file under `dir`, for tests that look for a value in clear.
#[cfg(test)]
pub(crate) fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use sentinel_api::RunStatus;

    fn run(id: &str) -> RunDoc {
        sentinel_engine::fake::run_doc(&id.parse().unwrap(), RunStatus::Running)
    }

    #[tokio::test]
    async fn round_trip_and_exclusive_lock() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::try_open(dir.path()).unwrap();
        assert!(matches!(
            SledStore::try_open(dir.path()),
            Err(OpenError::Locked(_))
        ));
        let a = run("01JDX3K6Q2T8W9V5M4N3P2R1S0");
        let b = run("01JDX3K6Q2T8W9V5M4N3P2R1S1");
        store.put_run(&a, true).await.unwrap();
        store.put_run(&b, false).await.unwrap();
        let listed = store.list_runs(10).await.unwrap();
        assert_eq!(
            listed.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
            vec![b.id.clone(), a.id.clone()]
        );
        store
            .put_lease(&Lease {
                run_id: a.id.clone(),
                owner: sentinel_engine::lease::Owner::current(),
                heartbeat: Utc::now(),
            })
            .await
            .unwrap();
        assert_eq!(store.leases().await.unwrap().len(), 1);
        store.remove_lease(&a.id).await.unwrap();
        assert!(store.leases().await.unwrap().is_empty());
        drop(store);
        let reopened = SledStore::try_open(dir.path()).unwrap();
        assert_eq!(reopened.get_run(&a.id).await.unwrap().unwrap().id, a.id);
    }

    #[tokio::test]
    async fn every_open_run_is_found_however_old() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::try_open(dir.path()).unwrap();
            store
                .put_run(&run("01JDX3K6Q2T8W9V5M4N3P00000"), false)
                .await
                .unwrap();
            for i in 1..1200 {
                let mut r = run(&format!("01JDX3K6Q2T8W9V5M4N3P{i:05}"));
                r.status = RunStatus::Succeeded;
                store.put_run(&r, false).await.unwrap();
            }
            let open = store.open_runs().await.unwrap();
            assert_eq!(open.len(), 1);
            assert_eq!(open[0].id.as_str(), "01JDX3K6Q2T8W9V5M4N3P00000");
            // A database written before the `open` tree existed is indexed once.
            store.open.clear().unwrap();
            store.flush().await.unwrap();
        }
        let store = SledStore::try_open(dir.path()).unwrap();
        assert_eq!(store.open_runs().await.unwrap().len(), 1);
        let mut done = run("01JDX3K6Q2T8W9V5M4N3P00000");
        done.status = RunStatus::Interrupted;
        store.put_run(&done, true).await.unwrap();
        assert!(store.open_runs().await.unwrap().is_empty());
    }

    #[test]
    fn refuses_unknown_versions() {
        let e = decode::<u32>(br#"{"v":2,"doc":1}"#).unwrap_err();
        assert!(e.to_string().contains("version 2"), "{e}");
        assert_eq!(decode::<u32>(br#"{"v":1,"doc":7}"#).unwrap(), 7);
    }
}
