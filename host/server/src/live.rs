//! The runs going now, as the worker reports them: each running stage's
//! log so far (masked, capped) and a broadcast of its new bytes, and each
//! run's stage and run events — what the SSE endpoints stream. A
//! subscriber gets the bytes so far and the channel under one lock, so it
//! misses nothing and sees nothing twice. A stage that ended stays known
//! until its files are published, so a reader can wait for its log file
//! instead of finding it missing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sentinel_api::{RunId, RunStatus, StageName, StageStatus};
use sentinel_engine::Progress;
use serde::Serialize;
use tokio::sync::broadcast;

/// The most bytes of a stage's log kept for late subscribers; past it the
/// oldest are dropped (the full log is published when the stage ends).
pub const KEEP_BYTES: usize = 1 << 20;

/// What a stage's log stream carries.
#[derive(Debug, Clone)]
pub enum LogEvent {
    Bytes(Arc<[u8]>),
    End(StageStatus),
}

/// What a run's event stream carries.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RunEvent {
    Stage {
        name: StageName,
        status: StageStatus,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        duration_ms: Option<u64>,
    },
    Run {
        status: RunStatus,
    },
}

struct StageLive {
    kept: Vec<u8>,
    /// Bytes dropped from the front of `kept`.
    dropped: u64,
    /// Ended, its files not yet published; dropping `tx` tells the waiters.
    ended: bool,
    tx: broadcast::Sender<LogEvent>,
}

struct RunLive {
    stages: HashMap<StageName, StageLive>,
    tx: broadcast::Sender<RunEvent>,
}

/// The live state of the runs going.
#[derive(Default)]
pub struct LiveHub {
    runs: Mutex<HashMap<RunId, RunLive>>,
}

impl std::fmt::Debug for LiveHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveHub").finish_non_exhaustive()
    }
}

/// A subscription to a running stage's log.
#[derive(Debug)]
pub struct LogTail {
    /// What it wrote so far (the newest [`KEEP_BYTES`]).
    pub so_far: Vec<u8>,
    /// Bytes left out of `so_far` at its start.
    pub dropped: u64,
    pub rx: broadcast::Receiver<LogEvent>,
}

impl LiveHub {
    /// Takes one progress event of `run`.
    pub fn on_progress(&self, run: &RunId, p: &Progress) {
        let Ok(mut runs) = self.runs.lock() else {
            return;
        };
        match p {
            Progress::RunStarted { stages, .. } => {
                let live = RunLive {
                    stages: stages
                        .iter()
                        .map(|s| {
                            let live = StageLive {
                                kept: Vec::new(),
                                dropped: 0,
                                ended: false,
                                tx: broadcast::channel(1024).0,
                            };
                            (s.clone(), live)
                        })
                        .collect(),
                    tx: broadcast::channel(256).0,
                };
                runs.insert(run.clone(), live);
            }
            Progress::Log { name, bytes } => {
                if let Some(st) = runs.get_mut(run).and_then(|r| r.stages.get_mut(name))
                    && !st.ended
                {
                    st.kept.extend_from_slice(bytes);
                    if st.kept.len() > KEEP_BYTES {
                        let cut = st.kept.len() - KEEP_BYTES;
                        st.kept.drain(..cut);
                        st.dropped += cut as u64;
                    }
                    let _ = st.tx.send(LogEvent::Bytes(bytes.as_slice().into()));
                }
            }
            Progress::Stage {
                name,
                status,
                reason,
                duration_ms,
            } => {
                let Some(r) = runs.get_mut(run) else { return };
                let _ = r.tx.send(RunEvent::Stage {
                    name: name.clone(),
                    status: *status,
                    reason: reason.clone(),
                    duration_ms: *duration_ms,
                });
                if status.is_final()
                    && let Some(st) = r.stages.get_mut(name)
                    && !st.ended
                {
                    st.ended = true;
                    st.kept = Vec::new();
                    let _ = st.tx.send(LogEvent::End(*status));
                }
            }
            Progress::Published { name } => {
                if let Some(r) = runs.get_mut(run) {
                    r.stages.remove(name);
                }
            }
            Progress::RunFinished { status, .. } => {
                if let Some(r) = runs.remove(run) {
                    for (_, st) in r.stages.into_iter().filter(|(_, st)| !st.ended) {
                        let _ = st.tx.send(LogEvent::End(StageStatus::Cancelled));
                    }
                    let _ = r.tx.send(RunEvent::Run { status: *status });
                }
            }
            Progress::RunRequeued { .. } => {}
        }
    }

    /// The log of a stage of a run going now; `None` when the stage has
    /// ended (or the run is not going here): read its published log.
    pub fn tail(&self, run: &RunId, stage: &StageName) -> Option<LogTail> {
        let runs = self.runs.lock().ok()?;
        let st = runs.get(run)?.stages.get(stage).filter(|st| !st.ended)?;
        Some(LogTail {
            so_far: st.kept.clone(),
            dropped: st.dropped,
            rx: st.tx.subscribe(),
        })
    }

    /// Waits until the files of a stage that ended are published; returns
    /// at once when there is nothing to wait for.
    pub async fn published(&self, run: &RunId, stage: &StageName) {
        let rx = self.runs.lock().ok().and_then(|runs| {
            let st = runs.get(run)?.stages.get(stage).filter(|st| st.ended)?;
            Some(st.tx.subscribe())
        });
        if let Some(mut rx) = rx {
            // Nothing is sent after `End`: this returns when `tx` is dropped.
            while !matches!(rx.recv().await, Err(broadcast::error::RecvError::Closed)) {}
        }
    }

    /// How many runs are going.
    pub fn running(&self) -> usize {
        self.runs.lock().map(|r| r.len()).unwrap_or(0)
    }

    /// The events of a run going now; `None` when it is not going here.
    pub fn events(&self, run: &RunId) -> Option<broadcast::Receiver<RunEvent>> {
        let runs = self.runs.lock().ok()?;
        Some(runs.get(run)?.tx.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hub with one run going, its id and its stage `build`.
    fn started() -> (LiveHub, RunId, StageName) {
        let hub = LiveHub::default();
        let run: RunId = "01JDX3K6Q2T8W9V5M4N3P2R1S0".parse().unwrap();
        let st: StageName = "build".parse().unwrap();
        hub.on_progress(
            &run,
            &Progress::RunStarted {
                run_id: run.clone(),
                stages: vec![st.clone()],
            },
        );
        (hub, run, st)
    }

    fn ended(name: &StageName, status: StageStatus) -> Progress {
        Progress::Stage {
            name: name.clone(),
            status,
            reason: None,
            duration_ms: Some(5),
        }
    }

    #[test]
    fn late_subscribers_get_what_was_written_then_the_rest() {
        let (hub, run, st) = started();
        let log = |b: &[u8]| Progress::Log {
            name: st.clone(),
            bytes: b.to_vec(),
        };
        hub.on_progress(&run, &log(b"one\n"));
        let mut tail = hub.tail(&run, &st).unwrap();
        assert_eq!(tail.so_far, b"one\n");
        hub.on_progress(&run, &log(b"two\n"));
        hub.on_progress(&run, &ended(&st, StageStatus::Succeeded));
        assert!(matches!(tail.rx.try_recv().unwrap(), LogEvent::Bytes(b) if &*b == b"two\n"));
        assert!(matches!(
            tail.rx.try_recv().unwrap(),
            LogEvent::End(StageStatus::Succeeded)
        ));
        assert!(
            hub.tail(&run, &st).is_none(),
            "ended: read the published log"
        );
        // A huge log keeps only its newest bytes.
        let big: StageName = "big".parse().unwrap();
        hub.on_progress(
            &run,
            &Progress::RunStarted {
                run_id: run.clone(),
                stages: vec![big.clone()],
            },
        );
        for _ in 0..3 {
            hub.on_progress(
                &run,
                &Progress::Log {
                    name: big.clone(),
                    bytes: vec![b'x'; KEEP_BYTES / 2 + 1],
                },
            );
        }
        let t = hub.tail(&run, &big).unwrap();
        assert_eq!(t.so_far.len(), KEEP_BYTES);
        assert_eq!(t.dropped as usize, 3 * (KEEP_BYTES / 2 + 1) - KEEP_BYTES);
    }

    #[tokio::test]
    async fn a_reader_waits_for_an_ended_stage_to_be_published() {
        let (hub, run, st) = started();
        let hub = std::sync::Arc::new(hub);
        // Running: nothing to wait for (the live tail serves it).
        hub.published(&run, &st).await;
        hub.on_progress(&run, &ended(&st, StageStatus::Failed));
        let waiter = tokio::spawn({
            let (hub, run, st) = (hub.clone(), run.clone(), st.clone());
            async move { hub.published(&run, &st).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "ended but not yet published");
        hub.on_progress(&run, &Progress::Published { name: st.clone() });
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("the reader was released")
            .unwrap();
        // Published: the next reader does not wait.
        hub.published(&run, &st).await;
    }
}
