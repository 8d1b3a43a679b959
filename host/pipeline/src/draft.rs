//! The dialect-neutral draft of a pipeline: what every reader (`sentinel.yml`
//! v1, dockercise, …) produces and what validation and planning consume.
//! Every value carries its position in the *original* file, so an error
//! found by the shared validation points into the file the user wrote,
//! whatever its dialect.

use crate::plan::{Shell, When};
use crate::yaml::Pos;

/// A value and where it is written.
#[derive(Debug, Clone, PartialEq)]
pub struct At<T> {
    pub value: T,
    pub pos: Pos,
}

impl<T> At<T> {
    pub fn new(value: T, pos: Pos) -> Self {
        Self { value, pos }
    }
}

impl At<String> {
    pub fn as_str(&self) -> &str {
        &self.value
    }
}

/// A problem a reader or the validation found, at its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub pos: Pos,
    pub message: String,
    pub hint: Option<String>,
}

impl Issue {
    pub fn new(pos: Pos, message: impl Into<String>, hint: Option<String>) -> Self {
        Self {
            pos,
            message: message.into(),
            hint,
        }
    }
}

/// The value of a variable.
#[derive(Debug, Clone, PartialEq)]
pub enum EnvDraft {
    /// A value that may hold `${…}` references.
    Template(At<String>),
    /// Taken from the environment `sentinel` runs in (`NAME: ~`).
    FromHost(Pos),
}

impl EnvDraft {
    pub fn pos(&self) -> Pos {
        match self {
            Self::Template(t) => t.pos,
            Self::FromHost(p) => *p,
        }
    }
}

/// One variable: its name (at the key) and value.
#[derive(Debug, Clone, PartialEq)]
pub struct VarDraft {
    pub name: At<String>,
    pub value: EnvDraft,
}

/// Limits as written (each absent when not set).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LimitsDraft {
    pub timeout: Option<At<String>>,
    pub idle_timeout: Option<At<String>>,
    pub memory: Option<At<String>>,
    pub cpus: Option<At<f64>>,
    pub network: Option<At<String>>,
    pub log_limit: Option<At<String>>,
    pub pids: Option<At<u32>>,
    pub user: Option<At<String>>,
    pub reuse: Option<At<bool>>,
    pub placement: Option<At<Vec<String>>>,
}

/// A sidecar container.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceDraft {
    /// The name, at its key.
    pub name: At<String>,
    /// Where the service's mapping starts.
    pub pos: Pos,
    pub image: Option<String>,
    pub command: Option<String>,
    pub env: Vec<(At<String>, At<String>)>,
    pub ready: Option<String>,
    pub ready_timeout: Option<At<String>>,
    /// Stages get Docker-link variables for it.
    pub links: bool,
}

/// What a stage does, as its dialect wrote it. Readers report the syntax
/// of their own dialect; the shared validation checks the meaning.
#[derive(Debug, Clone, PartialEq)]
pub enum ActionDraft {
    /// A script in a container; no image means the pipeline's `box`.
    Container {
        image: Option<At<String>>,
        script: At<String>,
        shell: Shell,
        /// `docker: true`: the stage gets the run's scoped Docker endpoint.
        docker: Option<At<bool>>,
        /// Run the image's own entrypoint and command (`script` is empty).
        image_command: bool,
        /// Commit the container as this image when the script succeeds.
        commit: Option<At<String>>,
    },
    /// Script steps in one container; no image means the pipeline's `box`.
    Job {
        image: Option<At<String>>,
        steps: Vec<JobStepDraft>,
        after_steps: Vec<JobStepDraft>,
        shell: Shell,
        /// Commit the container as this image when the steps succeed.
        commit: Option<At<String>>,
    },
    /// An image build from a Dockerfile in the workspace.
    Build(Box<BuildDraft>),
    /// A WebAssembly step and its settings (`key` at its key, value at its value).
    Step {
        step: At<String>,
        with: Vec<(At<String>, At<String>)>,
        /// Where "missing setting" errors point.
        with_pos: Pos,
    },
}

/// A registry as written.
#[derive(Debug, Clone, PartialEq)]
pub struct RegistryDraft {
    pub name: At<String>,
    /// An image registry's host.
    pub host: Option<At<String>>,
    /// A step registry's address.
    pub steps: Option<At<String>>,
    pub username: Option<At<String>>,
    pub password: Option<At<String>>,
}

/// An image build as written (keys at their keys, values at their values).
#[derive(Debug, Clone, PartialEq)]
pub struct BuildDraft {
    /// Where `build:` is.
    pub pos: Pos,
    pub context: Option<At<String>>,
    pub dockerfile: Option<At<String>>,
    pub args: Vec<(At<String>, At<String>)>,
    pub target: Option<At<String>>,
    pub labels: Vec<(At<String>, At<String>)>,
    pub tags: Vec<At<String>>,
    pub pull: bool,
    pub no_cache: bool,
    pub push: PushDraft,
    /// Secret mounts: id at its key, value at its value.
    pub secrets: Vec<(At<String>, At<String>)>,
}

/// Which tags a build pushes.
#[derive(Debug, Clone, PartialEq)]
pub enum PushDraft {
    None,
    All,
    Tags(Vec<At<String>>),
}

/// One step of a job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobStepDraft {
    /// Its name (given, or made from its place), at the step.
    pub name: At<String>,
    pub run: JobRunDraft,
    /// The step's own timeout.
    pub timeout: Option<At<String>>,
}

/// What a job's step runs, as written.
#[derive(Debug, Clone, PartialEq)]
pub enum JobRunDraft {
    /// A script for the job's shell.
    Script(At<String>),
    /// A step (script or WebAssembly) and its settings.
    Step {
        step: At<String>,
        with: Vec<(At<String>, At<String>)>,
        /// Where "missing setting" errors point.
        with_pos: Pos,
        /// The values are templates (`${…}`); else plain text (wercker's,
        /// whose `$NAME`s the job's shell expands).
        templates: bool,
    },
}

/// A stage whose files another stage uses, and where it sees them
/// (`None`: in the shared workspace, where they were written).
#[derive(Debug, Clone, PartialEq)]
pub struct VolumeDraft {
    pub stage: At<String>,
    pub path: Option<At<String>>,
}

/// A stage's cache, as written.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheDraft {
    /// Where `cache:` is.
    pub pos: Pos,
    pub key: At<String>,
    pub restore_keys: Vec<At<String>>,
    pub paths: Vec<At<String>>,
}

/// One stage.
#[derive(Debug, Clone, PartialEq)]
pub struct StageDraft {
    /// The name, at its key.
    pub name: At<String>,
    /// Where the stage's mapping starts.
    pub pos: Pos,
    /// `None` when the reader already reported why there is none.
    pub action: Option<ActionDraft>,
    /// `after:` entries; the field's name is used in messages.
    pub after: Vec<At<String>>,
    pub volumes: Vec<VolumeDraft>,
    /// The name of the volumes field in this dialect (`volumes`, `vol`).
    pub volumes_field: &'static str,
    pub env: Vec<VarDraft>,
    pub when: When,
    pub sensitive: bool,
    /// `approval: ENV`: an approval gate, at its value.
    pub approval: Option<At<String>>,
    pub limits: LimitsDraft,
    /// Files kept between runs.
    pub cache: Option<CacheDraft>,
    pub retry: Option<crate::retry::RetryDraft>,
    /// How the reader mapped the stage, for `sentinel convert`'s comments.
    pub notes: Vec<String>,
}

/// Options of the run's workspace.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkspaceDraft {
    /// Copy the project's `.git` folder into the workspace.
    pub git: bool,
    /// Folders made in the workspace before any stage runs.
    pub dirs: Vec<At<String>>,
}

impl Default for WorkspaceDraft {
    fn default() -> Self {
        Self {
            git: true,
            dirs: Vec::new(),
        }
    }
}

/// A whole pipeline as a reader understood it.
#[derive(Debug, Clone, PartialEq)]
pub struct Draft {
    /// The dialect it was read from.
    pub dialect: crate::dialect::Dialect,
    /// The format version (1 for every dialect but a future native one).
    pub version: u32,
    pub name: Option<String>,
    /// The default image of container stages and services.
    pub box_image: Option<String>,
    pub env: Vec<VarDraft>,
    pub secrets: Vec<At<String>>,
    pub defaults: LimitsDraft,
    pub services: Vec<ServiceDraft>,
    /// Image registries with their credentials.
    pub registries: Vec<RegistryDraft>,
    /// Where the stages start (the `stages:` value, or the document).
    pub stages_pos: Pos,
    pub stages: Vec<StageDraft>,
    pub workspace: WorkspaceDraft,
    /// Problems the reader found (validation adds its own).
    pub issues: Vec<Issue>,
}

impl Draft {
    /// True when a stage of this name is declared.
    pub fn has_stage(&self, name: &str) -> bool {
        self.stages.iter().any(|s| s.name.value == name)
    }

    /// True when the pipeline's `env:` declares `name`.
    pub fn has_env(&self, name: &str) -> bool {
        self.env.iter().any(|v| v.name.value == name)
    }

    /// The step registries the pipeline names: (name, address).
    pub fn step_registries(&self) -> Vec<(String, String)> {
        self.registries
            .iter()
            .filter_map(|r| {
                Some((
                    r.name.value.clone(),
                    r.steps.as_ref()?.value.trim().to_string(),
                ))
            })
            .collect()
    }

    /// Every `step:` reference of the pipeline, once each.
    pub fn step_refs(&self) -> std::collections::BTreeSet<String> {
        self.stages
            .iter()
            .flat_map(|s| match &s.action {
                Some(ActionDraft::Step { step, .. }) => vec![step.value.clone()],
                Some(ActionDraft::Job {
                    steps, after_steps, ..
                }) => steps
                    .iter()
                    .chain(after_steps)
                    .filter_map(|st| match &st.run {
                        JobRunDraft::Step { step, .. } => Some(step.value.clone()),
                        JobRunDraft::Script(_) => None,
                    })
                    .collect(),
                _ => Vec::new(),
            })
            .collect()
    }
}
