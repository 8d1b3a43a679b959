//! `sentinel.yml` version 1: the version is read first, the file is
//! deserialised into the raw schema ([`crate::raw`], which also gives the
//! JSON Schema), and each value goes into the draft with its position. The
//! syntax rules of this dialect (a stage is `run:` or `step:`, settings go
//! in `with:`) are checked here; their meaning is the shared validation's.

use crate::de;
use crate::draft::{
    ActionDraft, At, BuildDraft, CacheDraft, Draft, EnvDraft, Issue, JobRunDraft, JobStepDraft,
    LimitsDraft, PushDraft, RegistryDraft, ServiceDraft, StageDraft, VarDraft, VolumeDraft,
    WorkspaceDraft,
};
use crate::plan::{Shell, When};
use crate::raw::{RawBuild, RawDefaults, RawJobStep, RawPipeline, RawPush, RawVolume, RawWhen};
use crate::yaml::{Node, PathSeg, Value};
use crate::{Diagnostics, dialect::Dialect};

use super::one;

fn key(s: &str) -> PathSeg {
    PathSeg::Key(s.to_string())
}

fn key_name(s: &str) -> PathSeg {
    PathSeg::KeyName(s.to_string())
}

/// Reads a `sentinel.yml` document.
pub(super) fn read(root: Node, file: &str) -> Result<Draft, Diagnostics> {
    // Detect the version before reading anything else.
    match (&root.value, root.get("version")) {
        (Value::Map(_), Some(v)) => match &v.value {
            Value::Scalar(s, _) if s == "1" => {}
            Value::Scalar(s, _) => {
                return Err(one(
                    file,
                    v.pos,
                    format!("unsupported version `{s}`; this Sentinel reads version 1"),
                    None,
                ));
            }
            _ => return Err(one(file, v.pos, "`version` must be a number".into(), None)),
        },
        (Value::Map(_), None) => {
            return Err(one(
                file,
                root.pos,
                "missing `version`".into(),
                Some("start the file with `version: 1`".into()),
            ));
        }
        _ => {
            return Err(one(
                file,
                root.pos,
                format!("a pipeline file is a mapping, found {}", root.kind()),
                None,
            ));
        }
    }

    // Top-level `x-…` keys are free-form extensions (a place for anchors).
    let mut root = root;
    if let Value::Map(entries) = &mut root.value {
        entries.retain(|(k, _)| !matches!(&k.value, Value::Scalar(s, _) if s.starts_with("x-")));
    }
    let raw: RawPipeline = de::from_node(&root)
        .map_err(|e| one(file, e.pos.unwrap_or(root.pos), e.message, e.hint))?;
    Ok(Reader {
        root: &root,
        issues: Vec::new(),
    }
    .draft(&raw))
}

struct Reader<'a> {
    root: &'a Node,
    issues: Vec<Issue>,
}

impl Reader<'_> {
    fn at(&self, path: &[PathSeg]) -> crate::yaml::Pos {
        self.root.locate(path)
    }

    fn value<T: Clone>(&self, path: &[PathSeg], v: &T) -> At<T> {
        At::new(v.clone(), self.at(path))
    }

    fn issue(&mut self, path: &[PathSeg], message: impl Into<String>) {
        let pos = self.at(path);
        self.issues.push(Issue::new(pos, message, None));
    }

    fn vars(
        &self,
        base: &[PathSeg],
        env: &std::collections::BTreeMap<String, Option<String>>,
    ) -> Vec<VarDraft> {
        env.iter()
            .map(|(k, v)| {
                let name = At::new(k.clone(), self.at(&[base, &[key_name(k)]].concat()));
                let vpos = self.at(&[base, &[key(k)]].concat());
                let value = match v {
                    None => EnvDraft::FromHost(vpos),
                    Some(v) => EnvDraft::Template(At::new(v.clone(), vpos)),
                };
                VarDraft { name, value }
            })
            .collect()
    }

    fn limits(&self, base: &[PathSeg], d: &RawDefaults) -> LimitsDraft {
        let at = |field: &str| [base, &[key(field)]].concat();
        let s = |field: &str, v: &Option<String>| v.as_ref().map(|v| self.value(&at(field), v));
        LimitsDraft {
            timeout: s("timeout", &d.timeout),
            idle_timeout: s("idle_timeout", &d.idle_timeout),
            memory: s("memory", &d.memory),
            cpus: d.cpus.map(|c| At::new(c, self.at(&at("cpus")))),
            network: s("network", &d.network),
            log_limit: s("log_limit", &d.log_limit),
            pids: d.pids.map(|p| At::new(p, self.at(&at("pids")))),
            user: s("user", &d.user),
            reuse: d.reuse.map(|r| At::new(r, self.at(&at("reuse")))),
            placement: d
                .placement
                .clone()
                .map(|p| At::new(p, self.at(&at("placement")))),
        }
    }

    fn cache(&self, base: &[PathSeg], c: &crate::raw::RawCache) -> CacheDraft {
        let at = |field: &str| [base, &[key(field)]].concat();
        let list = |field: &str, l: &[String]| {
            l.iter()
                .enumerate()
                .map(|(i, v)| self.value(&[&at(field)[..], &[PathSeg::Index(i)]].concat(), v))
                .collect()
        };
        CacheDraft {
            pos: self.at(base),
            key: self.value(&at("key"), &c.key),
            restore_keys: list("restore_keys", &c.restore_keys),
            paths: list("paths", &c.paths),
        }
    }

    fn retry(&self, base: &[PathSeg], r: &crate::raw::RawRetry) -> crate::retry::RetryDraft {
        let at = |field: &str| [base, &[key(field)]].concat();
        crate::retry::RetryDraft {
            pos: self.at(base),
            attempts: At::new(r.attempts, self.at(&at("attempts"))),
            on: r
                .on
                .iter()
                .enumerate()
                .map(|(i, v)| self.value(&[&at("on")[..], &[PathSeg::Index(i)]].concat(), v))
                .collect(),
            backoff: r.backoff.as_ref().map(|b| self.value(&at("backoff"), b)),
        }
    }

    /// A job's steps, each named (`<prefix>-<n>` when it has no name).
    /// A stage's `build:`, every value at its place.
    fn build(&self, base: &[PathSeg], b: &RawBuild) -> BuildDraft {
        let at = |k: &str| [base, &[key(k)]].concat();
        let opt = |k: &str, v: &Option<String>| v.as_ref().map(|v| self.value(&at(k), v));
        let map = |k: &str, m: &std::collections::BTreeMap<String, String>| {
            m.iter()
                .map(|(name, v)| {
                    (
                        At::new(
                            name.clone(),
                            self.at(&[&at(k)[..], &[key_name(name)]].concat()),
                        ),
                        At::new(v.clone(), self.at(&[&at(k)[..], &[key(name)]].concat())),
                    )
                })
                .collect()
        };
        let list = |k: &str, l: &[String]| {
            l.iter()
                .enumerate()
                .map(|(i, v)| self.value(&[&at(k)[..], &[PathSeg::Index(i)]].concat(), v))
                .collect()
        };
        BuildDraft {
            pos: self.at(base),
            context: opt("context", &b.context),
            dockerfile: opt("dockerfile", &b.dockerfile),
            args: map("args", &b.args),
            target: opt("target", &b.target),
            labels: map("labels", &b.labels),
            tags: list("tags", &b.tags),
            pull: b.pull,
            no_cache: b.no_cache,
            secrets: map("secrets", &b.secrets),
            push: match &b.push {
                RawPush::None => PushDraft::None,
                RawPush::All => PushDraft::All,
                RawPush::Tags(t) => PushDraft::Tags(list("push", t)),
            },
        }
    }

    fn job_steps(
        &mut self,
        base: &[PathSeg],
        steps: &[RawJobStep],
        prefix: &str,
    ) -> Vec<JobStepDraft> {
        steps
            .iter()
            .enumerate()
            .map(|(i, step)| {
                let item = [base, &[PathSeg::Index(i)]].concat();
                let name = match &step.name {
                    Some(n) => self.value(&[&item[..], &[key("name")]].concat(), n),
                    None => At::new(format!("{prefix}-{}", i + 1), self.at(&item)),
                };
                let run = match (&step.run, &step.step) {
                    (Some(run), None) => {
                        if !step.with.is_empty() {
                            self.issue(
                                &[&item[..], &[key("with")]].concat(),
                                "`with:` sets a step's settings; a `run:` step has none",
                            );
                        }
                        JobRunDraft::Script(self.value(&[&item[..], &[key("run")]].concat(), run))
                    }
                    (None, Some(reference)) => {
                        let with_path = [&item[..], &[key("with")]].concat();
                        let with = step
                            .with
                            .iter()
                            .map(|(k, v)| {
                                let kp = [&with_path[..], &[key_name(k)]].concat();
                                let vp = [&with_path[..], &[key(k)]].concat();
                                (self.value(&kp, k), self.value(&vp, v))
                            })
                            .collect();
                        let with_pos = if step.with.is_empty() {
                            self.at(&item)
                        } else {
                            self.at(&with_path)
                        };
                        JobRunDraft::Step {
                            step: self.value(&[&item[..], &[key("step")]].concat(), reference),
                            with,
                            with_pos,
                            templates: true,
                        }
                    }
                    (run, _) => {
                        let why = if run.is_some() {
                            "has both `run` and `step`; a step is one or the other"
                        } else {
                            "needs `run` (a script) or `step` (a step)"
                        };
                        self.issue(&item, format!("step `{}` {why}", name.value));
                        JobRunDraft::Script(At::new(String::new(), name.pos))
                    }
                };
                let timeout = step
                    .timeout
                    .as_ref()
                    .map(|t| self.value(&[&item[..], &[key("timeout")]].concat(), t));
                JobStepDraft { name, run, timeout }
            })
            .collect()
    }

    fn draft(mut self, raw: &RawPipeline) -> Draft {
        let secrets = raw
            .secrets
            .iter()
            .enumerate()
            .map(|(i, s)| self.value(&[key("secrets"), PathSeg::Index(i)], s))
            .collect();
        let env = self.vars(&[key("env")], &raw.env);
        let defaults = self.limits(&[key("defaults")], &raw.defaults);
        let services = raw
            .services
            .iter()
            .map(|(name, svc)| {
                let base = [key("services"), key(name)];
                ServiceDraft {
                    name: At::new(name.clone(), self.at(&[key("services"), key_name(name)])),
                    pos: self.at(&base),
                    image: svc.image.clone(),
                    command: svc.command.clone(),
                    env: svc
                        .env
                        .iter()
                        .map(|(k, v)| {
                            let env = [&base[..], &[key("env")]].concat();
                            (
                                At::new(k.clone(), self.at(&[&env[..], &[key_name(k)]].concat())),
                                At::new(v.clone(), self.at(&[&env[..], &[key(k)]].concat())),
                            )
                        })
                        .collect(),
                    ready: svc.ready.clone(),
                    ready_timeout: svc
                        .ready_timeout
                        .as_ref()
                        .map(|t| self.value(&[&base[..], &[key("ready_timeout")]].concat(), t)),
                    links: svc.links,
                }
            })
            .collect();
        let registries = raw
            .registries
            .iter()
            .map(|(name, r)| {
                let base = [key("registries"), key(name)];
                let at = |k: &str| [&base[..], &[key(k)]].concat();
                RegistryDraft {
                    name: At::new(name.clone(), self.at(&[key("registries"), key_name(name)])),
                    host: r.host.as_ref().map(|h| self.value(&at("host"), h)),
                    steps: r.steps.as_ref().map(|s| self.value(&at("steps"), s)),
                    username: r.username.as_ref().map(|u| self.value(&at("username"), u)),
                    password: r.password.as_ref().map(|p| self.value(&at("password"), p)),
                }
            })
            .collect();
        let mut stages = Vec::new();
        for (name, s) in &raw.stages {
            let base = vec![key("stages"), key(name)];
            let at = |k: &str| [base.clone(), vec![key(k)]].concat();
            // A stage whose name is not valid is reported by the validation only.
            let checked = name.parse::<sentinel_api::StageName>().is_ok();
            if checked && s.after_steps.is_some() && s.steps.is_none() {
                self.issue(
                    &at("after_steps"),
                    format!("stage `{name}` has `after_steps` but no `steps`; after-steps belong to a job"),
                );
            }
            if checked
                && s.commit.is_some()
                && s.steps.is_none()
                && s.run.is_none()
                && s.image_command != Some(true)
            {
                self.issue(
                    &at("commit"),
                    "`commit:` commits a container stage's or a job's container: give the stage `run:` or `steps:`",
                );
            }
            if checked
                && s.image_command.is_some()
                && (s.run.is_some() || s.step.is_some() || s.steps.is_some() || s.build.is_some())
            {
                self.issue(
                    &at("image_command"),
                    "`image_command: true` runs the image's own command instead of a script: remove `run:` (or this)",
                );
            }
            if checked
                && s.docker.is_some()
                && ((s.run.is_none() && s.image_command != Some(true))
                    || s.step.is_some()
                    || s.steps.is_some()
                    || s.build.is_some())
            {
                self.issue(
                    &at("docker"),
                    "`docker:` gives a container stage (`run:`) a Docker endpoint of its own",
                );
            }
            let action = match (&s.run, &s.step) {
                _ if s.build.is_some() => {
                    let others: Vec<&str> = [
                        ("run", s.run.is_some()),
                        ("step", s.step.is_some()),
                        ("steps", s.steps.is_some()),
                        ("image", s.image.is_some()),
                        ("with", !s.with.is_empty()),
                        ("cache", s.cache.is_some()),
                    ]
                    .into_iter()
                    .filter_map(|(k, on)| on.then_some(k))
                    .collect();
                    match others.first() {
                        Some(other) => {
                            if checked {
                                self.issue(
                                    &at(other),
                                    format!(
                                        "stage `{name}` builds an image: `{other}` belongs to other kinds of stage"
                                    ),
                                );
                            }
                            None
                        }
                        None => Some(ActionDraft::Build(Box::new(
                            self.build(&at("build"), s.build.as_ref().expect("checked")),
                        ))),
                    }
                }
                _ if s.steps.is_some() && (s.run.is_some() || s.step.is_some()) => {
                    if checked {
                        let other = if s.run.is_some() { "run" } else { "step" };
                        self.issue(
                            &at("steps"),
                            format!(
                                "stage `{name}` has both `{other}` and `steps`; a stage is one or the other"
                            ),
                        );
                    }
                    None
                }
                (None, None) if s.steps.is_some() => {
                    if checked && !s.with.is_empty() {
                        self.issue(
                            &at("with"),
                            "`with:` sets a step's settings; jobs use `env:`",
                        );
                    }
                    let steps =
                        self.job_steps(&at("steps"), s.steps.as_deref().unwrap_or(&[]), "step");
                    let after_steps = self.job_steps(
                        &at("after_steps"),
                        s.after_steps.as_deref().unwrap_or(&[]),
                        "after-step",
                    );
                    if checked && steps.is_empty() {
                        self.issue(&at("steps"), format!("job `{name}` has no steps"));
                    }
                    Some(ActionDraft::Job {
                        image: s.image.as_ref().map(|i| self.value(&at("image"), i)),
                        steps,
                        after_steps,
                        shell: Shell::Strict,
                        commit: s.commit.as_ref().map(|c| self.value(&at("commit"), c)),
                    })
                }
                (Some(_), Some(_)) => {
                    if checked {
                        self.issue(
                            &at("step"),
                            format!(
                                "stage `{name}` has both `run` and `step`; a stage is one or the other"
                            ),
                        );
                    }
                    None
                }
                (None, None) if s.image_command == Some(true) => {
                    if checked && s.image.is_none() {
                        self.issue(
                            &at("image_command"),
                            "`image_command: true` runs the image's own command: name the image (`image:`)",
                        );
                    }
                    Some(ActionDraft::Container {
                        image: s.image.as_ref().map(|i| self.value(&at("image"), i)),
                        script: self.value(&at("image_command"), &String::new()),
                        shell: Shell::Strict,
                        docker: s.docker.map(|d| self.value(&at("docker"), &d)),
                        image_command: true,
                        commit: s.commit.as_ref().map(|c| self.value(&at("commit"), c)),
                    })
                }
                (None, None) => {
                    if checked {
                        self.issue(
                            &base,
                            format!(
                                "stage `{name}` has neither `run` (a container), `step` (a WebAssembly step), `steps` (a job) nor `build` (an image)"
                            ),
                        );
                    }
                    None
                }
                (Some(script), None) => {
                    if checked && !s.with.is_empty() {
                        self.issue(
                            &at("with"),
                            "`with:` sets a step's settings; container stages use `env:`",
                        );
                    }
                    Some(ActionDraft::Container {
                        image: s.image.as_ref().map(|i| self.value(&at("image"), i)),
                        script: self.value(&at("run"), script),
                        shell: Shell::Strict,
                        docker: s.docker.map(|d| self.value(&at("docker"), &d)),
                        image_command: false,
                        commit: s.commit.as_ref().map(|c| self.value(&at("commit"), c)),
                    })
                }
                (None, Some(step)) => {
                    if checked && s.image.is_some() {
                        self.issue(&at("image"), "a step stage has no image; remove `image:`");
                    }
                    if checked && !s.env.is_empty() {
                        self.issue(
                            &at("env"),
                            "a step gets only its `with:` settings; `env:` is for container stages",
                        );
                    }
                    let with_base = at("with");
                    Some(ActionDraft::Step {
                        step: self.value(&at("step"), step),
                        with: s
                            .with
                            .iter()
                            .map(|(k, v)| {
                                (
                                    At::new(
                                        k.clone(),
                                        self.at(&[&with_base[..], &[key_name(k)]].concat()),
                                    ),
                                    At::new(
                                        v.clone(),
                                        self.at(&[&with_base[..], &[key(k)]].concat()),
                                    ),
                                )
                            })
                            .collect(),
                        with_pos: if s.with.is_empty() {
                            self.at(&base)
                        } else {
                            self.at(&with_base)
                        },
                    })
                }
            };
            let list = |field: &str, items: Vec<&str>| -> Vec<At<String>> {
                items
                    .into_iter()
                    .enumerate()
                    .map(|(i, d)| {
                        At::new(
                            d.to_string(),
                            self.at(&[&at(field)[..], &[PathSeg::Index(i)]].concat()),
                        )
                    })
                    .collect()
            };
            let after = list("after", s.after.items());
            let volumes = s
                .volumes
                .items()
                .into_iter()
                .enumerate()
                .map(|(i, v)| {
                    let item = [&at("volumes")[..], &[PathSeg::Index(i)]].concat();
                    match v {
                        RawVolume::Stage(stage) => VolumeDraft {
                            stage: self.value(&item, stage),
                            path: None,
                        },
                        RawVolume::At { stage, path } => VolumeDraft {
                            stage: self.value(&[&item[..], &[key("stage")]].concat(), stage),
                            path: Some(self.value(&[&item[..], &[key("path")]].concat(), path)),
                        },
                    }
                })
                .collect();
            let limits = self.limits(
                &base,
                &RawDefaults {
                    timeout: s.timeout.clone(),
                    idle_timeout: s.idle_timeout.clone(),
                    memory: s.memory.clone(),
                    cpus: s.cpus,
                    network: s.network.clone(),
                    log_limit: s.log_limit.clone(),
                    pids: s.pids,
                    user: s.user.clone(),
                    reuse: s.reuse,
                    placement: s.placement.clone(),
                },
            );
            stages.push(StageDraft {
                name: At::new(name.clone(), self.at(&[key("stages"), key_name(name)])),
                pos: self.at(&base),
                action,
                after,
                volumes,
                volumes_field: "volumes",
                env: self.vars(&at("env"), &s.env),
                when: match s.when {
                    RawWhen::OnSuccess => When::OnSuccess,
                    RawWhen::OnFailure => When::OnFailure,
                    RawWhen::Always => When::Always,
                },
                sensitive: s.sensitive,
                approval: s
                    .approval
                    .clone()
                    .map(|a| At::new(a, self.at(&at("approval")))),
                limits,
                cache: s.cache.as_ref().map(|c| self.cache(&at("cache"), c)),
                retry: s.retry.as_ref().map(|r| self.retry(&at("retry"), r)),
                notes: Vec::new(),
            });
        }
        Draft {
            dialect: Dialect::Sentinel,
            version: raw.version,
            name: raw.name.clone(),
            box_image: raw.box_image.clone(),
            env,
            secrets,
            defaults,
            services,
            registries,
            stages_pos: self.at(&[key("stages")]),
            stages,
            workspace: WorkspaceDraft {
                git: raw.workspace.git,
                dirs: raw
                    .workspace
                    .dirs
                    .iter()
                    .enumerate()
                    .map(|(i, d)| {
                        self.value(&[key("workspace"), key("dirs"), PathSeg::Index(i)], d)
                    })
                    .collect(),
            },
            issues: self.issues,
        }
    }
}
