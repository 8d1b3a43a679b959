//! Pure validation: raw schema → [`Plan`]. No I/O happens here; problems are
//! reported with the path of the offending value, which the caller turns
//! into a line and column.

use std::collections::BTreeMap;
use std::time::Duration;

use sentinel_api::StageName;

use crate::de::did_you_mean;
use crate::plan::{EnvValue, Plan, ServicePlan};
use crate::raw::RawPipeline;
use crate::step::StepAnswers;
use crate::template::{self, Ref, Template};
use crate::yaml::PathSeg;

mod graph;
mod stage;

use graph::{add_finalizer_edges, derive_sensitivity, topo_sort};
use stage::{limits, stage_plan};

/// Most stages a pipeline may have.
pub const MAX_STAGES: usize = 500;

/// One problem, located by a path into the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub path: Vec<PathSeg>,
    pub message: String,
    pub hint: Option<String>,
}

pub(super) fn key(s: &str) -> PathSeg {
    PathSeg::Key(s.to_string())
}

pub(super) fn key_name(s: &str) -> PathSeg {
    PathSeg::KeyName(s.to_string())
}

pub(super) struct Ctx<'a> {
    raw: &'a RawPipeline,
    issues: Vec<Issue>,
    steps: &'a StepAnswers,
    step_names: &'a [String],
}

impl Ctx<'_> {
    pub(super) fn issue(
        &mut self,
        path: Vec<PathSeg>,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        self.issues.push(Issue {
            path,
            message: message.into(),
            hint,
        });
    }
}

/// An environment variable name a stage may set.
pub(super) fn env_name_ok(name: &str) -> bool {
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

pub(super) fn parse_duration(s: &str) -> Option<Duration> {
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

pub(super) fn check_env_name(cx: &mut Ctx<'_>, path: Vec<PathSeg>, name: &str) {
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

pub(super) fn parse_template(
    cx: &mut Ctx<'_>,
    path: Vec<PathSeg>,
    value: &str,
) -> Option<Template> {
    match template::parse(value) {
        Ok(t) => Some(t),
        Err(e) => {
            cx.issue(path, e.message, e.hint);
            None
        }
    }
}

/// Checks that every reference of `t` names something that exists.
pub(super) fn check_refs(
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
