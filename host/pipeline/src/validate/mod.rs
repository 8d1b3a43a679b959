//! Pure validation: a dialect's [`Draft`] → [`Plan`]. No I/O happens here;
//! every problem is reported at the position the draft carries, which is a
//! position in the file the user wrote, whatever its dialect.

use std::collections::BTreeMap;
use std::time::Duration;

use sentinel_api::StageName;

use crate::de::did_you_mean;
use crate::draft::{At, Draft, EnvDraft, Issue, VarDraft};
use crate::plan::{EnvValue, Plan, ServicePlan, WorkspaceOptions};
use crate::step::StepAnswers;
use crate::template::{self, Ref, Template};
use crate::yaml::Pos;

mod build;
mod graph;
mod stage;

use graph::{add_finalizer_edges, derive_sensitivity, topo_sort};
use stage::{limits, stage_plan};

/// Most stages a pipeline may have.
pub const MAX_STAGES: usize = 2000;

pub(super) struct Ctx<'a> {
    draft: &'a Draft,
    issues: Vec<Issue>,
    steps: &'a StepAnswers,
    step_names: &'a [String],
}

impl Ctx<'_> {
    pub(super) fn issue(&mut self, pos: Pos, message: impl Into<String>, hint: Option<String>) {
        self.issues.push(Issue::new(pos, message, hint));
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

/// Two different steps of one pipeline may not share a settings namespace
/// (`acme/notify` and `notify` would both read `SENTINEL_NOTIFY_*`).
fn step_namespaces(cx: &mut Ctx<'_>) {
    let mut seen: BTreeMap<String, (String, String)> = BTreeMap::new();
    for stage in &cx.draft.stages {
        let Some(crate::draft::ActionDraft::Step { step, .. }) = &stage.action else {
            continue;
        };
        let Some(Ok(resolved)) = cx.steps.get(&step.value) else {
            continue;
        };
        let ns = crate::step::setting_env_name(&resolved.manifest.name, "");
        match seen.get(&ns) {
            Some((other, digest)) if *digest != resolved.digest => {
                let msg = format!(
                    "steps `{other}` and `{}` are different steps that would both take their settings as {ns}*",
                    step.value
                );
                cx.issue(
                    step.pos,
                    msg,
                    Some("use one of them in this pipeline".into()),
                );
            }
            Some(_) => {}
            None => {
                seen.insert(ns, (step.value.clone(), resolved.digest.clone()));
            }
        }
    }
}

/// Validates a draft. `default_name` names the pipeline when the file does
/// not (the folder's name). The reader's own issues come back with the
/// validation's, in file order.
pub fn validate(
    draft: &Draft,
    default_name: &str,
    steps: &StepAnswers,
    step_names: &[String],
) -> Result<Plan, Vec<Issue>> {
    let mut cx = Ctx {
        draft,
        issues: draft.issues.clone(),
        steps,
        step_names,
    };

    // Secrets.
    let mut secrets = Vec::new();
    for s in &draft.secrets {
        if !env_name_ok(&s.value) {
            cx.issue(
                s.pos,
                format!("secret name `{}` is not a valid variable name", s.value),
                None,
            );
        } else if secrets.contains(&s.value) {
            cx.issue(
                s.pos,
                format!("secret `{}` is declared twice", s.value),
                None,
            );
        } else {
            secrets.push(s.value.clone());
        }
    }

    // Pipeline env: literals, `${run.*}`, `${git.*}`, or taken from the host.
    let mut env = BTreeMap::new();
    for VarDraft { name, value } in &draft.env {
        check_env_name(&mut cx, name);
        match value {
            EnvDraft::FromHost(_) => {
                env.insert(name.value.clone(), EnvValue::FromHost);
            }
            EnvDraft::Template(v) => {
                if let Some(t) = parse_template(&mut cx, v) {
                    for r in t.refs() {
                        if !matches!(
                            r,
                            Ref::RunId
                                | Ref::GitCommit
                                | Ref::GitBranch
                                | Ref::GitRepo
                                | Ref::Deploy(_)
                                | Ref::UpstreamRunId
                                | Ref::UpstreamOutput(_)
                                | Ref::UpstreamNamedOutput(..)
                                | Ref::Trigger(_)
                        ) {
                            cx.issue(
                                v.pos,
                                format!("`{r}` cannot be used in the pipeline's `env:`"),
                                Some("pipeline-wide variables may use ${run.*}, ${git.*}, ${deploy.*}, ${upstream.*} and ${trigger.*}; name secrets and stage outputs in the stage that uses them".into()),
                            );
                        }
                    }
                    env.insert(name.value.clone(), EnvValue::Value(t));
                }
            }
        }
    }

    let default_limits = limits(&mut cx, &draft.defaults, None, !draft.services.is_empty());

    // Services.
    let mut services = Vec::new();
    for svc in &draft.services {
        let name = &svc.name.value;
        let dns_ok = name.len() <= 63
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && name.as_bytes().first().is_some_and(u8::is_ascii_lowercase);
        if !dns_ok {
            cx.issue(
                svc.name.pos,
                format!("service name `{name}` must be a host name: lower-case letters, digits and `-`, starting with a letter"),
                None,
            );
        }
        let image = svc.image.clone().or_else(|| draft.box_image.clone());
        if image.is_none() {
            cx.issue(
                svc.pos,
                format!("service `{name}` has no `image` and the pipeline has no `box`"),
                None,
            );
        }
        let mut svc_env = BTreeMap::new();
        for (k, v) in &svc.env {
            check_env_name(&mut cx, k);
            if let Some(t) = parse_template(&mut cx, v) {
                check_refs(&mut cx, v.pos, &t, None, &secrets);
                if let Some(r) = t.refs().find(|r| r.stage().is_some()) {
                    cx.issue(
                        v.pos,
                        format!("a service cannot use `{r}`: services start before the stages"),
                        None,
                    );
                }
                svc_env.insert(k.value.clone(), t);
            }
        }
        let ready_timeout = match &svc.ready_timeout {
            None => Duration::from_secs(60),
            Some(s) => parse_duration(&s.value).unwrap_or_else(|| {
                cx.issue(
                    s.pos,
                    format!("`{}` is not a duration", s.value),
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
            links: svc.links,
        });
    }
    // Stages.
    if draft.stages.is_empty() {
        cx.issue(draft.stages_pos, "the pipeline has no stages", None);
    }
    if draft.stages.len() > MAX_STAGES {
        cx.issue(
            draft.stages_pos,
            format!(
                "the pipeline has {} stages; the limit is {MAX_STAGES}",
                draft.stages.len()
            ),
            None,
        );
        return Err(cx.issues);
    }
    let mut stages = Vec::new();
    for stage in &draft.stages {
        let parsed: StageName = match stage.name.value.parse() {
            Ok(n) => n,
            Err(e) => {
                cx.issue(stage.name.pos, e.to_string(), None);
                continue;
            }
        };
        if let Some(plan) = stage_plan(&mut cx, &secrets, &default_limits, parsed, stage) {
            stages.push(plan);
        }
    }

    step_namespaces(&mut cx);
    let registries = build::registries(&mut cx, &draft.registries, &secrets);
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
            let pos = draft
                .stages
                .iter()
                .find(|s| s.name.value == first.as_str())
                .map_or(draft.stages_pos, |s| s.name.pos);
            let fields = match draft.dialect {
                crate::dialect::Dialect::Dockercise => "`after`, `env` or `vol`",
                _ => "`after:`, a `${stages…}` reference or `volumes:`",
            };
            cx.issue(
                pos,
                format!("dependency cycle: {path}"),
                Some(format!("remove one of these edges ({fields})")),
            );
            return Err(cx.issues);
        }
    };

    let stages = derive_sensitivity(stages);
    Ok(Plan {
        version: draft.version,
        name: draft
            .name
            .clone()
            .unwrap_or_else(|| default_name.to_string()),
        secrets,
        env,
        services,
        registries,
        stages,
        workspace: WorkspaceOptions {
            git: draft.workspace.git,
            dirs: workspace_dirs(&mut cx, &draft.workspace.dirs),
        },
    })
}

/// The workspace's folders to make: relative paths inside it.
fn workspace_dirs(cx: &mut Ctx<'_>, dirs: &[At<String>]) -> Vec<String> {
    dirs.iter()
        .filter_map(|d| match build::inside(&d.value) {
            Some(p) if p != "." => Some(p),
            _ => {
                cx.issue(
                    d.pos,
                    format!("`{}` is not a folder inside the workspace", d.value),
                    Some("a relative path like `artifacts` or `build/out`".into()),
                );
                None
            }
        })
        .collect()
}

pub(super) fn check_env_name(cx: &mut Ctx<'_>, name: &At<String>) {
    let n = &name.value;
    if !env_name_ok(n) {
        cx.issue(
            name.pos,
            format!("`{n}` is not a valid variable name"),
            Some("use letters, digits and `_`, not starting with a digit".into()),
        );
    } else if n.starts_with("SENTINEL_") {
        cx.issue(
            name.pos,
            format!("`{n}`: names starting with `SENTINEL_` are reserved for Sentinel"),
            None,
        );
    } else if sentinel_api::deploy::DEPLOY_VARS.contains(&n.as_str()) {
        cx.issue(
            name.pos,
            format!("`{n}` is reserved: a deploy run sets it (use `${{deploy.*}}` to read it)"),
            None,
        );
    }
}

pub(super) fn parse_template(cx: &mut Ctx<'_>, value: &At<String>) -> Option<Template> {
    match template::parse(&value.value) {
        Ok(t) => Some(t),
        Err(e) => {
            cx.issue(value.pos, e.message, e.hint);
            None
        }
    }
}

/// Checks that every reference of `t` names something that exists.
pub(super) fn check_refs(
    cx: &mut Ctx<'_>,
    pos: Pos,
    t: &Template,
    this: Option<&StageName>,
    secrets: &[String],
) {
    for r in t.refs() {
        match r {
            Ref::Env(n) if !cx.draft.has_env(n) => {
                let hint =
                    did_you_mean(n, cx.draft.env.iter().map(|v| v.name.as_str())).or_else(|| {
                        Some(format!(
                            "declare it in the pipeline's `env:` (`{n}: ~` takes it from the host)"
                        ))
                    });
                cx.issue(pos, format!("unknown variable `{r}`"), hint);
            }
            Ref::Secret(n) if !secrets.contains(n) => {
                let hint = did_you_mean(n, secrets.iter().map(String::as_str))
                    .or_else(|| Some("declare it in the pipeline's `secrets:` list".into()));
                cx.issue(pos, format!("unknown secret `{r}`"), hint);
            }
            Ref::StageOutput(s) | Ref::StageNamedOutput(s, _) => {
                if Some(s) == this {
                    cx.issue(pos, format!("stage `{s}` cannot use its own output"), None);
                } else if !cx.draft.has_stage(s.as_str()) {
                    let hint =
                        did_you_mean(s.as_str(), cx.draft.stages.iter().map(|s| s.name.as_str()));
                    cx.issue(pos, format!("unknown stage `{s}` in `{r}`"), hint);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    fn chains(n: usize) -> String {
        let mut yaml = String::from("version: 1\nbox: alpine:3\nstages:\n");
        for i in 0..n {
            let after = if i < 10 {
                String::new()
            } else {
                format!(", after: [s{}]", i - 10)
            };
            yaml.push_str(&format!("  s{i}: {{run: 'true'{after}}}\n"));
        }
        yaml
    }

    #[test]
    fn a_thousand_stages_plan_and_one_past_the_cap_is_refused() {
        let plan = crate::parse_str(&chains(1000), "sentinel.yml", "big").unwrap();
        assert_eq!(plan.stages.len(), 1000);
        let e = crate::parse_str(&chains(super::MAX_STAGES + 1), "sentinel.yml", "big")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("the pipeline has 2001 stages; the limit is 2000"),
            "{e}"
        );
    }
}
