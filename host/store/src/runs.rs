//! Reading runs in bulk: pages of the runs list (as stored, not decoded),
//! the newest run of a pipeline, and the runs counted by status (counted
//! once, then kept as runs are written).

use serde::Deserialize;

use sentinel_api::{RunDoc, RunId};
use sentinel_engine::ports::StorageError;

use crate::{SledStore, VALUE_VERSION, decode, err};

/// A run's status, read from its stored document.
#[derive(Deserialize)]
struct RunStatusOnly {
    status: sentinel_api::RunStatus,
}

/// The document inside a stored value, as JSON bytes: cut out of the
/// envelope `encode` writes (`{"v":N,"doc":…}`), else decoded and encoded
/// again.
fn doc_bytes(bytes: &[u8]) -> Result<Vec<u8>, StorageError> {
    static HEAD: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| format!("{{\"v\":{VALUE_VERSION},\"doc\":"));
    if let Some(doc) = bytes
        .strip_prefix(HEAD.as_bytes())
        .and_then(|rest| rest.strip_suffix(b"}"))
    {
        return Ok(doc.to_vec());
    }
    let doc: serde_json::Value = decode(bytes)?;
    serde_json::to_vec(&doc).map_err(|e| err("encode", e))
}

impl SledStore {
    /// How many runs there are in each status: counted from the runs
    /// once, then kept as runs are written.
    pub fn run_counts(&self) -> Result<std::collections::BTreeMap<String, u64>, StorageError> {
        let mut kept = self
            .run_counts
            .lock()
            .map_err(|_| err("count runs", "poisoned"))?;
        if let Some(c) = kept.as_ref() {
            return Ok(c.clone());
        }
        let mut counts = std::collections::BTreeMap::new();
        for kv in self.runs.iter() {
            let (_, v) = kv.map_err(|e| err("runs", e))?;
            let s: RunStatusOnly = decode(&v)?;
            *counts.entry(s.status.as_str().to_string()).or_insert(0) += 1;
        }
        *kept = Some(counts.clone());
        Ok(counts)
    }

    /// Moves a run from its old status (`old`: its value before) to `new`
    /// in the kept counts, once they are kept.
    pub(crate) fn counted(&self, old: Option<&[u8]>, new: sentinel_api::RunStatus) {
        let Ok(mut kept) = self.run_counts.lock() else {
            return;
        };
        let Some(counts) = kept.as_mut() else { return };
        if let Some(old) = old.and_then(|b| decode::<RunStatusOnly>(b).ok())
            && let Some(n) = counts.get_mut(old.status.as_str())
        {
            *n = n.saturating_sub(1);
        }
        *counts.entry(new.as_str().to_string()).or_insert(0) += 1;
    }

    /// The stored runs older than `before` (all when `None`), oldest first
    /// (`.rev()` for newest first).
    pub(crate) fn runs_before(&self, before: Option<&RunId>) -> sled::Iter {
        match before {
            Some(id) => self.runs.range(..id.as_str().as_bytes()),
            None => self.runs.iter(),
        }
    }

    /// Takes a removed run (`old`: its value) out of the kept counts.
    pub(crate) fn uncounted(&self, old: &[u8]) {
        let Ok(mut kept) = self.run_counts.lock() else {
            return;
        };
        if let (Some(counts), Ok(old)) = (kept.as_mut(), decode::<RunStatusOnly>(old))
            && let Some(n) = counts.get_mut(old.status.as_str())
        {
            *n = n.saturating_sub(1);
        }
    }

    /// Marks a run to be kept whatever the retention policy says, or
    /// unmarks it.
    pub async fn set_keep(&self, run: &RunId, keep: bool) -> Result<(), StorageError> {
        let key = run.as_str().as_bytes();
        if keep {
            self.keep.insert(key, &[]).map_err(|e| err("keep run", e))?;
        } else {
            self.keep.remove(key).map_err(|e| err("keep run", e))?;
        }
        self.flush().await
    }

    /// The runs marked to be kept.
    pub fn kept_runs(&self) -> Result<std::collections::BTreeSet<RunId>, StorageError> {
        self.keep
            .iter()
            .keys()
            .filter_map(|k| {
                k.map_err(|e| err("kept runs", e))
                    .map(|k| String::from_utf8_lossy(&k).parse().ok())
                    .transpose()
            })
            .collect()
    }

    /// Runs retention never removes: those marked to be kept, and for
    /// each current deployment the run that deployed it, the run it was
    /// promoted from, and the run that run started from (a deploy's build).
    pub async fn protected_runs(&self) -> Result<std::collections::BTreeSet<RunId>, StorageError> {
        use sentinel_api::DeploySource;
        use sentinel_engine::ports::Store as _;
        let mut set = self.kept_runs()?;
        for d in self.current(None, None)? {
            let from = match &d.source {
                DeploySource::Promotion { from_run, .. } => Some(from_run.clone()),
                DeploySource::Pipeline { run, .. } => run.clone(),
                _ => None,
            };
            for run in d.run.iter().chain(from.iter()) {
                if let Some(doc) = self.get_run(run).await?
                    && let Some(f) = doc.from_run
                {
                    set.insert(f);
                }
                set.insert(run.clone());
            }
        }
        Ok(set)
    }

    /// A page of runs (newest first, older than `before`) as their stored
    /// JSON documents, not decoded: the runs list serves them as they are.
    pub fn runs_page_raw(
        &self,
        before: Option<&RunId>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StorageError> {
        let iter = self.runs_before(before);
        iter.rev()
            .take(limit)
            .map(|kv| {
                let (k, v) = kv.map_err(|e| err("list runs", e))?;
                Ok((String::from_utf8_lossy(&k).into_owned(), doc_bytes(&v)?))
            })
            .collect()
    }

    /// [`SledStore::runs_page_raw`] of the runs of pipeline `name` only,
    /// looking through at most `scan` runs (newest first).
    pub fn pipeline_page_raw(
        &self,
        name: &str,
        before: Option<&RunId>,
        limit: usize,
        scan: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StorageError> {
        #[derive(serde::Deserialize)]
        struct Named<'a> {
            #[serde(borrow)]
            pipeline: std::borrow::Cow<'a, str>,
        }
        let iter = self.runs_before(before);
        let mut out = Vec::new();
        for kv in iter.rev().take(scan) {
            let (k, v) = kv.map_err(|e| err("list runs", e))?;
            let doc = doc_bytes(&v)?;
            let named: Named = serde_json::from_slice(&doc).map_err(|e| {
                err(
                    "list runs",
                    format!("run {}: {e}", String::from_utf8_lossy(&k)),
                )
            })?;
            if named.pipeline == name {
                out.push((String::from_utf8_lossy(&k).into_owned(), doc));
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// The newest run of the pipeline `name` (looking at the newest `scan` runs).
    pub fn last_run_of(&self, name: &str, scan: usize) -> Result<Option<RunDoc>, StorageError> {
        for kv in self.runs.iter().rev().take(scan) {
            let (_, v) = kv.map_err(|e| err("runs", e))?;
            let run: RunDoc = decode(&v)?;
            if run.pipeline == name {
                return Ok(Some(run));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use sentinel_api::RunStatus;
    use sentinel_engine::ports::Store;

    use super::*;

    fn run(id: &str, status: RunStatus) -> RunDoc {
        sentinel_engine::fake::run_doc(&id.parse().unwrap(), status)
    }

    #[tokio::test]
    async fn counts_are_kept_as_runs_change_and_pages_are_the_stored_documents() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::try_open(dir.path()).unwrap();
        let ids = [
            "01JDX3K6Q2T8W9V5M4N3P2R1S0",
            "01JDX3K6Q2T8W9V5M4N3P2R1S1",
            "01JDX3K6Q2T8W9V5M4N3P2R1S2",
        ];
        store
            .put_run(&run(ids[0], RunStatus::Succeeded), false)
            .await
            .unwrap();
        // Counted once from the runs…
        let first = store.run_counts().unwrap();
        assert_eq!(first.get("succeeded"), Some(&1));
        // …then kept as runs are written and change status.
        store
            .put_run(&run(ids[1], RunStatus::Running), false)
            .await
            .unwrap();
        store
            .put_run(&run(ids[2], RunStatus::Running), false)
            .await
            .unwrap();
        let failed = run(ids[2], RunStatus::Failed);
        store.put_run(&failed, false).await.unwrap();
        let kept = store.run_counts().unwrap();
        *store.run_counts.lock().unwrap() = None;
        let walked = store.run_counts().unwrap();
        assert_eq!(kept, walked);
        assert_eq!(walked.get("running"), Some(&1));
        assert_eq!(walked.get("failed"), Some(&1));
        assert_eq!(walked.get("succeeded"), Some(&1));

        let page = store.runs_page_raw(None, 2).unwrap();
        let got: Vec<&str> = page.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(got, [ids[2], ids[1]], "newest first");
        let doc: RunDoc = serde_json::from_slice(&page[0].1).unwrap();
        assert_eq!(doc, failed);
        let after = store
            .runs_page_raw(Some(&ids[1].parse().unwrap()), 10)
            .unwrap();
        assert_eq!(after.len(), 1);
        assert_eq!(after[0].0, ids[0]);
    }
}
