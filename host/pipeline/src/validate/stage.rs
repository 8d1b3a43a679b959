//! One stage's plan: its action, environment, limits, volumes and references.

use std::collections::{BTreeMap, BTreeSet};

use sentinel_api::StageName;

use super::build::{build_action, image_ref_problem};
use super::{Ctx, check_env_name, check_refs, parse_bytes, parse_duration, parse_template};
use crate::cache::{CachePlan, KeyPart};
use crate::de::did_you_mean;
use crate::draft::{
    ActionDraft, At, CacheDraft, EnvDraft, JobRunDraft, JobStepDraft, LimitsDraft, StageDraft,
};
use crate::plan::{
    Action, ContainerAction, EnvValue, JobAction, JobRun, JobStep, Limits, Network, StagePlan,
    StepAction, Volume, When,
};
use crate::template::{Ref, Template};

/// A stage's `cache:`, checked.
fn cache(cx: &mut Ctx<'_>, c: &CacheDraft, is_step: bool) -> Option<CachePlan> {
    if is_step {
        cx.issue(
            c.pos,
            "`cache:` keeps a container's or a job's files between runs; a WebAssembly step has none",
            None,
        );
        return None;
    }
    let before = cx.issues.len();
    let key = |cx: &mut Ctx<'_>, k: &At<String>| match crate::cache::parse_key(&k.value) {
        Ok(parsed) => {
            let refs = Template(
                parsed
                    .0
                    .iter()
                    .filter_map(|p| match p {
                        KeyPart::Ref(r) => Some(crate::template::Part::Ref(r.clone())),
                        _ => None,
                    })
                    .collect(),
            );
            check_refs(cx, k.pos, &refs, None, &[]);
            Some(parsed)
        }
        Err(e) => {
            cx.issue(k.pos, e.message, e.hint);
            None
        }
    };
    let main = key(cx, &c.key);
    let restore_keys: Vec<_> = c.restore_keys.iter().filter_map(|k| key(cx, k)).collect();
    let mut paths = Vec::new();
    for p in &c.paths {
        match crate::cache::parse_path(&p.value) {
            Ok(path) if !paths.contains(&path) => paths.push(path),
            Ok(_) => {}
            Err(why) => cx.issue(
                p.pos,
                format!("the cache path `{}` {why}", p.value),
                Some(format!(
                    "cache folders of the workspace, like `target`, or `{}` (the stage's own cache folder)",
                    crate::cache::STAGE_CACHE
                )),
            ),
        }
    }
    if c.paths.is_empty() {
        cx.issue(c.pos, "`cache:` has no `paths`; name what it keeps", None);
    }
    if cx.issues.len() > before {
        return None;
    }
    Some(CachePlan {
        key: main?,
        restore_keys,
        paths,
    })
}

/// A duration as written (`90s`, `20m`, `1h30m`); `None` (reported) when
/// it is not one.
fn duration(cx: &mut Ctx<'_>, s: &At<String>) -> Option<std::time::Duration> {
    let d = parse_duration(&s.value);
    if d.is_none() {
        cx.issue(
            s.pos,
            format!("`{}` is not a duration", s.value),
            Some("write it like `90s`, `20m` or `1h30m`".into()),
        );
    }
    d
}

pub(super) fn limits(
    cx: &mut Ctx<'_>,
    d: &LimitsDraft,
    base: Option<&Limits>,
    has_services: bool,
) -> Limits {
    let timeout = match &d.timeout {
        Some(s) => duration(cx, s).unwrap_or(Limits::DEFAULT_TIMEOUT),
        None => base.map_or(Limits::DEFAULT_TIMEOUT, |b| b.timeout),
    };
    let idle_timeout = match &d.idle_timeout {
        Some(s) => duration(cx, s),
        None => base.and_then(|b| b.idle_timeout),
    };
    let mut bytes = |v: &Option<At<String>>, default: u64, min: u64| match v {
        Some(s) => match parse_bytes(&s.value) {
            Some(n) if n >= min => n,
            Some(_) => {
                cx.issue(
                    s.pos,
                    format!("`{}` is too small; the least is {min} bytes", s.value),
                    None,
                );
                default
            }
            None => {
                cx.issue(
                    s.pos,
                    format!("`{}` is not a size", s.value),
                    Some("write it like `512m`, `2g` or a number of bytes".into()),
                );
                default
            }
        },
        None => default,
    };
    let memory = bytes(
        &d.memory,
        base.map_or(Limits::DEFAULT_MEMORY, |b| b.memory),
        6 << 20,
    );
    let log_limit = bytes(
        &d.log_limit,
        base.map_or(Limits::DEFAULT_LOG_LIMIT, |b| b.log_limit),
        1024,
    );
    let cpus = match &d.cpus {
        Some(c) if !(c.value > 0.0 && c.value <= 1024.0) => {
            cx.issue(
                c.pos,
                format!("`{}` CPUs is not a usable limit", c.value),
                Some("use a positive number such as `0.5` or `2`".into()),
            );
            None
        }
        Some(c) => Some(c.value),
        None => base.and_then(|b| b.cpus),
    };
    let network = match &d.network {
        Some(n) => match n.value.as_str() {
            "none" => Network::None,
            "bridge" => Network::Bridge,
            "run" => Network::Run,
            other => {
                let hint = did_you_mean(other, ["none", "bridge", "run"])
                    .or_else(|| Some("use `none`, `bridge` or `run`".into()));
                cx.issue(n.pos, format!("unknown network `{other}`"), hint);
                Network::None
            }
        },
        None => base.map_or(
            if has_services {
                Network::Run
            } else {
                Network::Bridge
            },
            |b| b.network,
        ),
    };
    let pids = match &d.pids {
        Some(p) if p.value == 0 => {
            cx.issue(p.pos, "`pids` must be at least 1", None);
            Limits::DEFAULT_PIDS
        }
        Some(p) => p.value,
        None => base.map_or(Limits::DEFAULT_PIDS, |b| b.pids),
    };
    let user = match &d.user {
        Some(u) => {
            let ok = u.value.split(':').count() <= 2
                && u.value
                    .split(':')
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
            if !ok {
                cx.issue(
                    u.pos,
                    format!("user `{}` must be numeric: `uid` or `uid:gid`", u.value),
                    None,
                );
            }
            Some(u.value.clone())
        }
        None => base.and_then(|b| b.user.clone()),
    };
    let reuse = match &d.reuse {
        Some(r) => r.value,
        None => base.is_some_and(|b| b.reuse),
    };
    let placement = match &d.placement {
        Some(p) => {
            for c in &p.value {
                if let Err(e) = crate::placement::Constraint::parse(c) {
                    cx.issue(
                        p.pos,
                        e,
                        Some("write `node.labels.KEY == VALUE`, or `!=`".into()),
                    );
                }
            }
            p.value.clone()
        }
        None => base.map(|b| b.placement.clone()).unwrap_or_default(),
    };
    Limits {
        placement,
        reuse,
        timeout,
        idle_timeout,
        memory,
        cpus,
        network,
        log_limit,
        pids,
        user,
    }
}

/// The action of a stage, once its meaning is checked.
fn action(
    cx: &mut Ctx<'_>,
    secrets: &[String],
    name: &StageName,
    s: &StageDraft,
) -> Option<Action> {
    match s.action.as_ref()? {
        ActionDraft::Container {
            image,
            script,
            shell,
            docker,
            image_command,
            commit,
        } => {
            if let Some(c) = commit
                && let Some(why) = image_ref_problem(&c.value)
            {
                cx.issue(
                    c.pos,
                    format!("`commit: {}` {why}", c.value),
                    Some("write it like `registry.example.com/team/app:1.2`".into()),
                );
            }
            let at = image.clone();
            let image = stage_image(cx, name, s, image.as_ref())?;
            let image_ref = match at.filter(|i| i.value.contains("${")) {
                Some(at) => {
                    let t = parse_template(cx, &at)?;
                    check_refs(cx, at.pos, &t, Some(name), secrets);
                    if let Some(r) = t.refs().find(|r| matches!(r, Ref::Secret(_))) {
                        cx.issue(
                            at.pos,
                            format!(
                                "an image name cannot use `{r}`: it is shown in every document"
                            ),
                            None,
                        );
                        return None;
                    }
                    Some(t)
                }
                None => None,
            };
            let docker = docker.as_ref().is_some_and(|d| d.value);
            if commit.is_some() && s.limits.reuse.as_ref().is_some_and(|r| r.value) {
                cx.issue(
                    s.pos,
                    format!("stage `{name}` has `commit:` and `reuse: true`: a shared container is not the stage's to commit"),
                    None,
                );
            }
            if docker && s.limits.reuse.as_ref().is_some_and(|r| r.value) {
                cx.issue(
                    s.pos,
                    format!("stage `{name}` has `docker: true` and `reuse: true`: its Docker endpoint is its own, a shared container has none"),
                    None,
                );
            }
            Some(Action::Container(ContainerAction {
                commit: commit.as_ref().map(|c| c.value.clone()),
                image_command: *image_command,
                docker,
                image,
                image_ref,
                script: script.value.clone(),
                shell: *shell,
            }))
        }
        ActionDraft::Job {
            image,
            steps,
            after_steps,
            shell,
            commit,
        } => {
            if let Some(c) = commit
                && let Some(why) = image_ref_problem(&c.value)
            {
                cx.issue(
                    c.pos,
                    format!("`commit: {}` {why}", c.value),
                    Some("write it like `registry.example.com/team/app:1.2`".into()),
                );
            }
            let mut seen = std::collections::BTreeSet::new();
            for step in steps.iter().chain(after_steps) {
                let n = &step.name.value;
                if n.trim().is_empty() || n.len() > 100 || n.contains('\n') {
                    cx.issue(
                        step.name.pos,
                        format!("step name `{n}` must be one line of 1 to 100 characters"),
                        None,
                    );
                } else if !seen.insert(n.clone()) {
                    cx.issue(
                        step.name.pos,
                        format!("job `{name}` has two steps named `{n}`"),
                        Some("give each step its own `name:`".into()),
                    );
                }
            }
            let image = stage_image(cx, name, s, image.as_ref());
            let job_steps = |cx: &mut Ctx<'_>, list: &[JobStepDraft]| -> Vec<JobStep> {
                list.iter()
                    .filter_map(|st| {
                        let run = match &st.run {
                            JobRunDraft::Script(script) => JobRun::Script(script.value.clone()),
                            JobRunDraft::Step {
                                step,
                                with,
                                with_pos,
                                templates,
                            } => JobRun::Step(step_action(
                                cx, secrets, name, step, with, *with_pos, *templates,
                            )?),
                        };
                        Some(JobStep {
                            name: st.name.value.clone(),
                            run,
                            timeout: st.timeout.as_ref().and_then(|t| duration(cx, t)),
                        })
                    })
                    .collect()
            };
            let steps = job_steps(cx, steps);
            let after_steps = job_steps(cx, after_steps);
            Some(Action::Job(JobAction {
                image: image?,
                steps,
                after_steps,
                shell: *shell,
                commit: commit.as_ref().map(|c| c.value.clone()),
            }))
        }
        ActionDraft::Build(b) => build_action(cx, secrets, name, b).map(Action::Build),
        ActionDraft::Step {
            step,
            with: given,
            with_pos,
        } => {
            let action = step_action(cx, secrets, name, step, given, *with_pos, true)?;
            if action.resolved.script.is_some() {
                cx.issue(
                    step.pos,
                    format!(
                        "`{}` is a script step: it runs in a job's container",
                        step.value
                    ),
                    Some(format!(
                        "make the stage a job: `steps: [{{step: {}}}]`",
                        step.value
                    )),
                );
                return None;
            }
            Some(Action::Step(action))
        }
    }
}

/// A step and its settings, checked against its manifest: every setting
/// known (a wercker manifest's script step takes any, as wercker did),
/// every required one given, defaults filled in. `templates`: the values
/// may hold `${…}` references; else they are taken as written.
fn step_action(
    cx: &mut Ctx<'_>,
    secrets: &[String],
    name: &StageName,
    step: &At<String>,
    given: &[(At<String>, At<String>)],
    with_pos: crate::yaml::Pos,
    templates: bool,
) -> Option<StepAction> {
    let mut with = BTreeMap::new();
    for (k, v) in given {
        if !templates {
            with.insert(k.value.clone(), Template::literal(v.value.clone()));
        } else if let Some(t) = parse_template(cx, v) {
            check_refs(cx, v.pos, &t, Some(name), secrets);
            with.insert(k.value.clone(), t);
        }
    }
    let resolved = match cx.steps.get(&step.value) {
        Some(Ok(resolved)) => resolved,
        Some(Err(e)) => {
            let (_, bare, _) = crate::step::split_reference(&step.value);
            let hint = did_you_mean(bare, cx.step_names.iter().map(String::as_str));
            cx.issue(step.pos, e.to_string(), hint);
            return None;
        }
        None => {
            cx.issue(
                step.pos,
                format!("step `{}` was not resolved", step.value),
                None,
            );
            return None;
        }
    };
    let manifest = &resolved.manifest;
    let lenient = resolved.script == Some(crate::script_step::ScriptManifest::Wercker);
    for (k, _) in given {
        if !lenient && !manifest.settings.contains_key(&k.value) {
            let hint = did_you_mean(&k.value, manifest.settings.keys().map(String::as_str))
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
                k.pos,
                format!("step `{}` has no setting `{}`", manifest.name, k.value),
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
            None if spec.required => {
                let hint = if templates {
                    format!("add `{k}: …` under `with:`")
                } else {
                    format!("add `{k}: …` to the step's settings")
                };
                cx.issue(
                    with_pos,
                    format!("step `{}` needs the setting `{k}`", manifest.name),
                    Some(hint),
                )
            }
            None => {}
        }
    }
    Some(StepAction {
        step: step.value.clone(),
        with,
        resolved: Box::new(resolved.clone()),
    })
}

/// The image of a container stage or job: its own, else the pipeline's `box`.
fn stage_image(
    cx: &mut Ctx<'_>,
    name: &StageName,
    s: &StageDraft,
    image: Option<&At<String>>,
) -> Option<String> {
    match image
        .map(|i| i.value.clone())
        .or_else(|| cx.draft.box_image.clone())
    {
        Some(image) if !image.trim().is_empty() => Some(image),
        _ => {
            let (message, hint) = if cx.draft.dialect == crate::Dialect::Wercker {
                (
                    format!("pipeline `{name}` has no `box`"),
                    "set `box:` at the top of the file or in the pipeline",
                )
            } else {
                (
                    format!("stage `{name}` has no `image` and the pipeline has no `box`"),
                    "set `image:` on the stage or `box:` at the top of the file",
                )
            };
            cx.issue(s.pos, message, Some(hint.into()));
            None
        }
    }
}

/// Where a path-form volume may be seen: an absolute path that hides
/// nothing Sentinel mounts.
fn volume_path_problem(path: &str) -> Option<&'static str> {
    if !path.starts_with('/') {
        return Some("must be an absolute path");
    }
    if path.split('/').any(|seg| seg == "..") {
        return Some("must not contain `..`");
    }
    let p = path.trim_end_matches('/');
    if p.is_empty() || p == "/workspace" || p == "/sentinel" || p.starts_with("/sentinel/") {
        return Some("would hide the workspace or Sentinel's own folder");
    }
    None
}

pub(super) fn stage_plan(
    cx: &mut Ctx<'_>,
    secrets: &[String],
    defaults: &Limits,
    name: StageName,
    s: &StageDraft,
) -> Option<StagePlan> {
    let before = cx.issues.len();
    let action = action(cx, secrets, &name, s);

    let mut needs = BTreeSet::new();
    let dep = |cx: &mut Ctx<'_>, field: &str, d: &At<String>| -> Option<StageName> {
        if d.value == name.as_str() {
            cx.issue(
                d.pos,
                format!("stage `{name}` cannot depend on itself"),
                None,
            );
        } else if !cx.draft.has_stage(&d.value) {
            let hint = did_you_mean(&d.value, cx.draft.stages.iter().map(|s| s.name.as_str()));
            cx.issue(
                d.pos,
                format!("unknown stage `{}` in `{field}`", d.value),
                hint,
            );
        } else if let Ok(n) = d.value.parse::<StageName>() {
            return Some(n);
        }
        None
    };
    let after: Vec<StageName> = s.after.iter().filter_map(|d| dep(cx, "after", d)).collect();
    let mut volumes = Vec::new();
    for v in &s.volumes {
        let Some(stage) = dep(cx, s.volumes_field, &v.stage) else {
            continue;
        };
        if let Some(p) = &v.path
            && let Some(problem) = volume_path_problem(&p.value)
        {
            cx.issue(
                p.pos,
                format!("the path `{}` of a volume {problem}", p.value),
                Some("see another stage's files at a path of their own, like `/deps`".into()),
            );
        }
        volumes.push(Volume {
            stage,
            path: v.path.as_ref().map(|p| p.value.clone()),
        });
    }
    needs.extend(after.iter().cloned());
    needs.extend(volumes.iter().map(|v| v.stage.clone()));

    let mut env = BTreeMap::new();
    for var in &s.env {
        check_env_name(cx, &var.name);
        match &var.value {
            EnvDraft::FromHost(_) => {
                env.insert(var.name.value.clone(), EnvValue::FromHost);
            }
            EnvDraft::Template(v) => {
                if let Some(t) = parse_template(cx, v) {
                    check_refs(cx, v.pos, &t, Some(&name), secrets);
                    env.insert(var.name.value.clone(), EnvValue::Value(t));
                }
            }
        }
    }

    let limits = limits(cx, &s.limits, Some(defaults), false);
    let is_step = matches!(s.action, Some(ActionDraft::Step { .. }));
    if let Some(r) = &s.limits.reuse
        && r.value
        && !matches!(s.action, Some(ActionDraft::Container { .. }) | None)
    {
        cx.issue(
            r.pos,
            "`reuse:` shares a warm container among container stages (`run:`); a job already runs its steps in one container and a step has none",
            None,
        );
    }
    let cache = s.cache.as_ref().and_then(|c| cache(cx, c, is_step));
    let approval = s.approval.as_ref().and_then(|a| approval(cx, a, s.when));
    let retry = s
        .retry
        .as_ref()
        .and_then(|r| crate::retry::check(r, &mut cx.issues));

    let action = action?;
    if cx.issues.len() > before {
        return None;
    }
    let mut plan = StagePlan {
        name,
        action,
        needs: Vec::new(),
        when: s.when,
        finalizer: false,
        env,
        volumes,
        sensitive: s.sensitive,
        approval,
        limits,
        cache,
        retry,
    };
    for t in plan.templates() {
        needs.extend(t.refs().filter_map(Ref::stage).cloned());
    }
    plan.finalizer = s.when != When::OnSuccess && needs.is_empty();
    plan.needs = needs.into_iter().collect();
    Some(plan)
}

/// An approval gate's environment: a name of the server's config, on a
/// stage that runs on success (a cancelled or failed run asks nobody).
fn approval(cx: &mut Ctx<'_>, a: &At<String>, when: When) -> Option<String> {
    let name = a.value.trim();
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if !ok {
        cx.issue(
            a.pos,
            format!(
                "`approval: {}` must name an environment: letters, digits, `.`, `-` and `_`",
                a.value
            ),
            Some("like `approval: production`, an environment of the server's config".into()),
        );
        return None;
    }
    if when != When::OnSuccess {
        cx.issue(
            a.pos,
            format!(
                "a `when: {}` stage cannot wait for an approval: a gate holds back what comes after a success",
                when.as_str()
            ),
            None,
        );
        return None;
    }
    Some(name.to_string())
}
