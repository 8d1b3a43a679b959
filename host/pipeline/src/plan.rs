//! The resolved plan: what the engine runs. It is independent of the file's
//! dialect (every reader produces a [`crate::draft::Draft`], and one
//! validation turns it into this) and fully validated: every name it holds
//! exists, the graph is acyclic and stages are in topological order. What a
//! stage does is one [`Action`] — a kind, as a type.

use std::collections::BTreeMap;
use std::time::Duration;

use sentinel_api::{StageKind, StageName};
use serde::{Serialize, Serializer};

use crate::template::Template;

/// A validated pipeline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    /// The format version it was read from.
    pub version: u32,
    pub name: String,
    /// Declared secret names.
    pub secrets: Vec<String>,
    /// Pipeline-wide variables.
    pub env: BTreeMap<String, EnvValue>,
    pub services: Vec<ServicePlan>,
    /// Image registries with their credentials (templates: rendered when
    /// the run starts).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub registries: Vec<RegistryPlan>,
    /// Stages in a topological order (file order among equals).
    pub stages: Vec<StagePlan>,
    /// How the run's workspace is made.
    #[serde(skip_serializing_if = "WorkspaceOptions::is_default")]
    pub workspace: WorkspaceOptions,
}

/// A registry: where images named `host/…` are pushed to and pulled from,
/// with these credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RegistryPlan {
    pub name: String,
    pub host: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<Template>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<Template>,
}

/// How the run's workspace is made from the project folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkspaceOptions {
    /// Copy the project's `.git` folder (default: yes; scripts use `git describe`).
    pub git: bool,
    /// Folders made in the workspace before any stage runs (cion's
    /// artifacts folder), owned by the stages' user.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dirs: Vec<String>,
}

impl Default for WorkspaceOptions {
    fn default() -> Self {
        Self {
            git: true,
            dirs: Vec::new(),
        }
    }
}

impl WorkspaceOptions {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

impl Plan {
    /// The stage with this name.
    pub fn stage(&self, name: &StageName) -> Option<&StagePlan> {
        self.stages.iter().find(|s| &s.name == name)
    }
}

/// A pipeline-wide variable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EnvValue {
    /// A value, possibly with `${run.*}` / `${git.*}` references.
    Value(Template),
    /// Taken from the environment `sentinel` runs in (`NAME: ~`).
    FromHost,
}

/// When a stage runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum When {
    OnSuccess,
    OnFailure,
    Always,
}

impl When {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OnSuccess => "on_success",
            Self::OnFailure => "on_failure",
            Self::Always => "always",
        }
    }
}

/// The network a container joins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Network {
    /// No network at all (loopback only).
    None,
    /// Docker's default bridge.
    Bridge,
    /// The run's own network, shared with its services.
    Run,
}

impl Network {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Bridge => "bridge",
            Self::Run => "run",
        }
    }
}

fn ser_ms<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

fn ser_opt_ms<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => ser_ms(d, s),
        None => s.serialize_none(),
    }
}

/// The effective limits of one stage (stage value, else pipeline default,
/// else the built-in default).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Limits {
    #[serde(rename = "timeout_ms", serialize_with = "ser_ms")]
    pub timeout: Duration,
    /// Stopped as timed out after printing nothing for this long.
    #[serde(
        rename = "idle_timeout_ms",
        serialize_with = "ser_opt_ms",
        skip_serializing_if = "Option::is_none"
    )]
    pub idle_timeout: Option<Duration>,
    /// Bytes.
    pub memory: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    pub network: Network,
    /// Bytes of log kept.
    pub log_limit: u64,
    pub pids: u32,
    /// `uid[:gid]`, when set in the file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// A container stage runs in the run's shared warm container.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub reuse: bool,
    /// Constraints on the Swarm node that runs it (`node.labels.arch == arm64`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub placement: Vec<String>,
}

impl Limits {
    /// The built-in defaults.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);
    pub const DEFAULT_MEMORY: u64 = 2 << 30;
    /// Logs are kept whole up to 1 GiB (spilled to disk as they come, so
    /// memory stays flat whatever the size).
    pub const DEFAULT_LOG_LIMIT: u64 = 1 << 30;
    pub const DEFAULT_PIDS: u32 = 1024;

    /// The limits as strings, for the stage document.
    pub fn describe(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        m.insert(
            "timeout".into(),
            humantime::format_duration(self.timeout).to_string(),
        );
        if let Some(idle) = self.idle_timeout {
            m.insert(
                "idle_timeout".into(),
                humantime::format_duration(idle).to_string(),
            );
        }
        m.insert("memory".into(), self.memory.to_string());
        if let Some(c) = self.cpus {
            m.insert("cpus".into(), c.to_string());
        }
        m.insert("network".into(), self.network.as_str().into());
        m.insert("log_limit".into(), self.log_limit.to_string());
        m.insert("pids".into(), self.pids.to_string());
        if let Some(u) = &self.user {
            m.insert("user".into(), u.clone());
        }
        if self.reuse {
            m.insert("reuse".into(), "true".into());
        }
        if !self.placement.is_empty() {
            m.insert("placement".into(), self.placement.join(", "));
        }
        m
    }
}

/// How a container stage's shell runs its script.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Shell {
    /// `sh -e -c`: the first failing command ends the script (Sentinel's own).
    #[default]
    Strict,
    /// `sh -c`: the script's last command decides (dockercise's).
    Plain,
}

impl Shell {
    fn is_default(&self) -> bool {
        *self == Self::Strict
    }

    /// The shell's flags before the script.
    pub fn flags(self) -> &'static [&'static str] {
        match self {
            Self::Strict => &["-e", "-c"],
            Self::Plain => &["-c"],
        }
    }
}

/// A script in a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContainerAction {
    pub image: String,
    /// The image's references (`${stages.build.outputs.digest}`), when it
    /// has any: it is known once the stages it names ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_ref: Option<Template>,
    pub script: String,
    /// Commit the container as this image once the script succeeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// Run the image's own entrypoint and command, not `script` (cion's
    /// build and release images).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub image_command: bool,
    /// The stage gets a Docker endpoint of its own (`DOCKER_HOST`) that
    /// builds, tags, pushes and pulls this run's images and nothing else.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub docker: bool,
    #[serde(skip_serializing_if = "Shell::is_default")]
    pub shell: Shell,
}

/// Script steps run in turn in one container of `image`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobAction {
    pub image: String,
    pub steps: Vec<JobStep>,
    /// Run after `steps`, whatever happened to them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub after_steps: Vec<JobStep>,
    #[serde(skip_serializing_if = "Shell::is_default")]
    pub shell: Shell,
    /// Commit the container as this image once the steps succeeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
}

impl JobAction {
    /// Every step of the job, steps then after-steps, one per line group: a
    /// script as written, a step as `# step: name (digest)`.
    pub fn scripts(&self) -> String {
        self.steps
            .iter()
            .chain(&self.after_steps)
            .map(|s| match &s.run {
                JobRun::Script(script) => format!("# {}\n{script}\n", s.name),
                JobRun::Step(st) => format!("# {}\n# step: {}\n", s.name, st.resolved_text()),
            })
            .collect()
    }

    /// The job's script steps (folders mounted into its container), once each.
    pub fn script_steps(&self) -> Vec<&StepAction> {
        let mut seen = Vec::<&StepAction>::new();
        for s in self.steps.iter().chain(&self.after_steps) {
            if let JobRun::Step(st) = &s.run
                && st.resolved.script.is_some()
                && !seen.iter().any(|x| x.resolved.wasm == st.resolved.wasm)
            {
                seen.push(st);
            }
        }
        seen
    }
}

/// One step of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobStep {
    pub name: String,
    #[serde(flatten)]
    pub run: JobRun,
    /// The step's own timeout (the job's bounds it too).
    #[serde(
        rename = "timeout_ms",
        serialize_with = "ser_opt_ms",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
}

/// What a job's step runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobRun {
    /// A script, run by the job's shell.
    Script(String),
    /// A step: a script step (its folder's `run.sh`, in the job's
    /// container) or a WebAssembly step (in its sandbox, on the job's
    /// workspace).
    Step(StepAction),
}

/// An image build: a Dockerfile in a workspace folder, built, tagged and
/// optionally pushed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BuildAction {
    /// The workspace folder sent as the context (`.`: the workspace).
    pub context: String,
    /// The Dockerfile, relative to the context.
    pub dockerfile: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub args: BTreeMap<String, Template>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, Template>,
    /// The image's names; the first is its output `image`.
    pub tags: Vec<Template>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub pull: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub no_cache: bool,
    /// The tags pushed after the build (some or all of `tags`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub push: Vec<Template>,
    /// Secret mounts by id (the values: secret references).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, Template>,
}

/// A WebAssembly step with its settings (every setting of the manifest: the
/// value from `with:`, else the manifest's default).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepAction {
    pub step: String,
    pub with: BTreeMap<String, Template>,
    pub resolved: Box<crate::step::ResolvedStep>,
}

impl StepAction {
    /// What the reference resolved to, as documents record it:
    /// `REF = NAME VERSION (sha256:…)`.
    pub fn resolved_text(&self) -> String {
        let m = &self.resolved.manifest;
        format!(
            "{} = {} {} ({})",
            self.step, m.name, m.version, self.resolved.digest
        )
    }
}

/// What a stage executes: one kind each. Kinds that later issues add (jobs,
/// image builds) are new variants; every place that depends on the kind
/// matches here once ([`Action::kind`], [`Action::templates`]) or in the
/// executor's dispatch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// A `run:` script in a container.
    Container(ContainerAction),
    /// A WebAssembly step.
    Step(StepAction),
    /// Script steps in one container.
    Job(JobAction),
    /// An image build.
    Build(BuildAction),
}

impl Action {
    /// The kind recorded in documents.
    pub fn kind(&self) -> StageKind {
        match self {
            Self::Container(_) => StageKind::Container,
            Self::Step(_) => StageKind::Step,
            Self::Job(_) => StageKind::Job,
            Self::Build(_) => StageKind::BuildImage,
        }
    }

    /// The templates of the action itself (step settings, a job's steps' too).
    pub fn templates(&self) -> Box<dyn Iterator<Item = &Template> + '_> {
        match self {
            Self::Step(s) => Box::new(s.with.values()),
            Self::Container(c) => Box::new(c.image_ref.iter()),
            Self::Build(b) => Box::new(
                b.args
                    .values()
                    .chain(b.labels.values())
                    .chain(&b.tags)
                    .chain(b.secrets.values()),
            ),
            Self::Job(j) => Box::new(
                j.steps
                    .iter()
                    .chain(&j.after_steps)
                    .filter_map(|s| match &s.run {
                        JobRun::Step(st) => Some(st.with.values()),
                        JobRun::Script(_) => None,
                    })
                    .flatten(),
            ),
        }
    }

    /// True when the action runs in a container (and so needs Docker).
    pub fn needs_containers(&self) -> bool {
        match self {
            Self::Container(_) | Self::Job(_) | Self::Build(_) => true,
            Self::Step(_) => false,
        }
    }

    /// True when the action can change the workspace (a step whose manifest
    /// only lets it read the workspace changes nothing).
    pub fn writes_workspace(&self) -> bool {
        match self {
            Self::Container(_) | Self::Job(_) => true,
            // A build reads its context; the image is its product.
            Self::Build(_) => false,
            Self::Step(s) => {
                s.resolved.manifest.capabilities.workspace == crate::step::WorkspaceAccess::Write
            }
        }
    }

    /// What a stage document records of where the action came from.
    pub fn provenance(&self) -> Provenance<'_> {
        match self {
            Self::Job(j) => Provenance {
                image: Some(&j.image),
                script: Some(j.scripts().into()),
                step: None,
            },
            Self::Container(c) => Provenance {
                image: Some(&c.image),
                script: Some(c.script.as_str().into()),
                step: None,
            },
            Self::Step(s) => Provenance {
                image: None,
                script: None,
                step: Some(s.resolved_text()),
            },
            Self::Build(b) => Provenance {
                image: None,
                script: Some(
                    format!(
                        "# build {}/{}\n",
                        b.context.trim_end_matches('/'),
                        b.dockerfile
                    )
                    .into(),
                ),
                step: None,
            },
        }
    }
}

/// Where an action came from: a container's image and script, or a step's
/// name and digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provenance<'a> {
    pub image: Option<&'a str>,
    /// The script (a job's: every step's, in order).
    pub script: Option<std::borrow::Cow<'a, str>>,
    /// `name (digest)`.
    pub step: Option<String>,
}

/// A stage whose files this stage uses, and where it sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub stage: StageName,
    /// `None`: where they were written, in the shared workspace; a path: a
    /// read-only view of just that stage's files there.
    pub path: Option<String>,
}

impl Serialize for Volume {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.path {
            None => s.serialize_str(self.stage.as_str()),
            Some(p) => {
                use serde::ser::SerializeMap;
                let mut m = s.serialize_map(Some(2))?;
                m.serialize_entry("stage", &self.stage)?;
                m.serialize_entry("path", p)?;
                m.end()
            }
        }
    }
}

/// Stage variables: `null` for one taken from the host, else the template.
fn ser_stage_env<S: Serializer>(env: &BTreeMap<String, EnvValue>, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(Some(env.len()))?;
    for (k, v) in env {
        match v {
            EnvValue::Value(t) => m.serialize_entry(k, t)?,
            EnvValue::FromHost => m.serialize_entry(k, &())?,
        }
    }
    m.end()
}

/// A validated stage.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StagePlan {
    pub name: StageName,
    pub action: Action,
    /// Direct dependencies, sorted: `after:`, references and `volumes:`,
    /// plus every other stage for a finalizer.
    pub needs: Vec<StageName>,
    pub when: When,
    /// A `when: always | on_failure` stage with no dependencies of its own,
    /// which therefore comes after every other stage.
    pub finalizer: bool,
    /// The stage's variables: templates, or `NAME: ~` taken from the host.
    #[serde(serialize_with = "ser_stage_env")]
    pub env: BTreeMap<String, EnvValue>,
    pub volumes: Vec<Volume>,
    pub sensitive: bool,
    /// An approval gate: the environment whose approval the stage waits
    /// for before it starts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval: Option<String>,
    pub limits: Limits,
    /// Files kept between runs (container stages and jobs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<crate::cache::CachePlan>,
    /// Another attempt after a failure it lists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<crate::retry::RetryPlan>,
}

impl StagePlan {
    /// The kind recorded in documents.
    pub fn kind(&self) -> StageKind {
        self.action.kind()
    }

    /// Every template of the stage (env values and step settings).
    pub fn templates(&self) -> impl Iterator<Item = &Template> {
        self.env
            .values()
            .filter_map(|v| match v {
                EnvValue::Value(t) => Some(t),
                EnvValue::FromHost => None,
            })
            .chain(self.action.templates())
    }

    /// The host variables the stage takes (`NAME: ~`).
    pub fn host_vars(&self) -> impl Iterator<Item = &str> {
        self.env
            .iter()
            .filter(|(_, v)| matches!(v, EnvValue::FromHost))
            .map(|(k, _)| k.as_str())
    }
}

/// A validated service.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServicePlan {
    pub name: String,
    pub image: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    pub env: BTreeMap<String, Template>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready: Option<String>,
    #[serde(rename = "ready_timeout_ms", serialize_with = "ser_ms")]
    pub ready_timeout: Duration,
    /// Stages on the run's network get Docker-link variables for it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub links: bool,
}
