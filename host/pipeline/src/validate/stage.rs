//! One stage's plan: its action, environment, limits, services and references.

use std::collections::{BTreeMap, BTreeSet};

use sentinel_api::StageName;

use super::{
    Ctx, check_env_name, check_refs, key, key_name, parse_bytes, parse_duration, parse_template,
};
use crate::de::did_you_mean;
use crate::plan::{Action, Limits, Network, StagePlan, When};
use crate::raw::{RawDefaults, RawStage, RawWhen};
use crate::template::{Ref, Template};
use crate::yaml::PathSeg;

pub(super) fn limits(
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

pub(super) fn stage_plan(
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
