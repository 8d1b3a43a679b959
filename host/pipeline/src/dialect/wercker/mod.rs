//! `wercker.yml`, read as wercker's own CLI read it (its `core/config.go`
//! and `core/step.go`; see `docs/wercker.md`): the reserved top-level keys
//! `box`, `services`, `command-timeout`, `no-response-timeout` and
//! `source-dir`; every other top-level key a pipeline. The chosen pipeline
//! (`build` unless [`Select`] names another) becomes one job: its `steps`
//! (or, with a deploy target, that target's list) in one container of its
//! `box`, its `after-steps` after them whatever happened.
//!
//! Steps are a bare name (`npm-install`, `owner/name`, `name@version`), a
//! one-key map with settings, or `script:` with `name` and `code` (`set -e`
//! put first unless the code starts with `#!`). Settings are plain text
//! that the job's shell expands (`key_id: $AWS_ACCESS_KEY_ID`).

mod steps;

use super::one;
use crate::Diagnostics;
use crate::de::did_you_mean;
use crate::dialect::Dialect;
use crate::draft::{
    ActionDraft, At, CacheDraft, Draft, EnvDraft, Issue, LimitsDraft, ServiceDraft, StageDraft,
    VarDraft, WorkspaceDraft,
};
use crate::plan::{Shell, When};
use crate::yaml::{Node, Pos, Style, Value};

/// Which pipeline of a file runs, and for which deploy target.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Select {
    /// The pipeline (default `build`).
    pub pipeline: Option<String>,
    /// A deploy target: its step list replaces the pipeline's `steps`.
    pub deploy_target: Option<String>,
}

/// A pipeline's keys that are not deploy targets.
const PIPELINE_KEYS: &[&str] = &[
    "box",
    "services",
    "steps",
    "after-steps",
    "base-path",
    "docker",
];

/// The keys of a box or service mapping.
const BOX_KEYS: &[&str] = &[
    "id",
    "name",
    "tag",
    "cmd",
    "env",
    "entrypoint",
    "ports",
    "volumes",
    "username",
    "password",
    "registry",
    "url",
];

/// Where a job sees wercker's folders.
const SOURCE: &str = "/workspace";

pub(super) fn scalar(n: &Node) -> Option<&str> {
    match &n.value {
        Value::Scalar(s, _) => Some(s),
        _ => None,
    }
}

/// A setting's value as wercker exported it: text as written, `yes`/`no`
/// and friends as `true`/`false` (its YAML 1.1 reading), nothing as empty.
pub(super) fn setting_text(n: &Node) -> Option<String> {
    match &n.value {
        Value::Scalar(s, Style::Plain) => Some(match s.as_str() {
            "yes" | "Yes" | "YES" | "on" | "On" | "ON" | "y" | "Y" | "True" | "TRUE" => {
                "true".into()
            }
            "no" | "No" | "NO" | "off" | "Off" | "OFF" | "n" | "N" | "False" | "FALSE" => {
                "false".into()
            }
            _ => yaml11_int(s).map_or_else(|| s.clone(), |n| n.to_string()),
        }),
        Value::Scalar(s, _) => Some(s.clone()),
        Value::Null => Some(String::new()),
        _ => None,
    }
}

/// A YAML 1.1 integer wercker's parser read as a number and passed on in
/// decimal: `010` (octal) → `8`, `0x1F` → `31`, `1_000` → `1000`.
fn yaml11_int(s: &str) -> Option<i64> {
    let (neg, digits) = match s.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let clean = digits.replace('_', "");
    let n = if let Some(hex) = clean.strip_prefix("0x") {
        i64::from_str_radix(hex, 16).ok()?
    } else if let Some(bin) = clean.strip_prefix("0b") {
        i64::from_str_radix(bin, 2).ok()?
    } else if clean.len() > 1 && clean.starts_with('0') {
        i64::from_str_radix(&clean[1..], 8).ok()?
    } else if digits.contains('_') {
        clean.parse().ok()?
    } else {
        // A plain decimal (or anything else) stays as written.
        return None;
    };
    Some(if neg { -n } else { n })
}

/// Text that a template would read as references, kept literal.
fn literal(s: &str) -> String {
    s.replace("${", "$${")
}

/// Reads a wercker file, choosing the pipeline `select` names.
pub(super) fn read(root: Node, file: &str, select: &Select) -> Result<Draft, Diagnostics> {
    let Value::Map(entries) = &root.value else {
        return Err(one(
            file,
            root.pos,
            format!(
                "a wercker.yml is a mapping of `box`, `services` and pipelines, found {}",
                root.kind()
            ),
            None,
        ));
    };
    let mut r = Reader {
        issues: Vec::new(),
        notes: Vec::new(),
    };
    let mut pipelines = Vec::new();
    let mut box_node = None;
    let mut services_node = None;
    let mut timeout = None;
    let mut idle = None;
    let mut source_dir = None;
    for (k, v) in entries {
        let key = scalar(k).unwrap_or_default();
        match key {
            "box" => box_node = Some(v),
            "services" => services_node = Some(v),
            "command-timeout" => timeout = r.minutes(key, v),
            "no-response-timeout" => idle = r.minutes(key, v),
            "source-dir" => match scalar(v) {
                Some(s) if !s.starts_with('/') && !s.split('/').any(|p| p == "..") => {
                    source_dir = Some(s.trim_end_matches('/').to_string())
                }
                _ => r.issue(
                    v.pos,
                    "`source-dir` is a folder of the project (a relative path without `..`)",
                    None,
                ),
            },
            "workflows" => r.issue(
                k.pos,
                "wercker's `workflows` are not supported",
                Some("run a pipeline with `sentinel run --pipeline NAME`; chaining pipelines is the server's triggers' work".into()),
            ),
            "ignore-file" => r.issue(
                k.pos,
                "`ignore-file` is not supported",
                Some("list what the run's copy of the project leaves out in `.sentinelignore` (gitignore syntax, as `.werckerignore`)".into()),
            ),
            _ => pipelines.push((key.to_string(), k.pos, v)),
        }
    }
    let wanted = select.pipeline.clone().unwrap_or_else(|| "build".into());
    let Some((name, key_pos, body)) = pipelines.iter().find(|(n, _, _)| *n == wanted) else {
        let names: Vec<&str> = pipelines.iter().map(|(n, _, _)| n.as_str()).collect();
        let hint = if names.is_empty() {
            Some("a pipeline is a top-level key such as `build:` with `steps:`".into())
        } else {
            did_you_mean(&wanted, names.iter().copied())
                .or_else(|| Some(format!("its pipelines: {}", names.join(", "))))
        };
        return Err(one(
            file,
            root.pos,
            format!("the file has no pipeline named `{wanted}`"),
            hint,
        ));
    };
    let pipeline = match &body.value {
        Value::Map(e) => e.as_slice(),
        Value::Null => {
            return Err(one(
                file,
                body.pos,
                format!("pipeline `{name}` is empty"),
                Some("give it `steps:`".into()),
            ));
        }
        _ => {
            return Err(one(
                file,
                body.pos,
                format!(
                    "pipeline `{name}` must be a mapping with `steps`, found {}",
                    body.kind()
                ),
                None,
            ));
        }
    };
    let checked = name.parse::<sentinel_api::StageName>().is_ok();
    if !checked {
        r.issue(
            *key_pos,
            format!("pipeline `{name}` needs a name of letters, digits, `-` and `_` (it names the run's job)"),
            None,
        );
    }

    let mut job_box = box_node.map(|b| r.image(b, "box"));
    let mut services = services_node;
    let mut steps_node = None;
    let mut after_node = None;
    let mut targets = Vec::new();
    for (k, v) in pipeline {
        let key = scalar(k).unwrap_or_default();
        match key {
            "box" => job_box = Some(r.image(v, "box")),
            "services" => services = Some(v),
            "steps" => steps_node = Some(v),
            "after-steps" => after_node = Some(v),
            "base-path" => r.issue(
                k.pos,
                "`base-path` is not supported: the project is always at /workspace",
                Some("`cd` where you need in the steps' code, or use `source-dir`".into()),
            ),
            "docker" => r.issue(
                k.pos,
                "`docker: true` is not supported yet: a job gets no Docker endpoint",
                None,
            ),
            other => match &v.value {
                Value::Seq(_) => targets.push((other.to_string(), k.pos, v)),
                _ => r.issue(
                    k.pos,
                    format!("invalid extra key in pipeline, `{other}` is not a list of steps"),
                    did_you_mean(other, PIPELINE_KEYS.iter().copied()),
                ),
            },
        }
    }
    let mut env = vec![
        ("WERCKER", "true".to_string()),
        ("WERCKER_ROOT", SOURCE.to_string()),
        (
            "WERCKER_SOURCE_DIR",
            match &source_dir {
                Some(d) if !d.is_empty() => format!("{SOURCE}/{d}"),
                _ => SOURCE.to_string(),
            },
        ),
        ("WERCKER_OUTPUT_DIR", "/sentinel/artifacts".into()),
        ("WERCKER_CACHE_DIR", "/sentinel/cache".into()),
        ("WERCKER_PIPELINE_DIR", "/sentinel".into()),
        ("WERCKER_REPORT_DIR", "/sentinel/report".into()),
        ("WERCKER_RUN_ID", "${run.id}".into()),
        ("WERCKER_GIT_BRANCH", "${git.branch}".into()),
        ("WERCKER_GIT_COMMIT", "${git.commit}".into()),
        ("WERCKER_GIT_REPOSITORY", "${git.repo}".into()),
        ("WERCKER_APPLICATION_NAME", "${git.repo}".into()),
        ("TERM", "xterm-256color".into()),
    ];
    if name == "build" {
        env.push(("BUILD", "true".into()));
        env.push(("CI", "true".into()));
    } else {
        env.push(("DEPLOY", "true".into()));
    }
    let mut steps_at = steps_node;
    if let Some(target) = &select.deploy_target {
        env.push(("WERCKER_DEPLOYTARGET_NAME", literal(target)));
        match targets.iter().find(|(t, _, _)| t == target) {
            Some((_, _, list)) => {
                r.notes.push(format!(
                    "deploy target `{target}`: its steps replace the pipeline's `steps`"
                ));
                steps_at = Some(list);
            }
            None => r.notes.push(format!(
                "deploy target `{target}` has no step list of its own: the pipeline's `steps` run"
            )),
        }
    }
    let prelude = source_dir
        .as_ref()
        .map(|_| "cd \"$WERCKER_SOURCE_DIR\"\n".to_string())
        .unwrap_or_default();
    let steps = match steps_at {
        Some(list) => r.steps(list, &prelude, false),
        None => {
            let near = targets
                .iter()
                .find(|(t, _, _)| did_you_mean(t, ["steps"]).is_some());
            let hint = near.map(|(t, _, _)| {
                format!("did you mean `steps`? `{t}:` is read as a deploy target")
            });
            r.issue(
                near.map_or(body.pos, |(_, pos, _)| *pos),
                format!("pipeline `{name}` has no `steps`"),
                hint,
            );
            Vec::new()
        }
    };
    let after_steps = after_node
        .map(|l| r.steps(l, &prelude, true))
        .unwrap_or_default();
    let services = services.map(|s| r.services(s)).unwrap_or_default();

    // A box that could not be read was reported; no second error for it.
    let box_failed = matches!(job_box, Some(None));
    let (image, box_env) = match job_box {
        Some(Some((image, env))) => (Some(image), env),
        _ => (None, Vec::new()),
    };
    let mut vars: Vec<VarDraft> = env
        .into_iter()
        .map(|(k, v)| VarDraft {
            name: At::new(k.to_string(), body.pos),
            value: EnvDraft::Template(At::new(v, body.pos)),
        })
        .collect();
    for (k, v) in box_env {
        vars.retain(|x| x.name.value != k.value);
        vars.push(VarDraft {
            name: k,
            value: EnvDraft::Template(v),
        });
    }
    let limits = LimitsDraft {
        timeout: timeout.map(|(m, pos)| At::new(format!("{m}m"), pos)),
        idle_timeout: idle.map(|(m, pos)| At::new(format!("{m}m"), pos)),
        ..LimitsDraft::default()
    };
    let mut notes = std::mem::take(&mut r.notes);
    notes.insert(
        0,
        format!("wercker pipeline `{name}`: its steps run in turn in one container (a job)"),
    );
    notes.insert(
        1,
        "$WERCKER_CACHE_DIR comes from the newest cache a successful run saved and is saved again when this one succeeds".into(),
    );
    let stage = StageDraft {
        name: At::new(name.clone(), *key_pos),
        pos: body.pos,
        action: (checked && !box_failed).then_some(ActionDraft::Job {
            image: image.map(|i| At::new(i, body.pos)),
            steps,
            after_steps,
            shell: Shell::Plain,
            commit: None,
        }),
        after: Vec::new(),
        volumes: Vec::new(),
        volumes_field: "volumes",
        env: vars,
        when: When::OnSuccess,
        sensitive: false,
        approval: None,
        limits,
        cache: Some(CacheDraft {
            pos: body.pos,
            key: At::new(format!("wercker-{name}-${{run.id}}"), body.pos),
            restore_keys: vec![At::new(format!("wercker-{name}-"), body.pos)],
            paths: vec![At::new(crate::cache::STAGE_CACHE.into(), body.pos)],
        }),
        retry: None,
        notes,
    };
    Ok(Draft {
        dialect: Dialect::Wercker,
        version: 1,
        name: None,
        box_image: None,
        env: Vec::new(),
        secrets: Vec::new(),
        defaults: LimitsDraft::default(),
        services,
        registries: Vec::new(),
        stages_pos: root.pos,
        stages: vec![stage],
        workspace: WorkspaceDraft::default(),
        issues: r.issues,
    })
}

pub(super) struct Reader {
    pub(super) issues: Vec<Issue>,
    pub(super) notes: Vec<String>,
}

type EnvPairs = Vec<(At<String>, At<String>)>;

impl Reader {
    pub(super) fn issue(&mut self, pos: Pos, message: impl Into<String>, hint: Option<String>) {
        self.issues.push(Issue::new(pos, message, hint));
    }

    /// A timeout in whole minutes, as wercker read it (over 0, at most 60).
    fn minutes(&mut self, key: &str, v: &Node) -> Option<(u64, Pos)> {
        match scalar(v).map(|s| (s.parse::<u64>(), &v.value)) {
            Some((Ok(m), Value::Scalar(_, Style::Plain))) if m > 0 => {
                if m > 60 {
                    self.notes.push(format!(
                        "`{key}: {m}` is capped at 60 minutes, as wercker did"
                    ));
                }
                Some((m.min(60), v.pos))
            }
            _ => {
                self.issue(
                    v.pos,
                    format!("`{key}` is a whole number of minutes (1 to 60)"),
                    None,
                );
                None
            }
        }
    }

    /// A box or service: `image:tag` or a mapping. Returns the image and
    /// its `env` (keys upper-cased, as wercker did).
    fn image(&mut self, n: &Node, what: &str) -> Option<(String, EnvPairs)> {
        match &n.value {
            Value::Scalar(s, _) if !s.trim().is_empty() => {
                if s.contains('@') {
                    self.issue(
                        n.pos,
                        format!("invalid {what} name, '@' is not allowed"),
                        None,
                    );
                    return None;
                }
                Some((s.clone(), Vec::new()))
            }
            Value::Map(entries) => {
                let mut id = None;
                let mut tag = None;
                let mut env = Vec::new();
                for (k, v) in entries {
                    let key = scalar(k).unwrap_or_default();
                    match key {
                        "id" => id = scalar(v).map(|s| (s.to_string(), v.pos)),
                        "tag" => tag = setting_text(v),
                        "env" => match &v.value {
                            Value::Map(vars) => {
                                for (ek, ev) in vars {
                                    let name = scalar(ek).unwrap_or_default().to_ascii_uppercase();
                                    let value = setting_text(ev).unwrap_or_default();
                                    env.push((
                                        At::new(name, ek.pos),
                                        At::new(literal(&value), ev.pos),
                                    ));
                                }
                            }
                            _ => self.issue(
                                v.pos,
                                format!("a {what}'s `env` is a mapping of names to values"),
                                None,
                            ),
                        },
                        "username" | "password" | "registry" => self.issue(
                            k.pos,
                            format!("a private {what} (`{key}`) needs registry credentials, which Sentinel does not support yet"),
                            Some("use a public image, or pull it on this machine first and name it without credentials".into()),
                        ),
                        "url" => self.issue(
                            k.pos,
                            format!("a {what} built from `url` is not supported"),
                            Some("build the image first and name it in `id`".into()),
                        ),
                        "name" | "cmd" | "entrypoint" | "ports" | "volumes" => {}
                        other => self.issue(
                            k.pos,
                            format!("unknown {what} key `{other}`"),
                            did_you_mean(other, BOX_KEYS.iter().copied())
                                .or_else(|| Some(format!("expected one of: {}", BOX_KEYS.join(", ")))),
                        ),
                    }
                }
                let Some((id, pos)) = id else {
                    self.issue(
                        n.pos,
                        format!("a {what} mapping needs `id` (the image)"),
                        None,
                    );
                    return None;
                };
                if id.contains('@') {
                    self.issue(
                        pos,
                        format!("invalid {what} name, '@' is not allowed"),
                        None,
                    );
                    return None;
                }
                let image = match tag {
                    Some(t) if !t.is_empty() => {
                        let repo = id.rsplit_once(':').map_or(id.as_str(), |(r, _)| r);
                        format!("{repo}:{t}")
                    }
                    _ => id,
                };
                Some((image, env))
            }
            _ => {
                self.issue(
                    n.pos,
                    format!("`{what}` is an image (`name:tag`) or a mapping with `id`"),
                    None,
                );
                None
            }
        }
    }

    /// The services: each reachable by its `name`, else its image's last
    /// path part without the tag (`bitnami/redis:5` → `redis`).
    fn services(&mut self, n: &Node) -> Vec<ServiceDraft> {
        let items = match &n.value {
            Value::Seq(items) => items.as_slice(),
            Value::Null => return Vec::new(),
            _ => {
                self.issue(n.pos, "`services` is a list of images", None);
                return Vec::new();
            }
        };
        let mut out: Vec<ServiceDraft> = Vec::new();
        for item in items {
            let Some((image, env)) = self.image(item, "service") else {
                continue;
            };
            let alias = item
                .get("name")
                .and_then(scalar)
                .map(str::to_string)
                .unwrap_or_else(|| {
                    let repo = image.rsplit('/').next().unwrap_or(&image);
                    repo.split(':').next().unwrap_or(repo).to_string()
                });
            if out.iter().any(|s| s.name.value == alias) {
                self.issue(
                    item.pos,
                    format!("two services are reachable as `{alias}`"),
                    Some("give one a `name:`".into()),
                );
                continue;
            }
            let command = item.get("cmd").and_then(scalar).map(str::to_string);
            out.push(ServiceDraft {
                name: At::new(alias, item.pos),
                pos: item.pos,
                image: Some(image),
                command,
                env,
                ready: None,
                ready_timeout: None,
                links: true,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_read_as_yaml_1_1() {
        for (text, want) in [
            ("010", Some(8)),
            ("0x1F", Some(31)),
            ("1_000", Some(1000)),
            ("-017", Some(-15)),
            ("10", None),
            ("0", None),
            ("09", None),
            ("1.10", None),
        ] {
            assert_eq!(yaml11_int(text), want, "{text}");
        }
    }
}
