//! The JSON documents of the results layout: `run.json`, `<stage>.json` and
//! the runs index ([`crate::index`]). Every document carries its `schema`,
//! which readers check first ([`crate::decode`]).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{FailureKind, RunId, RunStatus, StageName, StageStatus};

/// The version of every document this crate describes.
pub const SCHEMA_VERSION: u32 = 1;

/// What started a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TriggerKind {
    /// `sentinel run` on a developer's machine.
    Local,
    /// The HTTP API.
    Api,
    /// A git push webhook.
    Webhook,
    /// A deploy: a marker a watcher found, or a promotion.
    Deploy,
    /// A schedule of the server's config.
    Schedule,
    /// Another pipeline's run ended (`after =` in the server's config).
    Upstream,
    /// A GitHub pull request was opened or pushed to.
    PullRequest,
    /// A version watch saw a new version.
    Version,
    /// Written by a newer Sentinel.
    #[serde(other)]
    Unknown,
}

/// Who or what started a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trigger {
    pub kind: TriggerKind,
    /// A user, token name or delivery id, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// The git context of a run, when it was started from a repository.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitContext {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
}

/// How a stage is executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageKind {
    /// A `run:` script in a Docker container.
    Container,
    /// A WebAssembly step.
    Step,
    /// Script steps run in turn in one container.
    Job,
    /// A Docker image build.
    BuildImage,
}

/// One step of a job, in its stage document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStepDoc {
    pub name: String,
    /// `succeeded`, `failed`, `skipped` or `cancelled`.
    pub status: StageStatus,
    /// An after-step (it runs whatever happened before it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub after: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Why it ended so, when it did not succeed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One attempt of a retried stage (`retry:`), in its stage document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptDoc {
    /// 1 for the first.
    pub attempt: u32,
    pub status: StageStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<FailureKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Key of this attempt's log, relative to the run's folder (the last
    /// attempt's is the stage's own `log`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    #[serde(default)]
    pub log_bytes: u64,
    /// How long it waited before this attempt (its backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waited_ms: Option<u64>,
}

/// One stage as listed in `run.json`: enough to draw the DAG.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunStageEntry {
    pub name: StageName,
    pub kind: StageKind,
    pub status: StageStatus,
    /// Direct dependencies (explicit `after:` and implicit ones).
    pub needs: Vec<StageName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

/// `run/<runId>/run.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunDoc {
    pub schema: u32,
    pub id: RunId,
    /// The pipeline's name.
    pub pipeline: String,
    pub status: RunStatus,
    /// Why the run ended the way it did, when it did not succeed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub trigger: Trigger,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<GitContext>,
    pub created: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Stages in a topological order.
    pub stages: Vec<RunStageEntry>,
    /// The version of Sentinel that ran it.
    pub sentinel: String,
    /// The run whose published output this run started from (a deploy
    /// from a build: `sentinel run --from-run RUN`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_run: Option<RunId>,
    /// What it deploys, when a deploy marker or a promotion started it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy: Option<crate::DeployFacts>,
    /// The run of another pipeline whose end started it (`after =` in the
    /// server's config). Older readers ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<RunId>,
    /// The pull request it builds. Older readers ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_request: Option<PullRequestDoc>,
}

/// A pull request a run builds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRequestDoc {
    pub number: u64,
    /// Its head: branch and commit (`owner/name:branch` for a fork).
    pub head: String,
    pub head_sha: String,
    /// The branch it would merge into.
    pub base: String,
    /// From another repository: the run gets no secrets, writes no cache,
    /// has no network and deploys nothing.
    pub fork: bool,
}

impl RunDoc {
    /// Brings each stage entry up to date with that stage's own document
    /// (written before `run.json`, so it may be newer); entries without a
    /// document are left as they are.
    pub fn refresh_stages(&mut self, stages: &[StageDoc]) {
        for entry in &mut self.stages {
            if let Some(d) = stages.iter().find(|d| d.name == entry.name) {
                entry.status = d.status;
                entry.started = d.started;
                entry.finished = d.finished;
                entry.duration_ms = d.duration_ms;
            }
        }
    }
}

/// What a stage was run with, recorded so it can be re-run alone.
/// Secrets appear only as references (`${secrets.NAME}`), never as values.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedInputs {
    /// The image as written (container stages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The image's content id (`sha256:…`), when it was resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    /// The step reference and what it resolved to: `REF = NAME VERSION (sha256:…)` (step stages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// SHA-256 of the `run:` script.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script_sha256: Option<String>,
    /// The stage's own environment: literal values, and references for
    /// secrets and sensitive outputs.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Settings of a step, recorded the same way as `env`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub settings: BTreeMap<String, String>,
    /// Stages whose files this stage uses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<StageName>,
    /// Effective limits (timeout, memory, cpus, network, log limit).
    #[serde(default)]
    pub limits: BTreeMap<String, String>,
}

/// `run/<runId>/<stage>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageDoc {
    pub schema: u32,
    pub run_id: RunId,
    pub name: StageName,
    pub kind: StageKind,
    pub status: StageStatus,
    /// Why the stage ended the way it did (failed, skipped, cancelled…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<FailureKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    /// The `when:` condition (`on_success`, `on_failure`, `always`).
    pub when: String,
    pub needs: Vec<StageName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// The trimmed stdout, masked; absent for sensitive stages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Named outputs (`key=value` lines of `$SENTINEL_OUTPUT`), masked.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outputs: BTreeMap<String, String>,
    /// True when the stage's output is a secret and is kept out of results.
    #[serde(default)]
    pub sensitive: bool,
    /// Key of the stage's log, relative to the run's folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    /// Bytes the stage wrote to its log, before any cut.
    #[serde(default)]
    pub log_bytes: u64,
    /// Bytes cut from the middle of the log by its size limit.
    #[serde(default)]
    pub log_cut_bytes: u64,
    /// Key of the stage's artifacts zip, relative to the run's folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifacts: Option<String>,
    pub inputs: ResolvedInputs,
    /// What a reader should know besides the status: an artifact withheld
    /// because it held a secret, a log that could not be read, files not
    /// kept for a re-run. Older readers ignore it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// A job's steps, in order (after-steps last). Older readers ignore it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<JobStepDoc>,
    /// What its cache did. Older readers ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheDoc>,
    /// An approval gate's (`approval: ENV`) answer: who approved or refused
    /// it, when. Older readers ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<crate::GateDoc>,
    /// Every attempt of a stage that was retried (`retry:`), the last one
    /// included; empty when it ran once. Older readers ignore it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<AttemptDoc>,
}

/// How a stage's cache was found at its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheResult {
    /// An entry with exactly the key.
    Hit,
    /// The newest entry matching the key or a restore key as a prefix.
    Partial,
    /// Nothing matched.
    Miss,
}

impl CacheResult {
    /// The name used in documents.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Partial => "partial",
            Self::Miss => "miss",
        }
    }
}

/// What a stage's cache did: the key it asked for, what it restored and
/// what it saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheDoc {
    /// The key, rendered.
    pub key: String,
    pub result: CacheResult,
    /// The key of the entry restored (a hit's is `key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_key: Option<String>,
    /// The branch the restored entry was saved on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_branch: Option<String>,
    /// Bytes restored (the entry's archive).
    #[serde(default)]
    pub restored_bytes: u64,
    /// Bytes saved as a new entry under `key`, when one was saved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saved_bytes: Option<u64>,
    /// Why nothing was saved, or what went wrong (a cache never fails a stage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// One run in the paged index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSummary {
    pub id: RunId,
    pub pipeline: String,
    pub status: RunStatus,
    pub created: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<GitContext>,
    /// Number of stages by final status name (e.g. `{"succeeded": 4}`).
    #[serde(default)]
    pub stages: BTreeMap<String, u32>,
}

impl RunSummary {
    /// The summary of a run document.
    pub fn of(run: &RunDoc) -> Self {
        let mut stages = BTreeMap::new();
        for s in &run.stages {
            *stages.entry(s.status.as_str().to_string()).or_insert(0) += 1;
        }
        Self {
            id: run.id.clone(),
            pipeline: run.pipeline.clone(),
            status: run.status,
            created: run.created,
            duration_ms: run.duration_ms,
            git: run.git.clone(),
            stages,
        }
    }
}

impl RunSummary {
    /// Inserts or replaces `summary` in `runs`, keeping them newest first.
    pub fn upsert(runs: &mut Vec<RunSummary>, summary: RunSummary) {
        runs.retain(|r| r.id != summary.id);
        let at = runs.partition_point(|r| r.id > summary.id);
        runs.insert(at, summary);
    }
}

/// Layout 1 of the index (read, no longer written): `runs/index.json`,
/// `runs/index-1.json`, …: newest-first run summaries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexPage {
    pub schema: u32,
    /// This page's number (0 for `index.json`).
    pub page: u32,
    /// How many pages there are in all.
    pub pages: u32,
    /// Key of the next (older) page, relative to the prefix, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    pub runs: Vec<RunSummary>,
}
