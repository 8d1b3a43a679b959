//! One stage's state during a run, and the two documents drawn from it: its
//! entry in `run.json` and its own stage document (outputs masked, or left
//! out when the stage is sensitive).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sentinel_api::{
    FailureKind, ResolvedInputs, RunId, RunStageEntry, SCHEMA_VERSION, StageDoc, StageKind,
    StageName, StageStatus,
};

use crate::masker::SecretSet;

/// One stage's state during a run.
#[derive(Debug, Clone)]
pub struct StageState {
    pub name: StageName,
    pub kind: StageKind,
    pub when: String,
    pub needs: Vec<StageName>,
    pub sensitive: bool,
    pub status: StageStatus,
    pub reason: Option<String>,
    pub failure: Option<FailureKind>,
    pub exit_code: Option<i64>,
    pub started: Option<DateTime<Utc>>,
    pub finished: Option<DateTime<Utc>>,
    /// Raw output and named outputs (in memory only).
    pub output: Option<String>,
    pub outputs: BTreeMap<String, String>,
    pub log: Option<String>,
    pub log_bytes: u64,
    pub log_cut: u64,
    pub artifacts: Option<String>,
    pub inputs: ResolvedInputs,
    /// The finished log, until it is handed to the publisher.
    pub log_body: Option<crate::log::LogBody>,
    /// The folder of its artifacts (checked for secrets), until it is
    /// handed to the publisher.
    pub artifacts_dir: Option<std::path::PathBuf>,
    /// The files it created or changed, kept for a re-run.
    pub files: Option<crate::workspace::FileSet>,
    /// What its document says besides its status (withheld files, …).
    pub warnings: Vec<String>,
    /// A job's steps, as they ended.
    pub steps: Vec<sentinel_api::JobStepDoc>,
    /// What its cache did.
    pub cache: Option<sentinel_api::CacheDoc>,
    /// Its approval gate, once reached.
    pub approval: Option<sentinel_api::GateDoc>,
    /// A retried stage's attempts, the last included.
    pub attempts: Vec<sentinel_api::AttemptDoc>,
    /// Earlier attempts' logs, until they are handed to the publisher.
    pub attempt_logs: Vec<(u32, crate::log::LogBody)>,
}

pub(crate) fn duration_ms(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> Option<u64> {
    Some((b? - a?).num_milliseconds().max(0) as u64)
}

impl StageState {
    /// The entry of this stage in `run.json`.
    pub fn entry(&self) -> RunStageEntry {
        RunStageEntry {
            name: self.name.clone(),
            kind: self.kind,
            status: self.status,
            needs: self.needs.clone(),
            started: self.started,
            finished: self.finished,
            duration_ms: duration_ms(self.started, self.finished),
        }
    }

    /// The stage document, with outputs masked (or left out when sensitive).
    pub fn doc(&self, run_id: &RunId, secrets: &SecretSet) -> StageDoc {
        let (output, outputs) = if self.sensitive {
            (None, BTreeMap::new())
        } else {
            (
                self.output.as_ref().map(|o| secrets.mask_str(o)),
                self.outputs
                    .iter()
                    .map(|(k, v)| (k.clone(), secrets.mask_str(v)))
                    .collect(),
            )
        };
        StageDoc {
            schema: SCHEMA_VERSION,
            run_id: run_id.clone(),
            name: self.name.clone(),
            kind: self.kind,
            status: self.status,
            reason: self.reason.as_ref().map(|r| secrets.mask_str(r)),
            failure: self.failure,
            exit_code: self.exit_code,
            when: self.when.clone(),
            needs: self.needs.clone(),
            started: self.started,
            finished: self.finished,
            duration_ms: duration_ms(self.started, self.finished),
            output,
            outputs,
            sensitive: self.sensitive,
            log: self.log.clone(),
            log_bytes: self.log_bytes,
            log_cut_bytes: self.log_cut,
            artifacts: self.artifacts.clone(),
            inputs: self.inputs.clone(),
            warnings: self.warnings.iter().map(|w| secrets.mask_str(w)).collect(),
            steps: self
                .steps
                .iter()
                .map(|s| sentinel_api::JobStepDoc {
                    name: secrets.mask_str(&s.name),
                    reason: s.reason.as_ref().map(|r| secrets.mask_str(r)),
                    ..s.clone()
                })
                .collect(),
            cache: self.cache.as_ref().map(|c| sentinel_api::CacheDoc {
                key: secrets.mask_str(&c.key),
                restored_key: c.restored_key.as_ref().map(|k| secrets.mask_str(k)),
                note: c.note.as_ref().map(|n| secrets.mask_str(n)),
                ..c.clone()
            }),
            approval: self.approval.as_ref().map(|g| sentinel_api::GateDoc {
                answer: g.answer.as_ref().map(|a| sentinel_api::Approval {
                    reason: a.reason.as_ref().map(|r| secrets.mask_str(r)),
                    ..a.clone()
                }),
                ..g.clone()
            }),
            attempts: self
                .attempts
                .iter()
                .map(|a| sentinel_api::AttemptDoc {
                    reason: a.reason.as_ref().map(|r| secrets.mask_str(r)),
                    ..a.clone()
                })
                .collect(),
        }
    }
}
