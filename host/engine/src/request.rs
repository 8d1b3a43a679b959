//! What a run is asked to do: the plan, its source, trigger and context,
//! secrets, the stages a re-run reuses, approval gates' answers and a
//! paused run to go on with.

use std::collections::BTreeMap;
use std::path::PathBuf;

use sentinel_api::{GitContext, RunId, StageName, Trigger};
use sentinel_pipeline::Plan;

use crate::gate::{Gate, Resume};
use crate::workspace::FileSet;

/// A request to run a plan.
#[derive(Debug, Clone)]
pub struct RunRequest {
    pub plan: Plan,
    /// The folder copied into the run's workspace.
    pub source: PathBuf,
    /// Top-level names in `source` not copied (the state folder, say).
    pub skip: Vec<String>,
    pub trigger: Trigger,
    pub git: Option<GitContext>,
    /// The environment Sentinel runs in, for `NAME: ~` variables.
    pub host_env: BTreeMap<String, String>,
    /// Secret values by name.
    pub secrets: BTreeMap<String, String>,
    /// The run's id when it was given at acceptance (a queued run); a new
    /// one otherwise.
    pub run_id: Option<RunId>,
    /// Stages not run again but taken from an earlier run (a re-run from a
    /// failed stage): each is recorded succeeded with its earlier outputs,
    /// and its files are put back in the workspace before any stage starts.
    pub reuse: BTreeMap<StageName, Reused>,
    /// Why a stage a re-run could have kept runs again (what was no longer
    /// kept); said in its document.
    pub not_reused: BTreeMap<StageName, String>,
    /// The run whose published output is this run's source (a deploy from
    /// a build), recorded in the run document.
    pub from_run: Option<RunId>,
    /// What the run deploys (a deploy marker's or a promotion's run):
    /// `${deploy.*}`, `DEPLOY_*` and the run document's `deploy`.
    pub deploy: Option<sentinel_api::DeployFacts>,
    /// The cache stages with `cache:` use (`None`: no cache).
    pub cache: Option<crate::cache::CacheAccess>,
    /// What each approval gate (`approval: ENV`) does; a gate not named
    /// here is refused (nobody can answer it).
    pub gates: BTreeMap<StageName, Gate>,
    /// A paused run going on (its gates answered): its stages that ended
    /// stay as they were.
    pub resume: Option<Resume>,
    /// The run of another pipeline that started this one (`${upstream.*}`).
    pub upstream: Option<Upstream>,
    /// Why this run gets no secrets (a fork's pull request): each stage
    /// that needs one is skipped, saying so.
    pub withheld: Option<String>,
    /// The pull request it builds (recorded in the run document).
    pub pull_request: Option<sentinel_api::PullRequestDoc>,
    /// What its trigger told it: `${trigger.version}` …
    pub trigger_values: BTreeMap<String, String>,
    /// Registry credentials of the machine (the server's configuration, the
    /// user's config file), for hosts the pipeline's `registries:` does not
    /// name.
    pub registries: Vec<crate::exec::RegistryAuth>,
}

/// The run of another pipeline that started a run, as `${upstream.*}`
/// reads it: its id and the outputs of its stages that succeeded, as their
/// documents show them (masked; a sensitive stage's are not there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub run: RunId,
    pub outputs: BTreeMap<StageName, (String, BTreeMap<String, String>)>,
}

/// A stage's result taken from an earlier run, exactly as it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reused {
    /// The run it comes from.
    pub run: RunId,
    /// Its trimmed stdout (`${stages.<name>.output}`, `out/<name>`), raw.
    pub output: String,
    /// Its named outputs, raw.
    pub outputs: BTreeMap<String, String>,
    /// The files it created or changed (none for a step that only reads).
    pub files: Option<FileSet>,
}

impl RunRequest {
    /// A request started from this machine (`sentinel run`), with no git
    /// context, host variables or secrets; set those fields as needed.
    pub fn local(plan: Plan, source: PathBuf) -> Self {
        Self {
            plan,
            source,
            skip: Vec::new(),
            trigger: Trigger {
                kind: sentinel_api::TriggerKind::Local,
                by: None,
            },
            git: None,
            host_env: BTreeMap::new(),
            secrets: BTreeMap::new(),
            run_id: None,
            reuse: BTreeMap::new(),
            not_reused: BTreeMap::new(),
            from_run: None,
            deploy: None,
            cache: None,
            gates: BTreeMap::new(),
            resume: None,
            upstream: None,
            withheld: None,
            pull_request: None,
            trigger_values: BTreeMap::new(),
            registries: Vec::new(),
        }
    }
}
