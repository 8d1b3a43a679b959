//! Pure validation: raw schema → [`Plan`]. No I/O happens here; problems are
//! reported with the path of the offending value, which the caller turns
//! into a line and column.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use sentinel_api::StageName;

use crate::de::did_you_mean;
use crate::plan::{Action, EnvValue, Limits, Network, Plan, ServicePlan, StagePlan, When};
use crate::raw::{RawDefaults, RawPipeline, RawStage, RawWhen};
use crate::step::StepAnswers;
use crate::template::{self, Ref, Template};
use crate::yaml::PathSeg;

/// Most stages a pipeline may have.
pub const MAX_STAGES: usize = 500;

/// One problem, located by a path into the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub path: Vec<PathSeg>,
    pub message: String,
    pub hint: Option<String>,
}

fn key(s: &str) -> PathSeg {
    PathSeg::Key(s.to_string())
}

fn key_name(s: &str) -> PathSeg {
    PathSeg::KeyName(s.to_string())
}

struct Ctx<'a> {
    raw: &'a RawPipeline,
    issues: Vec<Issue>,
    steps: &'a StepAnswers,
    step_names: &'a [String],
}

impl Ctx<'_> {
    fn issue(&mut self, path: Vec<PathSeg>, message: impl Into<String>, hint: Option<String>) {
        self.issues.push(Issue {
            path,
            message: message.into(),
            hint,
        });
    }
}

/// An environment variable name a stage may set.
fn env_name_ok(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

/// Parses sizes like `512m`, `2g`, `64k`, `1048576` (binary units).
pub fn parse_bytes(s: &str) -> Option<u64> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let t = t.strip_suffix('i').unwrap_or(t);
    let (num, mult) = match t.chars().last()? {
        'k' => (&t[..t.len() - 1], 1u64 << 10),
        'm' => (&t[..t.len() - 1], 1 << 20),
        'g' => (&t[..t.len() - 1], 1 << 30),
        't' => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let n: f64 = num.trim().parse().ok()?;
    (n.is_finite() && n >= 0.0).then_some((n * mult as f64) as u64)
}

fn parse_duration(s: &str) -> Option<Duration> {
    humantime::parse_duration(s.trim())
        .ok()
        .filter(|d| !d.is_zero())
}

/// Validates a raw pipeline. `default_name` names the pipeline when the file
/// does not (the folder's name).
pub fn validate(
    raw: &RawPipeline,
    default_name: &str,
    steps: &StepAnswers,
    step_names: &[String],
) -> Result<Plan, Vec<Issue>> {
    let mut cx = Ctx {
        raw,
        issues: Vec::new(),
        steps,
        step_names,
    };

    if raw.version != 1 {
        cx.issue(
            vec![key("version")],
            format!(
                "unsupported version {}; this Sentinel reads version 1",
                raw.version
            ),
            None,
        );
        return Err(cx.issues);
    }

    // Secrets.
    let mut secrets = Vec::new();
    for (i, s) in raw.secrets.iter().enumerate() {
        if !env_name_ok(s) {
            cx.issue(
                vec![key("secrets"), PathSeg::Index(i)],
                format!("secret name `{s}` is not a valid variable name"),
                None,
            );
        } else if secrets.contains(s) {
            cx.issue(
                vec![key("secrets"), PathSeg::Index(i)],
                format!("secret `{s}` is declared twice"),
                None,
            );
        } else {
            secrets.push(s.clone());
        }
    }

    // Pipeline env: literals, `${run.*}`, `${git.*}`, or taken from the host.
    let mut env = BTreeMap::new();
    for (name, value) in &raw.env {
        let path = vec![key("env"), key(name)];
        check_env_name(&mut cx, vec![key("env"), key_name(name)], name);
        match value {
            None => {
                env.insert(name.clone(), EnvValue::FromHost);
            }
            Some(v) => {
                if let Some(t) = parse_template(&mut cx, path.clone(), v) {
                    for r in t.refs() {
                        if !matches!(
                            r,
                            Ref::RunId | Ref::GitCommit | Ref::GitBranch | Ref::GitRepo
                        ) {
                            cx.issue(
                                path.clone(),
                                format!("`{r}` cannot be used in the pipeline's `env:`"),
                                Some("pipeline-wide variables may use ${run.*} and ${git.*}; name secrets and stage outputs in the stage that uses them".into()),
                            );
                        }
                    }
                    env.insert(name.clone(), EnvValue::Value(t));
                }
            }
        }
    }

    let defaults = &raw.defaults;
    let default_limits = limits(
        &mut cx,
        vec![key("defaults")],
        defaults,
        None,
        !raw.services.is_empty(),
    );

    // Services.
    let mut services = Vec::new();
    for (name, svc) in &raw.services {
        let path = vec![key("services"), key(name)];
        let dns_ok = name.len() <= 63
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && name.as_bytes().first().is_some_and(u8::is_ascii_lowercase);
        if !dns_ok {
            cx.issue(
                vec![key("services"), key_name(name)],
                format!("service name `{name}` must be a host name: lower-case letters, digits and `-`, starting with a letter"),
                None,
            );
        }
        let image = svc.image.clone().or_else(|| raw.box_image.clone());
        if image.is_none() {
            cx.issue(
                path.clone(),
                format!("service `{name}` has no `image` and the pipeline has no `box`"),
                None,
            );
        }
        let mut svc_env = BTreeMap::new();
        for (k, v) in &svc.env {
            check_env_name(
                &mut cx,
                vec![key("services"), key(name), key("env"), key_name(k)],
                k,
            );
            let vpath = vec![key("services"), key(name), key("env"), key(k)];
            if let Some(t) = parse_template(&mut cx, vpath.clone(), v) {
                check_refs(&mut cx, &vpath, &t, None, &secrets);
                if let Some(r) = t.refs().find(|r| r.stage().is_some()) {
                    cx.issue(
                        vpath,
                        format!("a service cannot use `{r}`: services start before the stages"),
                        None,
                    );
                }
                svc_env.insert(k.clone(), t);
            }
        }
        let ready_timeout = match &svc.ready_timeout {
            None => Duration::from_secs(60),
            Some(s) => parse_duration(s).unwrap_or_else(|| {
                cx.issue(
                    [path.clone(), vec![key("ready_timeout")]].concat(),
                    format!("`{s}` is not a duration"),
                    Some("write it like `30s`, `5m` or `1h30m`".into()),
                );
                Duration::from_secs(60)
            }),
        };
        services.push(ServicePlan {
            name: name.clone(),
            image: image.unwrap_or_default(),
            command: svc.command.clone(),
            env: svc_env,
            ready: svc.ready.clone(),
            ready_timeout,
        });
    }
    // Stages.
    if raw.stages.is_empty() {
        cx.issue(vec![key("stages")], "the pipeline has no stages", None);
    }
    if raw.stages.len() > MAX_STAGES {
        cx.issue(
            vec![key("stages")],
            format!(
                "the pipeline has {} stages; the limit is {MAX_STAGES}",
                raw.stages.len()
            ),
            None,
        );
        return Err(cx.issues);
    }
    let names: Vec<&str> = raw.stages.keys().map(String::as_str).collect();
    let mut stages = Vec::new();
    for (name, stage) in &raw.stages {
        let parsed: StageName = match name.parse() {
            Ok(n) => n,
            Err(e) => {
                cx.issue(vec![key("stages"), key_name(name)], e.to_string(), None);
                continue;
            }
        };
        if let Some(plan) = stage_plan(&mut cx, &names, &secrets, &default_limits, parsed, stage) {
            stages.push(plan);
        }
    }

    if !cx.issues.is_empty() {
        return Err(cx.issues);
    }

    add_finalizer_edges(&mut stages);
    let stages = match topo_sort(stages) {
        Ok(s) => s,
        Err((cycle, first)) => {
            let path = cycle
                .iter()
                .map(StageName::as_str)
                .collect::<Vec<_>>()
                .join(" → ");
            cx.issue(
                vec![key("stages"), key_name(first.as_str())],
                format!("dependency cycle: {path}"),
                Some(
                    "remove one of these edges (`after:`, a `${stages…}` reference or `volumes:`)"
                        .into(),
                ),
            );
            return Err(cx.issues);
        }
    };

    let stages = derive_sensitivity(stages);
    Ok(Plan {
        version: raw.version,
        name: raw.name.clone().unwrap_or_else(|| default_name.to_string()),
        secrets,
        env,
        services,
        stages,
    })
}

fn check_env_name(cx: &mut Ctx<'_>, path: Vec<PathSeg>, name: &str) {
    if !env_name_ok(name) {
        cx.issue(
            path,
            format!("`{name}` is not a valid variable name"),
            Some("use letters, digits and `_`, not starting with a digit".into()),
        );
    } else if name.starts_with("SENTINEL_") {
        cx.issue(
            path,
            format!("`{name}`: names starting with `SENTINEL_` are reserved for Sentinel"),
            None,
        );
    }
}

fn parse_template(cx: &mut Ctx<'_>, path: Vec<PathSeg>, value: &str) -> Option<Template> {
    match template::parse(value) {
        Ok(t) => Some(t),
        Err(e) => {
            cx.issue(path, e.message, e.hint);
            None
        }
    }
}

/// Checks that every reference of `t` names something that exists.
fn check_refs(
    cx: &mut Ctx<'_>,
    path: &[PathSeg],
    t: &Template,
    this: Option<&StageName>,
    secrets: &[String],
) {
    for r in t.refs() {
        match r {
            Ref::Env(n) if !cx.raw.env.contains_key(n) => {
                let hint = did_you_mean(n, cx.raw.env.keys().map(String::as_str)).or_else(|| {
                    Some(format!(
                        "declare it in the pipeline's `env:` (`{n}: ~` takes it from the host)"
                    ))
                });
                cx.issue(path.to_vec(), format!("unknown variable `{r}`"), hint);
            }
            Ref::Secret(n) if !secrets.contains(n) => {
                let hint = did_you_mean(n, secrets.iter().map(String::as_str))
                    .or_else(|| Some("declare it in the pipeline's `secrets:` list".into()));
                cx.issue(path.to_vec(), format!("unknown secret `{r}`"), hint);
            }
            Ref::StageOutput(s) | Ref::StageNamedOutput(s, _) => {
                if Some(s) == this {
                    cx.issue(
                        path.to_vec(),
                        format!("stage `{s}` cannot use its own output"),
                        None,
                    );
                } else if !cx.raw.stages.contains_key(s.as_str()) {
                    let hint = did_you_mean(s.as_str(), cx.raw.stages.keys().map(String::as_str));
                    cx.issue(path.to_vec(), format!("unknown stage `{s}` in `{r}`"), hint);
                }
            }
            _ => {}
        }
    }
}

fn limits(
    cx: &mut Ctx<'_>,
    path: Vec<PathSeg>,
    d: &RawDefaults,
    base: Option<&Limits>,
    has_services: bool,
) -> Limits {
    let at = |k: &str| [path.clone(), vec![key(k)]].concat();
    let timeout = match &d.timeout {
        Some(s) => parse_duration(s).unwrap_or_else(|| {
            cx.issue(
                at("timeout"),
                format!("`{s}` is not a duration"),
                Some("write it like `90s`, `20m` or `1h30m`".into()),
            );
            Limits::DEFAULT_TIMEOUT
        }),
        None => base.map_or(Limits::DEFAULT_TIMEOUT, |b| b.timeout),
    };
    let mut bytes = |field: &str, v: &Option<String>, default: u64, min: u64| match v {
        Some(s) => match parse_bytes(s) {
            Some(n) if n >= min => n,
            Some(_) => {
                cx.issue(
                    at(field),
                    format!("`{s}` is too small; the least is {min} bytes"),
                    None,
                );
                default
            }
            None => {
                cx.issue(
                    at(field),
                    format!("`{s}` is not a size"),
                    Some("write it like `512m`, `2g` or a number of bytes".into()),
                );
                default
            }
        },
        None => default,
    };
    let memory = bytes(
        "memory",
        &d.memory,
        base.map_or(Limits::DEFAULT_MEMORY, |b| b.memory),
        6 << 20,
    );
    let log_limit = bytes(
        "log_limit",
        &d.log_limit,
        base.map_or(Limits::DEFAULT_LOG_LIMIT, |b| b.log_limit),
        1024,
    );
    let cpus = match d.cpus {
        Some(c) if !(c > 0.0 && c <= 1024.0) => {
            cx.issue(
                at("cpus"),
                format!("`{c}` CPUs is not a usable limit"),
                Some("use a positive number such as `0.5` or `2`".into()),
            );
            None
        }
        Some(c) => Some(c),
        None => base.and_then(|b| b.cpus),
    };
    let network = match d.network.as_deref() {
        Some("none") => Network::None,
        Some("bridge") => Network::Bridge,
        Some("run") => Network::Run,
        Some(other) => {
            let hint = did_you_mean(other, ["none", "bridge", "run"])
                .or_else(|| Some("use `none`, `bridge` or `run`".into()));
            cx.issue(at("network"), format!("unknown network `{other}`"), hint);
            Network::None
        }
        None => base.map_or(
            if has_services {
                Network::Run
            } else {
                Network::Bridge
            },
            |b| b.network,
        ),
    };
    let pids = match d.pids {
        Some(0) => {
            cx.issue(at("pids"), "`pids` must be at least 1", None);
            Limits::DEFAULT_PIDS
        }
        Some(p) => p,
        None => base.map_or(Limits::DEFAULT_PIDS, |b| b.pids),
    };
    let user = match &d.user {
        Some(u) => {
            let ok = u.split(':').count() <= 2
                && u.split(':')
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
            if !ok {
                cx.issue(
                    at("user"),
                    format!("user `{u}` must be numeric: `uid` or `uid:gid`"),
                    None,
                );
            }
            Some(u.clone())
        }
        None => base.and_then(|b| b.user.clone()),
    };
    Limits {
        timeout,
        memory,
        cpus,
        network,
        log_limit,
        pids,
        user,
    }
}

fn stage_plan(
    cx: &mut Ctx<'_>,
    names: &[&str],
    secrets: &[String],
    defaults: &Limits,
    name: StageName,
    s: &RawStage,
) -> Option<StagePlan> {
    let base = vec![key("stages"), key(name.as_str())];
    let at = |k: &str| [base.clone(), vec![key(k)]].concat();
    let before = cx.issues.len();

    let action = match (&s.run, &s.step) {
        (Some(_), Some(_)) => {
            cx.issue(
                at("step"),
                format!("stage `{name}` has both `run` and `step`; a stage is one or the other"),
                None,
            );
            None
        }
        (None, None) => {
            cx.issue(
                base.clone(),
                format!(
                    "stage `{name}` has neither `run` (a container) nor `step` (a WebAssembly step)"
                ),
                None,
            );
            None
        }
        (Some(script), None) => {
            if !s.with.is_empty() {
                cx.issue(
                    at("with"),
                    "`with:` sets a step's settings; container stages use `env:`",
                    None,
                );
            }
            match s.image.clone().or_else(|| cx.raw.box_image.clone()) {
                Some(image) if !image.trim().is_empty() => Some(Action::Container {
                    image,
                    script: script.clone(),
                }),
                _ => {
                    cx.issue(
                        base.clone(),
                        format!("stage `{name}` has no `image` and the pipeline has no `box`"),
                        Some("set `image:` on the stage or `box:` at the top of the file".into()),
                    );
                    None
                }
            }
        }
        (None, Some(step)) => {
            if s.image.is_some() {
                cx.issue(
                    at("image"),
                    "a step stage has no image; remove `image:`",
                    None,
                );
            }
            if !s.env.is_empty() {
                cx.issue(
                    at("env"),
                    "a step gets only its `with:` settings; `env:` is for container stages",
                    None,
                );
            }
            let mut with = BTreeMap::new();
            for (k, v) in &s.with {
                let p = [base.clone(), vec![key("with"), key(k)]].concat();
                if let Some(t) = parse_template(cx, p.clone(), v) {
                    check_refs(cx, &p, &t, Some(&name), secrets);
                    with.insert(k.clone(), t);
                }
            }
            match cx.steps.get(step) {
                Some(Ok(resolved)) => {
                    let manifest = &resolved.manifest;
                    for k in s.with.keys() {
                        if !manifest.settings.contains_key(k) {
                            let hint =
                                did_you_mean(k, manifest.settings.keys().map(String::as_str))
                                    .or_else(|| {
                                        Some(format!(
                                            "`{}` has the settings: {}",
                                            manifest.name,
                                            manifest
                                                .settings
                                                .keys()
                                                .cloned()
                                                .collect::<Vec<_>>()
                                                .join(", ")
                                        ))
                                    });
                            cx.issue(
                                [base.clone(), vec![key("with"), key_name(k)]].concat(),
                                format!("step `{}` has no setting `{k}`", manifest.name),
                                hint,
                            );
                        }
                    }
                    for (k, spec) in &manifest.settings {
                        if with.contains_key(k) {
                            continue;
                        }
                        match &spec.default {
                            Some(d) => {
                                with.insert(k.clone(), Template::literal(d.clone()));
                            }
                            None if spec.required => cx.issue(
                                if s.with.is_empty() {
                                    base.clone()
                                } else {
                                    at("with")
                                },
                                format!("step `{}` needs the setting `{k}`", manifest.name),
                                Some(format!("add `{k}: …` under `with:`")),
                            ),
                            None => {}
                        }
                    }
                    Some(Action::Step {
                        step: step.clone(),
                        with,
                        resolved: Box::new(resolved.clone()),
                    })
                }
                Some(Err(e)) => {
                    let bare = step.split('@').next().unwrap_or(step);
                    let hint = did_you_mean(bare, cx.step_names.iter().map(String::as_str));
                    cx.issue(at("step"), e.clone(), hint);
                    None
                }
                None => {
                    cx.issue(at("step"), format!("step `{step}` was not resolved"), None);
                    None
                }
            }
        }
    };

    let mut needs = BTreeSet::new();
    let dep_list = |cx: &mut Ctx<'_>, field: &str, items: Vec<&str>| -> Vec<StageName> {
        let mut out = Vec::new();
        for (i, dep) in items.into_iter().enumerate() {
            let p = [base.clone(), vec![key(field), PathSeg::Index(i)]].concat();
            if dep == name.as_str() {
                cx.issue(p, format!("stage `{name}` cannot depend on itself"), None);
            } else if !names.contains(&dep) {
                let hint = did_you_mean(dep, names.iter().copied());
                cx.issue(p, format!("unknown stage `{dep}` in `{field}`"), hint);
            } else if let Ok(d) = dep.parse::<StageName>() {
                out.push(d);
            }
        }
        out
    };
    let after = dep_list(cx, "after", s.after.items());
    let volumes = dep_list(cx, "volumes", s.volumes.items());
    needs.extend(after.iter().cloned());
    needs.extend(volumes.iter().cloned());

    let mut env = BTreeMap::new();
    for (k, v) in &s.env {
        check_env_name(
            cx,
            [base.clone(), vec![key("env"), key_name(k)]].concat(),
            k,
        );
        let p = [base.clone(), vec![key("env"), key(k)]].concat();
        if let Some(t) = parse_template(cx, p.clone(), v) {
            check_refs(cx, &p, &t, Some(&name), secrets);
            env.insert(k.clone(), t);
        }
    }

    let limits = limits(
        cx,
        base.clone(),
        &RawDefaults {
            timeout: s.timeout.clone(),
            memory: s.memory.clone(),
            cpus: s.cpus,
            network: s.network.clone(),
            log_limit: s.log_limit.clone(),
            pids: s.pids,
            user: s.user.clone(),
        },
        Some(defaults),
        false,
    );

    let action = action?;
    if cx.issues.len() > before {
        return None;
    }
    let when = match s.when {
        RawWhen::OnSuccess => When::OnSuccess,
        RawWhen::OnFailure => When::OnFailure,
        RawWhen::Always => When::Always,
    };
    let mut plan = StagePlan {
        name,
        action,
        needs: Vec::new(),
        when,
        finalizer: false,
        env,
        volumes,
        sensitive: s.sensitive,
        limits,
    };
    for t in plan.templates() {
        needs.extend(t.refs().filter_map(Ref::stage).cloned());
    }
    plan.finalizer = when != When::OnSuccess && needs.is_empty();
    plan.needs = needs.into_iter().collect();
    Some(plan)
}

/// A finalizer (a `when: always | on_failure` stage with no dependencies of
/// its own) comes after every stage that is not itself a finalizer.
fn add_finalizer_edges(stages: &mut [StagePlan]) {
    let regular: Vec<StageName> = stages
        .iter()
        .filter(|s| !s.finalizer)
        .map(|s| s.name.clone())
        .collect();
    for s in stages.iter_mut().filter(|s| s.finalizer) {
        s.needs = regular.clone();
        s.needs.sort();
    }
}

/// Orders stages so each comes after its needs (file order among the
/// ready ones); on a cycle returns the cycle's path and its first stage.
fn topo_sort(stages: Vec<StagePlan>) -> Result<Vec<StagePlan>, (Vec<StageName>, StageName)> {
    let mut done: BTreeSet<StageName> = BTreeSet::new();
    let mut left = stages;
    let mut out = Vec::with_capacity(left.len());
    while !left.is_empty() {
        let before = left.len();
        let mut i = 0;
        while i < left.len() {
            if left[i].needs.iter().all(|n| done.contains(n)) {
                let s = left.remove(i);
                done.insert(s.name.clone());
                out.push(s);
            } else {
                i += 1;
            }
        }
        if left.len() == before {
            return Err(find_cycle(&left));
        }
    }
    Ok(out)
}

fn find_cycle(left: &[StagePlan]) -> (Vec<StageName>, StageName) {
    // Every stage left has a need among the stages left: walk until a repeat.
    let pending: BTreeSet<&StageName> = left.iter().map(|s| &s.name).collect();
    let mut path: Vec<StageName> = vec![left[0].name.clone()];
    loop {
        let current = path.last().cloned().unwrap_or_else(|| left[0].name.clone());
        let stage = left.iter().find(|s| s.name == current).unwrap_or(&left[0]);
        let Some(next) = stage.needs.iter().find(|n| pending.contains(n)) else {
            return (path, left[0].name.clone());
        };
        if let Some(start) = path.iter().position(|p| p == next) {
            // Report the cycle in the direction "runs before": a → b means b is after a.
            let mut cycle: Vec<StageName> = path[start..].to_vec();
            cycle.reverse();
            cycle.push(cycle[0].clone());
            let first = cycle[0].clone();
            return (cycle, first);
        }
        path.push(next.clone());
    }
}

/// A step's output is a value taken from its inputs: a step that reads a
/// sensitive stage's output is itself sensitive (a plucked key is a secret).
/// Stages are in topological order, so one pass sees every source first.
fn derive_sensitivity(mut stages: Vec<StagePlan>) -> Vec<StagePlan> {
    let mut sensitive: BTreeSet<StageName> = BTreeSet::new();
    for s in stages.iter_mut() {
        let reads_sensitive = s
            .templates()
            .flat_map(|t| t.refs())
            .filter_map(Ref::stage)
            .any(|n| sensitive.contains(n));
        if matches!(s.action, Action::Step { .. }) && reads_sensitive {
            s.sensitive = true;
        }
        if s.sensitive {
            sensitive.insert(s.name.clone());
        }
    }
    stages
}
