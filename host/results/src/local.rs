//! The local results folder: the layout of `docs/results-layout.md` on disk.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;

use sentinel_api::keys;
use sentinel_api::{RunDoc, RunId, RunSummary, SCHEMA_VERSION, StageDoc, StageName};
use sentinel_engine::ports::{LogBody, ResultsSink, StorageError};

use crate::index::{self, IndexStore};
use crate::zipdir::zip_dir;

/// A results folder.
#[derive(Debug, Clone)]
pub struct LocalSink {
    root: PathBuf,
}

fn err(context: impl Into<String>, e: std::io::Error) -> StorageError {
    StorageError::io(context, e)
}

fn joined(context: &str, e: tokio::task::JoinError) -> StorageError {
    StorageError::permanent(context.to_string(), e)
}

/// Writes `bytes` to `path` atomically.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{:?}",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Reads a document, checking its schema first.
fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, StorageError> {
    let what = path.display().to_string();
    match std::fs::read(path) {
        Ok(b) => sentinel_api::decode(&b, &what, &[u64::from(SCHEMA_VERSION)])
            .map(Some)
            .map_err(|e| StorageError::permanent(format!("read {what}"), e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(err(format!("read {what}"), e)),
    }
}

/// Runs a future that never waits (the local folder's index storage does
/// its small reads and writes directly) to its end on this thread.
fn finish<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::yield_now();
    }
}

/// The index's objects in the folder.
struct Folder<'a>(&'a LocalSink);

#[async_trait]
impl IndexStore for Folder<'_> {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        match std::fs::read(self.0.path(key)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(err(format!("read {key}"), e)),
        }
    }
    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), StorageError> {
        write_atomic(&self.0.path(key), &bytes).map_err(|e| err(format!("write {key}"), e))
    }
    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        match std::fs::remove_file(self.0.path(key)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(err(format!("remove {key}"), e))
            }
            _ => Ok(()),
        }
    }
}

impl LocalSink {
    /// A sink writing under `root` (created as needed).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    /// A file's bytes; `None` when it does not exist.
    async fn read_opt(&self, key: &str, what: &str) -> Result<Option<Vec<u8>>, StorageError> {
        match tokio::fs::read(self.path(key)).await {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(err(what, e)),
        }
    }

    /// Writes a JSON document at `key` (pretty, atomically).
    pub async fn put_json<T: Serialize + Sync>(
        &self,
        key: String,
        doc: &T,
    ) -> Result<(), StorageError> {
        let mut bytes =
            serde_json::to_vec_pretty(doc).map_err(|e| StorageError::permanent("encode", e))?;
        bytes.push(b'\n');
        self.put_bytes(key, bytes).await
    }

    /// Writes `bytes` at `key`, atomically.
    async fn put_bytes(&self, key: String, bytes: Vec<u8>) -> Result<(), StorageError> {
        let path = self.path(&key);
        tokio::task::spawn_blocking(move || write_atomic(&path, &bytes))
            .await
            .map_err(|e| joined(&key, e))?
            .map_err(|e| err(format!("write {key}"), e))
    }

    /// Changes the index under the folder's lock (several processes may
    /// share one results folder).
    async fn with_index(&self, change: index::Change) -> Result<(), StorageError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(this.path("runs")).map_err(|e| err("create runs/", e))?;
            let lock = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(this.path("runs/.index.lock"))
                .map_err(|e| err("index lock", e))?;
            lock.lock().map_err(|e| err("index lock", e))?;
            let folder = Folder(&this);
            let result = finish(index::apply(&folder, &change));
            let _ = lock.unlock();
            result
        })
        .await
        .map_err(|e| joined("index", e))?
    }
}

#[async_trait]
impl ResultsSink for LocalSink {
    async fn put_log(
        &self,
        run: &RunId,
        stage: &StageName,
        attempt: Option<u32>,
        log: &LogBody,
    ) -> Result<String, StorageError> {
        let key = keys::attempt_log(run, stage, attempt);
        let name = keys::log_name(stage, attempt);
        let file = match log {
            LogBody::File(f) => f,
            LogBody::Memory(bytes) => {
                self.put_bytes(key, bytes.clone()).await?;
                return Ok(name);
            }
        };
        let (src, dst) = (file.to_path_buf(), self.path(&key));
        tokio::task::spawn_blocking(move || {
            // A hard link publishes the finished log without copying it; a
            // copy when the results live on another file system.
            let dir = dst.parent().unwrap_or(Path::new("."));
            std::fs::create_dir_all(dir)?;
            let tmp = dir.join(format!(
                ".{}.link-{}",
                dst.file_name()
                    .map(|n| n.to_string_lossy())
                    .unwrap_or_default(),
                std::process::id()
            ));
            let _ = std::fs::remove_file(&tmp);
            match std::fs::hard_link(&src, &tmp) {
                Ok(()) => std::fs::rename(&tmp, &dst),
                Err(_) => {
                    let bytes = std::fs::read(&src)?;
                    write_atomic(&dst, &bytes)
                }
            }
        })
        .await
        .map_err(|e| joined(&key, e))?
        .map_err(|e| err(format!("write {key}"), e))?;
        Ok(name)
    }

    async fn put_artifacts(
        &self,
        run: &RunId,
        stage: &StageName,
        dir: &Path,
    ) -> Result<Option<String>, StorageError> {
        let key = keys::stage_artifacts(run, stage);
        let (src, dst) = (dir.to_path_buf(), self.path(&key));
        let n = tokio::task::spawn_blocking(move || -> std::io::Result<usize> {
            if !sentinel_engine::workspace::holds_files(&src) {
                return Ok(0);
            }
            std::fs::create_dir_all(dst.parent().unwrap_or(Path::new(".")))?;
            let tmp = dst.with_extension(format!("zip.tmp-{}", std::process::id()));
            let n = zip_dir(&src, &tmp)?;
            std::fs::rename(&tmp, &dst)?;
            Ok(n)
        })
        .await
        .map_err(|e| joined(&key, e))?
        .map_err(|e| err(format!("write {key}"), e))?;
        Ok((n > 0).then(|| format!("{stage}.zip")))
    }

    async fn put_stage(&self, doc: &StageDoc) -> Result<(), StorageError> {
        self.put_json(keys::stage_doc(&doc.run_id, &doc.name), doc)
            .await
    }

    async fn put_run(&self, doc: &RunDoc) -> Result<(), StorageError> {
        self.put_json(keys::run_doc(&doc.id), doc).await
    }

    async fn update_index(&self, summary: &RunSummary) -> Result<(), StorageError> {
        self.with_index(index::Change::Upsert(summary.clone()))
            .await
    }

    async fn remove_from_index(&self, run: &RunId) -> Result<(), StorageError> {
        self.with_index(index::Change::Remove(run.clone())).await
    }

    async fn remove_many_from_index(&self, runs: &[RunId]) -> Result<(), StorageError> {
        self.with_index(index::Change::RemoveMany(runs.to_vec()))
            .await
    }

    async fn remove_run(&self, run: &RunId) -> Result<u64, StorageError> {
        let dir = self.path(&keys::run_dir(run));
        tokio::task::spawn_blocking(move || {
            let files = match std::fs::read_dir(&dir) {
                Ok(d) => d.count() as u64,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
                Err(e) => return Err(e),
            };
            std::fs::remove_dir_all(&dir).map(|()| files)
        })
        .await
        .map_err(|e| joined("remove run", e))?
        .map_err(|e| err(format!("remove run {run}"), e))
    }

    async fn get_run(&self, run: &RunId) -> Result<Option<RunDoc>, StorageError> {
        read_json(&self.path(&keys::run_doc(run)))
    }

    async fn get_stage(
        &self,
        run: &RunId,
        stage: &StageName,
    ) -> Result<Option<StageDoc>, StorageError> {
        read_json(&self.path(&keys::stage_doc(run, stage)))
    }

    async fn get_log(
        &self,
        run: &RunId,
        stage: &StageName,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        self.read_opt(&keys::stage_log(run, stage), "read log")
            .await
    }

    async fn get_artifacts(
        &self,
        run: &RunId,
        stage: &StageName,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        self.read_opt(&keys::stage_artifacts(run, stage), "read artifacts")
            .await
    }

    async fn list_index(&self, limit: usize) -> Result<Vec<RunSummary>, StorageError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || finish(index::list(&Folder(&this), limit)))
            .await
            .map_err(|e| joined("index", e))?
    }

    fn location(&self) -> String {
        self.root.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use sentinel_api::{RunStatus, TriggerKind};
    use std::collections::BTreeMap;

    fn summary(i: u32) -> RunSummary {
        let id = format!("01JDX3K6Q2T8W9V5M4N3P{:05}", i);
        RunSummary {
            id: id.parse().unwrap(),
            pipeline: "p".into(),
            status: RunStatus::Succeeded,
            created: Utc::now(),
            duration_ms: Some(1),
            git: None,
            stages: BTreeMap::new(),
        }
    }

    #[tokio::test]
    async fn index_is_chunked_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let sink = LocalSink::new(dir.path());
        for i in 0..450 {
            sink.update_index(&summary(i)).await.unwrap();
        }
        // Updating a run replaces it instead of adding it twice.
        let mut again = summary(7);
        again.status = RunStatus::Failed;
        sink.update_index(&again).await.unwrap();
        let all = sink.list_index(usize::MAX).await.unwrap();
        assert_eq!(all.len(), 450);
        assert_eq!(all[0].id, summary(449).id);
        assert_eq!(
            all.iter().find(|r| r.id == again.id).unwrap().status,
            RunStatus::Failed
        );
        let chunks = std::fs::read_dir(dir.path().join("runs/index"))
            .unwrap()
            .count();
        assert!(chunks >= 3, "{chunks} chunks");
        sink.remove_from_index(&summary(449).id).await.unwrap();
        assert_eq!(sink.list_index(1).await.unwrap()[0].id, summary(448).id);
        let _ = TriggerKind::Local;

        // Many at once: the head, whole chunks and parts of chunks.
        let gone: Vec<RunId> = (0..450)
            .filter(|i| *i < 220 || i % 7 == 0 || *i > 440)
            .map(|i| summary(i).id)
            .collect();
        sink.remove_many_from_index(&gone).await.unwrap();
        let left: Vec<RunId> = sink
            .list_index(usize::MAX)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        let want: Vec<RunId> = (0..450)
            .rev()
            .map(|i| summary(i).id)
            .filter(|id| !gone.contains(id))
            .collect();
        assert_eq!(left, want);
        let chunks_after = std::fs::read_dir(dir.path().join("runs/index"))
            .unwrap()
            .count();
        assert!(
            chunks_after < chunks,
            "emptied chunks are deleted: {chunks_after}"
        );
        // And the index still takes new runs.
        sink.update_index(&summary(500)).await.unwrap();
        assert_eq!(sink.list_index(1).await.unwrap()[0].id, summary(500).id);
    }

    #[tokio::test]
    async fn artifacts_zip_only_when_there_are_files() {
        let dir = tempfile::tempdir().unwrap();
        let sink = LocalSink::new(dir.path().join("results"));
        let art = dir.path().join("art");
        std::fs::create_dir_all(art.join("sub")).unwrap();
        let run: RunId = "01JDX3K6Q2T8W9V5M4N3P2R1S0".parse().unwrap();
        let stage: StageName = "build".parse().unwrap();
        assert_eq!(sink.put_artifacts(&run, &stage, &art).await.unwrap(), None);
        std::fs::write(art.join("sub/app.bin"), b"binary").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", art.join("passwd")).unwrap();
        assert_eq!(
            sink.put_artifacts(&run, &stage, &art)
                .await
                .unwrap()
                .as_deref(),
            Some("build.zip")
        );
        let zip = std::fs::File::open(
            dir.path()
                .join("results/run/01JDX3K6Q2T8W9V5M4N3P2R1S0/build.zip"),
        )
        .unwrap();
        let mut archive = zip::ZipArchive::new(zip).unwrap();
        let names: Vec<String> = (0..archive.len())
            .map(|i| archive.by_index(i).unwrap().name().unwrap().to_string())
            .collect();
        assert_eq!(
            names,
            vec!["sub/", "sub/app.bin"],
            "the symlink is not followed"
        );
    }
}
