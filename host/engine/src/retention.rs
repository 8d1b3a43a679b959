//! Retention: which ended runs a policy lets go (older than an age and/or
//! past the last N of their pipeline and branch; never a run that has not
//! ended, one marked `keep`, or one a current deployment came from), and
//! removing everything of them — the index entry first (so listings stay
//! consistent), then the published files, the kept workspace files, and the
//! store's entries last (a run half removed is still listed, and removed
//! again by the next pass).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt as _;
use sentinel_api::{RunDoc, RunId};

use crate::ports::{ResultsSink, StorageError, Store};

/// What a server (or `sentinel runs prune`) keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    /// Runs created more recently than this are kept.
    pub max_age: Option<Duration>,
    /// The newest this many runs of each pipeline and branch are kept.
    pub keep_last: Option<usize>,
}

impl Policy {
    /// True when the policy lets anything go.
    pub fn is_set(&self) -> bool {
        self.max_age.is_some() || self.keep_last.is_some()
    }

    /// Whether a run goes: outside every rule that is set. `rank` is its
    /// place among its pipeline and branch's runs, newest first (1-based).
    fn lets_go(&self, created: DateTime<Utc>, rank: usize, now: DateTime<Utc>) -> bool {
        let old = self
            .max_age
            .is_none_or(|age| (now - created).to_std().is_ok_and(|a| a > age));
        let beyond = self.keep_last.is_none_or(|n| rank > n);
        self.is_set() && old && beyond
    }
}

/// How many runs are read from the store at a time.
const PAGE: usize = 500;

/// How many runs of a batch are removed at once.
const CONCURRENT: usize = 8;

/// The runs `policy` lets go, oldest last as the store lists them; the
/// `protected` ones (marked `keep`, deployed) and every run that has not
/// ended stay.
pub async fn select(
    store: &dyn Store,
    policy: &Policy,
    protected: &BTreeSet<RunId>,
    now: DateTime<Utc>,
) -> Result<Vec<RunDoc>, StorageError> {
    let mut ranks: BTreeMap<(String, Option<String>), usize> = BTreeMap::new();
    let mut out = Vec::new();
    let mut before: Option<RunId> = None;
    loop {
        let page = store.list_runs_before(before.as_ref(), PAGE).await?;
        let Some(last) = page.last() else { break };
        before = Some(last.id.clone());
        for run in page {
            let group = (
                run.pipeline.clone(),
                run.git.as_ref().and_then(|g| g.branch.clone()),
            );
            let rank = ranks.entry(group).or_default();
            *rank += 1;
            if run.status.is_final()
                && !protected.contains(&run.id)
                && policy.lets_go(run.created, *rank, now)
            {
                out.push(run);
            }
        }
    }
    Ok(out)
}

/// What a prune removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pruned {
    pub runs: u64,
    /// Published objects removed (documents, logs, artifacts).
    pub objects: u64,
    /// Bytes of kept workspace files removed.
    pub kept_bytes: u64,
    /// Runs not removed this time, with why (tried again next time).
    pub failed: Vec<(RunId, String)>,
}

/// Removes everything of `runs`, `batch` at a time (yielding between
/// batches): from each sink, the kept files under `state_dir`, the store.
pub async fn prune(
    store: &dyn Store,
    sinks: &[Arc<dyn ResultsSink>],
    state_dir: &Path,
    runs: &[RunDoc],
    batch: usize,
) -> Pruned {
    let mut done = Pruned::default();
    for chunk in runs.chunks(batch.max(1)) {
        // The index first, for the whole batch: listings never name a run
        // whose files are going.
        let ids: Vec<RunId> = chunk.iter().map(|r| r.id.clone()).collect();
        let mut unindexed = Ok(());
        for sink in sinks {
            if let Err(e) = sink.remove_many_from_index(&ids).await {
                unindexed = Err(e);
                break;
            }
        }
        if let Err(e) = unindexed {
            done.failed
                .extend(ids.into_iter().map(|id| (id, e.to_string())));
            continue;
        }
        // A few runs at a time: most of a removal is waiting for the bucket.
        let removals: Vec<_> = chunk
            .iter()
            .map(|run| async move { (run, remove(store, sinks, state_dir, &run.id).await) })
            .collect();
        let mut removals = futures_util::stream::iter(removals).buffer_unordered(CONCURRENT);
        while let Some((run, removed)) = removals.next().await {
            match removed {
                Ok((objects, bytes)) => {
                    done.runs += 1;
                    done.objects += objects;
                    done.kept_bytes += bytes;
                }
                Err(e) => done.failed.push((run.id.clone(), e.to_string())),
            }
        }
        tokio::task::yield_now().await;
    }
    done
}

/// Removes one run everywhere; returns the objects and kept bytes removed.
async fn remove(
    store: &dyn Store,
    sinks: &[Arc<dyn ResultsSink>],
    state_dir: &Path,
    run: &RunId,
) -> Result<(u64, u64), StorageError> {
    // Re-read: a run marked running since it was selected stays.
    match store.get_run(run).await? {
        Some(doc) if !doc.status.is_final() => {
            return Err(StorageError::transient(
                format!("prune run {run}"),
                format!("it is {} again", doc.status),
            ));
        }
        _ => {}
    }
    let mut objects = 0;
    for sink in sinks {
        objects += sink.remove_run(run).await?;
    }
    let kept = crate::prepare::kept_dir(state_dir, run);
    let bytes = tokio::task::spawn_blocking(move || {
        let bytes = dir_size(&kept);
        let _ = std::fs::remove_dir_all(&kept);
        bytes
    })
    .await
    .unwrap_or(0);
    store.delete_run(run).await?;
    Ok((objects, bytes))
}

fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_goes_only_outside_every_rule_that_is_set() {
        let now = Utc::now();
        let old = now - chrono::Duration::days(40);
        let young = now - chrono::Duration::days(1);
        let age = Some(Duration::from_secs(30 * 24 * 3600));
        let both = Policy {
            max_age: age,
            keep_last: Some(3),
        };
        assert!(both.lets_go(old, 4, now));
        assert!(!both.lets_go(old, 3, now), "among the last 3");
        assert!(!both.lets_go(young, 10, now), "young");
        let by_age = Policy {
            max_age: age,
            keep_last: None,
        };
        assert!(by_age.lets_go(old, 1, now) && !by_age.lets_go(young, 100, now));
        let by_count = Policy {
            max_age: None,
            keep_last: Some(2),
        };
        assert!(by_count.lets_go(young, 3, now) && !by_count.lets_go(old, 2, now));
        assert!(
            !Policy::default().lets_go(old, 1000, now),
            "no policy keeps all"
        );
    }
}
