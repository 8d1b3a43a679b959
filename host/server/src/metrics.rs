//! `/metrics` in the Prometheus text format: runs by status, runs going,
//! queue depth and outbox depth (read at scrape time, so they are right
//! after a restart), stage durations by final status, and the start
//! latency — from a run's acceptance to its first stage starting —
//! observed as the worker reports progress, and the deploy markers acted
//! on by watcher and outcome.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use sentinel_api::{RunId, StageStatus};
use sentinel_engine::Progress;
use sentinel_engine::ports::{Outbox, RunQueue, StorageError};
use sentinel_store::SledStore;

type Labels = Vec<(String, String)>;

fn duration_histogram() -> Histogram {
    // 5 ms … ~1.5 h.
    Histogram::new(exponential_buckets(0.005, 2.0, 20))
}

/// The server's metrics.
pub struct Metrics {
    registry: Registry,
    runs: Family<Labels, Gauge>,
    running: Gauge,
    queue_depth: Gauge,
    outbox_depth: Gauge,
    outbox_parked: Gauge,
    statuses_waiting: Gauge,
    /// Commit statuses GitHub refused for good, or sends that failed.
    pub status_failures: Family<Labels, Counter>,
    stage_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    start_latency: Histogram,
    deploy_markers: Family<Labels, Counter>,
    /// What retention removed, by kind (runs, objects, kept_bytes, failed).
    pub pruned: Family<Labels, Counter>,
    /// Runs accepted and not started yet, with when they were accepted.
    accepted: Mutex<HashMap<RunId, DateTime<Utc>>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("sentinel");
        let runs = Family::<Labels, Gauge>::default();
        let running = Gauge::default();
        let queue_depth = Gauge::default();
        let outbox_depth = Gauge::default();
        let outbox_parked = Gauge::default();
        let statuses_waiting = Gauge::default();
        let status_failures = Family::<Labels, Counter>::default();
        registry.register(
            "commit_statuses_waiting",
            "Commit statuses waiting to be sent to GitHub",
            statuses_waiting.clone(),
        );
        registry.register(
            "commit_status_failures",
            "Commit status sends that failed, by kind (retried, refused)",
            status_failures.clone(),
        );
        let stage_seconds = Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(
            duration_histogram,
        );
        let start_latency = Histogram::new(exponential_buckets(0.001, 2.0, 20));
        let deploy_markers = Family::<Labels, Counter>::default();
        registry.register(
            "deploy_markers",
            "Deploy markers acted on, by watcher and outcome (queued, ignored, failed)",
            deploy_markers.clone(),
        );
        let pruned = Family::<Labels, Counter>::default();
        registry.register(
            "retention_pruned",
            "What retention removed: runs, published objects, kept bytes, cache bytes, and runs it could not remove yet (failed)",
            pruned.clone(),
        );
        registry.register("runs", "Stored runs by status", runs.clone());
        registry.register("runs_running", "Runs going now", running.clone());
        registry.register(
            "queue_depth",
            "Accepted runs waiting for a worker",
            queue_depth.clone(),
        );
        registry.register(
            "outbox_depth",
            "Results waiting for the results bucket",
            outbox_depth.clone(),
        );
        registry.register(
            "outbox_parked",
            "Results the bucket refused for good, kept until `sentinel outbox retry`",
            outbox_parked.clone(),
        );
        registry.register(
            "stage_duration_seconds",
            "Durations of ended stages, by status",
            stage_seconds.clone(),
        );
        registry.register(
            "step_start_latency_seconds",
            "From a run's acceptance to its first stage starting",
            start_latency.clone(),
        );
        Self {
            registry,
            runs,
            running,
            queue_depth,
            outbox_depth,
            outbox_parked,
            statuses_waiting,
            status_failures,
            stage_seconds,
            start_latency,
            deploy_markers,
            pruned,
            accepted: Mutex::default(),
        }
    }
}

impl Metrics {
    /// Counts the bytes of cache entries a retention pass removed.
    pub fn on_cache_swept(&self, bytes: u64) {
        self.pruned
            .get_or_create(&vec![("kind".into(), "cache_bytes".into())])
            .inc_by(bytes);
    }

    /// Counts what a retention pass removed.
    pub fn on_pruned(&self, runs: u64, objects: u64, kept_bytes: u64, failed: u64) {
        for (kind, n) in [
            ("runs", runs),
            ("objects", objects),
            ("kept_bytes", kept_bytes),
            ("failed", failed),
        ] {
            self.pruned
                .get_or_create(&vec![("kind".into(), kind.into())])
                .inc_by(n);
        }
    }

    /// A run was accepted at `at`.
    pub fn accepted(&self, run: &RunId, at: DateTime<Utc>) {
        if let Ok(mut a) = self.accepted.lock() {
            a.insert(run.clone(), at);
        }
    }

    /// A watcher acted on a deploy marker.
    pub fn deploy_marker(&self, watcher: &str, outcome: &str) {
        self.deploy_markers
            .get_or_create(&vec![
                ("watcher".into(), watcher.into()),
                ("outcome".into(), outcome.into()),
            ])
            .inc();
    }

    /// Takes one progress event of `run`.
    pub fn on_progress(&self, run: &RunId, p: &Progress) {
        match p {
            Progress::Stage {
                status: StageStatus::Running,
                ..
            } => {
                let since = self.accepted.lock().ok().and_then(|mut a| a.remove(run));
                if let Some(at) = since {
                    let secs = (Utc::now() - at).num_microseconds().unwrap_or(0) as f64 / 1e6;
                    self.start_latency.observe(secs.max(0.0));
                }
            }
            Progress::Stage {
                status,
                duration_ms: Some(ms),
                ..
            } if status.is_final() => {
                self.stage_seconds
                    .get_or_create(&vec![("status".into(), status.as_str().into())])
                    .observe(*ms as f64 / 1000.0);
            }
            Progress::RunFinished { .. } => {
                if let Ok(mut a) = self.accepted.lock() {
                    a.remove(run);
                }
            }
            _ => {}
        }
    }

    /// The text exposition, with the gauges read from `store` now.
    pub async fn render(&self, store: &SledStore, running: usize) -> Result<String, StorageError> {
        let counts = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || store.run_counts())
                .await
                .map_err(|e| StorageError::permanent("count runs", e))??
        };
        for (status, n) in counts {
            self.runs
                .get_or_create(&vec![("status".into(), status)])
                .set(n as i64);
        }
        self.running.set(running as i64);
        let waiting = RunQueue::waiting(store).await?;
        self.queue_depth.set(waiting as i64);
        self.outbox_depth.set(Outbox::len(store) as i64);
        self.outbox_parked.set(Outbox::parked_len(store) as i64);
        self.statuses_waiting.set(store.statuses_waiting() as i64);
        let mut out = String::new();
        encode(&mut out, &self.registry).map_err(|e| StorageError::permanent("metrics", e))?;
        Ok(out)
    }
}
