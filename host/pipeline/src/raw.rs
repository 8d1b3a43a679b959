//! The raw schema of `sentinel.yml` version 1: exactly what the file may say,
//! before any validation. The JSON Schema published in `docs/` is generated
//! from these types.

use std::collections::BTreeMap;

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};

/// A pipeline file, version 1.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "a pipeline mapping")]
#[schemars(title = "sentinel.yml (version 1)")]
pub struct RawPipeline {
    /// The format version; this Sentinel reads `1`.
    pub version: u32,
    /// The pipeline's name; defaults to the name of the folder holding the file.
    #[serde(default)]
    pub name: Option<String>,
    /// Default image for container stages and services (wercker's `box`).
    #[serde(default, rename = "box")]
    pub box_image: Option<String>,
    /// Variables for every stage. An empty value (`NAME: ~`) takes the value
    /// from the environment `sentinel` runs in.
    #[serde(default)]
    pub env: BTreeMap<String, Option<String>>,
    /// Names of secrets. Values come from the host, never from this file; a
    /// stage sees a secret only when it names it (`${secrets.NAME}`).
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Limits for every stage that does not set its own.
    #[serde(default)]
    pub defaults: RawDefaults,
    /// Sidecar containers started before the stages, reachable by name.
    #[serde(default)]
    pub services: IndexMap<String, RawService>,
    /// Image registries and their credentials, by name: used to push what
    /// builds make and to pull private images; and step registries
    /// (`steps:`) that `name:step@version` references name.
    #[serde(default)]
    pub registries: IndexMap<String, RawRegistry>,
    /// The stages, by name.
    pub stages: IndexMap<String, RawStage>,
    /// How the run's workspace is made from the project folder.
    #[serde(default)]
    pub workspace: RawWorkspace,
}

/// An image registry and its credentials.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a registry mapping with `host` (and optionally `username` and `password`) or `steps`"
)]
pub struct RawRegistry {
    /// `host[:port]`, as image names write it (an image registry).
    #[serde(default)]
    pub host: Option<String>,
    /// Where steps are published (`oci://host/namespace`,
    /// `file:///folder`, `s3://bucket/prefix`): a step registry. Its
    /// credentials come from the machine's configuration for its host.
    #[serde(default)]
    pub steps: Option<String>,
    /// The user name (may use `${…}` references).
    #[serde(default)]
    pub username: Option<String>,
    /// The password or token: a `${secrets.NAME}` or `${env.NAME}`
    /// reference, never written in the file.
    #[serde(default)]
    pub password: Option<String>,
}

/// One step of a job.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "a step mapping")]
pub struct RawJobStep {
    /// Its name in logs and documents (default `step-<n>`).
    #[serde(default)]
    pub name: Option<String>,
    /// The script, run by `sh -e` in the job's container from `/workspace`.
    #[serde(default)]
    pub run: Option<String>,
    /// A step instead of a script: a script step (a folder with a manifest
    /// and a `run.sh`, run in the job's container) or a WebAssembly step
    /// (run in its sandbox on the job's workspace).
    #[serde(default)]
    pub step: Option<String>,
    /// The step's settings (`${…}` references allowed; `$NAME` is one of
    /// the job's variables).
    #[serde(default)]
    pub with: IndexMap<String, String>,
    /// How long this step may run (`90s`, `5m`); the job's own `timeout`
    /// bounds every step too.
    #[serde(default)]
    pub timeout: Option<String>,
}

/// How the run's workspace is made: a copy of the project folder without
/// what `.gitignore` and `.sentinelignore` exclude.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "a workspace mapping")]
pub struct RawWorkspace {
    /// Copy the project's `.git` folder too (default `true`: scripts use `git describe`).
    #[serde(default = "yes")]
    pub git: bool,
    /// Folders made in the workspace before any stage runs, owned by the
    /// stages' user.
    #[serde(default)]
    pub dirs: Vec<String>,
}

impl Default for RawWorkspace {
    fn default() -> Self {
        Self {
            git: true,
            dirs: Vec::new(),
        }
    }
}

fn yes() -> bool {
    true
}

/// Pipeline-wide limits.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "a mapping of limits")]
pub struct RawDefaults {
    /// How long a stage may run (`90s`, `20m`, `1h30m`). Default `1h`.
    #[serde(default)]
    pub timeout: Option<String>,
    /// How long a container stage or job may go without printing anything
    /// before it is stopped as timed out (`10m`). Default: no limit.
    #[serde(default)]
    pub idle_timeout: Option<String>,
    /// Memory limit of a container stage (`512m`, `2g`, bytes). Default `2g`.
    #[serde(default)]
    pub memory: Option<String>,
    /// CPU limit of a container stage (`0.5`, `2`). Default: no limit.
    #[serde(default)]
    pub cpus: Option<f64>,
    /// Network of container stages: `none`, `bridge` or `run` (the run's own
    /// network, where services are reachable by name). Default: `run` when
    /// the pipeline has services, else `bridge`.
    #[serde(default)]
    pub network: Option<String>,
    /// Largest log kept whole per stage (`1g`, the default); past it the
    /// head and the last 8 MiB are kept and the middle is cut.
    #[serde(default)]
    pub log_limit: Option<String>,
    /// Most processes a container stage may have. Default 1024.
    #[serde(default)]
    pub pids: Option<u32>,
    /// User (`uid` or `uid:gid`) container stages run as. Default: the user
    /// running `sentinel`, or `1000:1000` when that is root.
    #[serde(default)]
    pub user: Option<String>,
    /// Run container stages with the same image, user, limits and network
    /// in one warm container of the run (sharing its file system outside
    /// the workspace). Default `false`.
    #[serde(default)]
    pub reuse: Option<bool>,
    /// Where container stages may run on a Swarm cluster: constraints on
    /// the node (`node.labels.arch == arm64`, `node.hostname != ci-3`,
    /// `node.platform.arch == x86_64`), all of which must hold. The local
    /// executor refuses a stage whose constraints this machine does not meet.
    #[serde(default)]
    pub placement: Option<Vec<String>>,
}

/// A sidecar container.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "a service mapping")]
pub struct RawService {
    /// The image; defaults to `box`.
    #[serde(default)]
    pub image: Option<String>,
    /// Command run by `sh -c` instead of the image's own.
    #[serde(default)]
    pub command: Option<String>,
    /// Variables of the service; values may use `${secrets.X}`, `${run.id}`, `${git.*}`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// A readiness command (`sh -c`) retried until it exits 0.
    #[serde(default)]
    pub ready: Option<String>,
    /// How long to wait for readiness. Default `60s`.
    #[serde(default)]
    pub ready_timeout: Option<String>,
    /// Give every stage on the run's network the variables Docker's links
    /// gave (`<NAME>_PORT_<N>_TCP_ADDR`, `_PORT`, `<NAME>_PORT`…), as
    /// wercker did. Default `false`.
    #[serde(default)]
    pub links: bool,
}

/// When a stage runs, given how its dependencies ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawWhen {
    /// Every dependency succeeded (the default).
    #[default]
    OnSuccess,
    /// Some dependency failed.
    OnFailure,
    /// Whatever happened before.
    Always,
}

/// A stage: a container (`run:`) or a WebAssembly step (`step:`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "a stage mapping")]
pub struct RawStage {
    /// The image of a container stage; defaults to `box`.
    #[serde(default)]
    pub image: Option<String>,
    /// The script of a container stage, run by `sh -e`. Never interpolated:
    /// it reads `$VARS` from its environment.
    #[serde(default)]
    pub run: Option<String>,
    /// A WebAssembly step (`name@version` or a path to a `.wasm`).
    #[serde(default)]
    pub step: Option<String>,
    /// A job: script steps run in turn in one container (instead of `run:`).
    #[serde(default)]
    pub steps: Option<Vec<RawJobStep>>,
    /// Steps of a job that run after its steps, whatever happened to them
    /// (`$SENTINEL_JOB_RESULT` says `passed` or `failed`).
    #[serde(default)]
    pub after_steps: Option<Vec<RawJobStep>>,
    /// The container of a job or a container stage committed as this image
    /// (`repo:tag`) once it succeeded; the image is the stage's output `image`.
    #[serde(default)]
    pub commit: Option<String>,
    /// An image build from a Dockerfile in the workspace (instead of `run:`).
    #[serde(default)]
    pub build: Option<RawBuild>,
    /// Run the image's own entrypoint and command instead of `run:`.
    #[serde(default)]
    pub image_command: Option<bool>,
    /// Give a container stage `DOCKER_HOST`: an endpoint that builds, tags,
    /// pushes and pulls this run's images and refuses everything else.
    #[serde(default)]
    pub docker: Option<bool>,
    /// Settings of a step; each key becomes `SENTINEL_<STEP>_<KEY>`.
    #[serde(default)]
    pub with: BTreeMap<String, String>,
    /// Stages this one runs after.
    #[serde(default)]
    pub after: StringList,
    /// Stages whose files this one uses (an edge, and what a remote executor
    /// carries over): a name, or `{stage, path}` to see just that stage's
    /// files, read-only, at `path`.
    #[serde(default)]
    pub volumes: Volumes,
    /// Variables of this stage; values may use `${…}` references. An empty
    /// value (`NAME: ~`) takes the value from the environment `sentinel` runs in.
    #[serde(default)]
    pub env: BTreeMap<String, Option<String>>,
    /// `on_success` (default), `on_failure` or `always`.
    #[serde(default)]
    pub when: RawWhen,
    /// The stage's output is a secret: kept out of its log and results and
    /// masked everywhere; `out/<stage>` holds it for the run's later stages.
    #[serde(default)]
    pub sensitive: bool,
    /// An approval gate: the stage waits for an approval to deploy to this
    /// environment (of the server's config) before it starts.
    #[serde(default)]
    pub approval: Option<String>,
    /// How long the stage may run.
    #[serde(default)]
    pub timeout: Option<String>,
    /// How long it may print nothing before it is stopped as timed out.
    #[serde(default)]
    pub idle_timeout: Option<String>,
    /// Memory limit of the container.
    #[serde(default)]
    pub memory: Option<String>,
    /// CPU limit of the container.
    #[serde(default)]
    pub cpus: Option<f64>,
    /// `none`, `bridge` or `run`.
    #[serde(default)]
    pub network: Option<String>,
    /// Largest log kept.
    #[serde(default)]
    pub log_limit: Option<String>,
    /// Most processes the container may have.
    #[serde(default)]
    pub pids: Option<u32>,
    /// User the container runs as (`uid` or `uid:gid`).
    #[serde(default)]
    pub user: Option<String>,
    /// Run in the run's warm container shared with other container stages
    /// of the same image, user, limits and network (`defaults: {reuse: true}`
    /// for every one).
    #[serde(default)]
    pub reuse: Option<bool>,
    /// Constraints on the Swarm node that runs it (`node.labels.KEY == VALUE`).
    #[serde(default)]
    pub placement: Option<Vec<String>>,
    /// Files kept between runs: restored at start, saved on success.
    #[serde(default)]
    pub cache: Option<RawCache>,
    /// Attempts again when it fails for a reason listed in `on`.
    #[serde(default)]
    pub retry: Option<RawRetry>,
}

/// An image build stage's `build:`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a build mapping with `tags` and optionally `context`, `dockerfile`, `args`, `secrets`, `target`, `labels`, `pull`, `no_cache`, `push`"
)]
pub struct RawBuild {
    /// The workspace folder sent as the build context (default: the workspace).
    #[serde(default)]
    pub context: Option<String>,
    /// The Dockerfile, relative to the context (default `Dockerfile`).
    #[serde(default)]
    pub dockerfile: Option<String>,
    /// Build arguments (`ARG`); values may use `${…}` references but never
    /// `${secrets.*}`: a build argument can end up in the image's history.
    #[serde(default)]
    pub args: BTreeMap<String, String>,
    /// The stage of a multi-stage Dockerfile to build.
    #[serde(default)]
    pub target: Option<String>,
    /// Labels of the image.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The image's names (`registry/repository:tag`), at least one.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Pull newer versions of the base images first.
    #[serde(default)]
    pub pull: bool,
    /// Build without the build cache.
    #[serde(default)]
    pub no_cache: bool,
    /// Push after a successful build: `true` (every tag) or a list of tags.
    #[serde(default)]
    pub push: RawPush,
    /// Secrets the Dockerfile mounts (`RUN --mount=type=secret,id=ID`), by
    /// id; each value a `${secrets.NAME}` reference. Built with BuildKit; the
    /// values reach no layer, history, argument or log.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
}

/// `push:` of a build: every tag, or some.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum RawPush {
    #[default]
    None,
    All,
    Tags(Vec<String>),
}

impl JsonSchema for RawPush {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Push".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "`true` pushes every tag; a list pushes those tags",
            "oneOf": [
                { "type": "boolean" },
                { "type": "array", "items": { "type": "string" } }
            ]
        })
    }
}

impl<'de> Deserialize<'de> for RawPush {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawPush;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("`true`, `false` or a list of tags")
            }
            fn visit_unit<E: de::Error>(self) -> Result<RawPush, E> {
                Ok(RawPush::None)
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawPush, E> {
                Ok(if v { RawPush::All } else { RawPush::None })
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawPush, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(RawPush::Tags(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// A container stage's or job's cache.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a cache mapping with `key` and `paths`"
)]
pub struct RawCache {
    /// The entry's key: text with `${hash(FILES)}`, `${run.id}`, `${git.*}`, `${env.X}`.
    pub key: String,
    /// Prefixes tried in order when no entry has exactly `key`; the newest match wins.
    #[serde(default)]
    pub restore_keys: Vec<String>,
    /// Workspace folders or files kept (`$SENTINEL_CACHE_DIR`: the stage's own cache folder).
    pub paths: Vec<String>,
}

/// A stage's `retry:`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a retry mapping with `attempts` and optionally `on` and `backoff`"
)]
pub struct RawRetry {
    /// Attempts in all, the first included (2 to 10).
    pub attempts: u32,
    /// What earns another attempt: `infrastructure` (the stage could not
    /// start or its executor lost it: the Docker daemon went away, an image
    /// pull failed), `timeout`, and exit codes. Default `[infrastructure]`.
    #[serde(default)]
    #[schemars(with = "Vec<RetryOnSchema>")]
    pub on: Vec<String>,
    /// The wait before the second attempt (`5s`), doubled before each one
    /// after it, at most 5 minutes. Default `5s`.
    #[serde(default)]
    pub backoff: Option<String>,
}

/// One entry of `retry: {on: […]}`, for the JSON Schema.
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum RetryOnSchema {
    Failure(RetryFailureSchema),
    /// An exit code.
    ExitCode(#[schemars(range(min = 1, max = 255))] u8),
}

/// A kind of failure `retry:` may be on.
#[derive(JsonSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
enum RetryFailureSchema {
    /// The executor could not start the stage or lost it while it ran.
    Infrastructure,
    /// The stage ran past its `timeout` or `idle_timeout`.
    Timeout,
}

/// One name or a list of names (`after: build` or `after: [build, test]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StringList {
    #[default]
    Empty,
    One(String),
    Many(Vec<String>),
}

impl StringList {
    /// The names, in order.
    pub fn items(&self) -> Vec<&str> {
        match self {
            Self::Empty => Vec::new(),
            Self::One(s) => vec![s.as_str()],
            Self::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

impl JsonSchema for StringList {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "StringList".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "One name or a list of names",
            "oneOf": [
                { "type": "string" },
                { "type": "array", "items": { "type": "string" } }
            ]
        })
    }
}

impl<'de> Deserialize<'de> for StringList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StringList;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a name or a list of names")
            }
            fn visit_unit<E: de::Error>(self) -> Result<StringList, E> {
                Ok(StringList::Empty)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<StringList, E> {
                Ok(StringList::One(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<StringList, E> {
                Ok(StringList::One(v.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<StringList, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(StringList::Many(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// A stage whose files a stage uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawVolume {
    /// Its files, where it wrote them in the workspace.
    Stage(String),
    /// Its files only, read-only, at `path`.
    At { stage: String, path: String },
}

/// One volume or a list of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Volumes(pub Vec<RawVolume>);

impl Volumes {
    /// The volumes, in order.
    pub fn items(&self) -> Vec<&RawVolume> {
        self.0.iter().collect()
    }
}

impl JsonSchema for Volumes {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Volumes".into()
    }

    fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let at = g.subschema_for::<VolumeAt>();
        let one = schemars::json_schema!({ "oneOf": [ { "type": "string" }, at ] });
        schemars::json_schema!({
            "description": "A stage name, `{stage, path}`, or a list of them",
            "oneOf": [ one.clone(), { "type": "array", "items": one } ]
        })
    }
}

/// `{stage, path}`: a stage's files, read-only, at a path.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "`{stage, path}`")]
pub struct VolumeAt {
    /// The stage whose files are seen.
    pub stage: String,
    /// Where (an absolute path in the container).
    pub path: String,
}

struct VolumeVisitor;

impl<'de> Visitor<'de> for VolumeVisitor {
    type Value = RawVolume;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a stage name or `{stage, path}`")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<RawVolume, E> {
        Ok(RawVolume::Stage(v.to_string()))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawVolume, E> {
        Ok(RawVolume::Stage(v.to_string()))
    }
    fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<RawVolume, A::Error> {
        let at = VolumeAt::deserialize(de::value::MapAccessDeserializer::new(map))?;
        Ok(RawVolume::At {
            stage: at.stage,
            path: at.path,
        })
    }
}

struct OneVolume(RawVolume);

impl<'de> Deserialize<'de> for OneVolume {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(VolumeVisitor).map(OneVolume)
    }
}

impl<'de> Deserialize<'de> for Volumes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Volumes;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a stage name, `{stage, path}` or a list of them")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Volumes, E> {
                Ok(Volumes::default())
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Volumes, E> {
                Ok(Volumes(vec![RawVolume::Stage(v.to_string())]))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Volumes, E> {
                Ok(Volumes(vec![RawVolume::Stage(v.to_string())]))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Volumes, A::Error> {
                Ok(Volumes(vec![VolumeVisitor.visit_map(map)?]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Volumes, A::Error> {
                let mut out = Vec::new();
                while let Some(OneVolume(v)) = seq.next_element()? {
                    out.push(v);
                }
                Ok(Volumes(out))
            }
        }
        d.deserialize_any(V)
    }
}
