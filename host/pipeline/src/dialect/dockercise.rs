//! dockercise files, read as dockercise read them (its `build-dag.js` and
//! `run-dag.js`): a top-level map of stages with `img` and `run`; `after`,
//! `env` and `vol` each a name or a list. A name in `env` that is a stage
//! passes that stage's trimmed output as the upper-cased variable
//! (`aws_access_key_id` → `AWS_ACCESS_KEY_ID`) and adds the edge; any other
//! name passes the upper-cased variable through from the environment
//! `sentinel` runs in. `vol: stage` adds the edge and the stage's files,
//! `vol: stage:/path` sees them at a path. Each stage's stdout is
//! `out/<stage>` in the workspace. Scripts run with `sh -c`, and each stage
//! gets `OUT` and `GRAPH_CI_RUN_ID` as dockercise gave them.
//!
//! Sentinel's extension: `sensitive: true` (or dockercise's own `noLog:
//! true`) makes a stage's output a secret: kept out of its log and the
//! results, masked everywhere, while `out/<stage>` holds it for the run.

use crate::Diagnostics;
use crate::de::did_you_mean;
use crate::dialect::Dialect;
use crate::draft::{
    ActionDraft, At, Draft, EnvDraft, Issue, LimitsDraft, StageDraft, VarDraft, VolumeDraft,
    WorkspaceDraft,
};
use crate::plan::{Shell, When};
use crate::yaml::{Node, Pos, Style, Value};

use super::one;

/// The keys of a stage Sentinel reads.
const KEYS: &[&str] = &["img", "run", "after", "env", "vol", "sensitive", "noLog"];

/// Keys of dockercise stages that Sentinel does not support, and why.
const UNSUPPORTED: &[(&str, &str)] = &[
    (
        "dir",
        "the script runs in the workspace; `cd` to a folder in `run`",
    ),
    (
        "on",
        "a stage works on the shared workspace; use `vol` to see another stage's files",
    ),
    ("neverFail", "make the script succeed instead (`… || true`)"),
    (
        "outVol",
        "a stage's files are in the shared workspace for every later stage",
    ),
    ("triggers", "choose what runs with the server's triggers"),
    ("targets", "run the whole file, or name stages with `after`"),
    ("done", "dockercise never read it either"),
];

/// The text of a scalar node.
fn scalar(n: &Node) -> Option<&str> {
    match &n.value {
        Value::Scalar(s, _) => Some(s),
        _ => None,
    }
}

/// A value as a message shows it: a scalar's text, else its kind.
fn shown(n: &Node) -> String {
    match scalar(n) {
        Some(s) => format!("`{s}`"),
        None => n.kind().to_string(),
    }
}

/// A name or a list of names, each with its position.
fn names(n: &Node, field: &str, issues: &mut Vec<Issue>) -> Vec<At<String>> {
    match &n.value {
        Value::Null => Vec::new(),
        Value::Scalar(s, _) => vec![At::new(s.clone(), n.pos)],
        Value::Seq(items) => items
            .iter()
            .filter_map(|i| match scalar(i) {
                Some(s) => Some(At::new(s.to_string(), i.pos)),
                None => {
                    issues.push(Issue::new(
                        i.pos,
                        format!("`{field}` lists names; found {}", i.kind()),
                        None,
                    ));
                    None
                }
            })
            .collect(),
        Value::Map(_) => {
            issues.push(Issue::new(
                n.pos,
                format!("`{field}` is a name or a list of names; found a mapping"),
                None,
            ));
            Vec::new()
        }
    }
}

/// Reads a dockercise document.
pub(super) fn read(root: Node, file: &str) -> Result<Draft, Diagnostics> {
    let Value::Map(entries) = &root.value else {
        return Err(one(
            file,
            root.pos,
            format!(
                "a dockercise file is a mapping of stages, found {}",
                root.kind()
            ),
            None,
        ));
    };
    let stage_names: Vec<&str> = entries.iter().filter_map(|(k, _)| scalar(k)).collect();
    let mut issues = Vec::new();
    let mut stages = Vec::new();
    for (k, v) in entries {
        let name = scalar(k).unwrap_or_default().to_string();
        if name == "meta" {
            issues.push(Issue::new(
                k.pos,
                "dockercise's `meta:` (subgraphs and tags) is not supported by Sentinel",
                Some("remove it; a stage cannot be named `meta`".into()),
            ));
            continue;
        }
        if let Some(stage) = read_stage(&name, k.pos, v, &stage_names, &mut issues) {
            stages.push(stage);
        }
    }
    Ok(Draft {
        dialect: Dialect::Dockercise,
        version: 1,
        name: None,
        box_image: None,
        env: Vec::new(),
        secrets: Vec::new(),
        defaults: LimitsDraft::default(),
        services: Vec::new(),
        registries: Vec::new(),
        stages_pos: root.pos,
        stages,
        workspace: WorkspaceDraft::default(),
        issues,
    })
}

fn read_stage(
    name: &str,
    key_pos: Pos,
    node: &Node,
    stage_names: &[&str],
    issues: &mut Vec<Issue>,
) -> Option<StageDraft> {
    let entries = match &node.value {
        Value::Map(e) => e.as_slice(),
        _ => {
            issues.push(Issue::new(
                node.pos,
                format!(
                    "stage `{name}` must be a mapping with `img` and `run`, found {}",
                    node.kind()
                ),
                None,
            ));
            return None;
        }
    };
    let mut img = None;
    let mut run = None;
    let mut after = Vec::new();
    let mut env_names = Vec::new();
    let mut vols = Vec::new();
    let mut sensitive = false;
    let mut notes = Vec::new();
    for (k, v) in entries {
        let key = scalar(k).unwrap_or_default();
        match key {
            "img" | "run" => match scalar(v) {
                Some(s) if !s.trim().is_empty() => {
                    let slot = if key == "img" { &mut img } else { &mut run };
                    *slot = Some(At::new(s.to_string(), v.pos));
                }
                _ => issues.push(Issue::new(
                    v.pos,
                    format!("`{key}` must be text, found {}", v.kind()),
                    None,
                )),
            },
            "after" => after = names(v, "after", issues),
            "env" => env_names = names(v, "env", issues),
            "vol" => vols = names(v, "vol", issues),
            "sensitive" | "noLog" => match &v.value {
                Value::Scalar(s, Style::Plain) if s == "true" || s == "false" => {
                    sensitive |= s == "true";
                    if key == "noLog" && s == "true" {
                        notes.push("`noLog: true` → `sensitive: true` (its stdout is kept out of the log and the results)".into());
                    }
                }
                _ => issues.push(Issue::new(
                    v.pos,
                    format!("`{key}` is `true` or `false`, found {}", shown(v)),
                    None,
                )),
            },
            other => {
                let (message, hint) = match UNSUPPORTED.iter().find(|(u, _)| *u == other) {
                    Some((_, why)) => (
                        format!("dockercise's `{other}` is not supported by Sentinel"),
                        Some((*why).to_string()),
                    ),
                    None => (
                        format!("unknown key `{other}`"),
                        did_you_mean(other, KEYS.iter().copied())
                            .or_else(|| Some(format!("expected one of: {}", KEYS.join(", ")))),
                    ),
                };
                issues.push(Issue::new(k.pos, message, hint));
            }
        }
    }
    let checked = name.parse::<sentinel_api::StageName>().is_ok();
    let action = match (img, run) {
        (Some(image), Some(script)) => Some(ActionDraft::Container {
            image: Some(image),
            script,
            shell: Shell::Plain,
            docker: None,
            image_command: false,
            commit: None,
        }),
        (img, run) => {
            if checked {
                let why = match (img.is_none(), run.is_none()) {
                    (true, true) => {
                        "nothing to run: give it `img` (the image) and `run` (the script)"
                    }
                    (true, false) => "no `img` (the image its script runs in)",
                    _ => "no `run` (the script)",
                };
                issues.push(Issue::new(
                    node.pos,
                    format!("stage `{name}` has {why}"),
                    None,
                ));
            }
            None
        }
    };

    // dockercise's context: OUT (the stage's own folder) and the run's id.
    let mut env = vec![
        VarDraft {
            name: At::new("OUT".into(), node.pos),
            value: EnvDraft::Template(At::new(
                // The workspace's path in a container stage.
                format!("/workspace/{name}"),
                node.pos,
            )),
        },
        VarDraft {
            name: At::new("GRAPH_CI_RUN_ID".into(), node.pos),
            value: EnvDraft::Template(At::new("${run.id}".into(), node.pos)),
        },
    ];
    for item in env_names {
        let var = item.value.to_uppercase();
        let value = if stage_names.contains(&item.value.as_str()) {
            notes.push(format!(
                "`env: {}` → {var} is the trimmed output of stage `{}`",
                item.value, item.value
            ));
            EnvDraft::Template(At::new(
                format!("${{stages.{}.output}}", item.value),
                item.pos,
            ))
        } else {
            notes.push(format!(
                "`env: {}` → {var} is taken from the environment sentinel runs in",
                item.value
            ));
            EnvDraft::FromHost(item.pos)
        };
        env.retain(|v| v.name.value != var);
        env.push(VarDraft {
            name: At::new(var, item.pos),
            value,
        });
    }
    let mut volumes = Vec::new();
    for item in vols {
        let (stage, path) = match item.value.split_once(':') {
            Some((s, p)) => (s.to_string(), Some(At::new(p.to_string(), item.pos))),
            None => (item.value.clone(), None),
        };
        if stage == "code" && !stage_names.contains(&"code") && path.is_none() {
            notes.push("`vol: code` → the project's files, which are the workspace".into());
            continue;
        }
        volumes.push(VolumeDraft {
            stage: At::new(stage, item.pos),
            path,
        });
    }
    if sensitive {
        notes.push("sensitive: out/ holds its output during the run; it is never published".into());
    }
    Some(StageDraft {
        name: At::new(name.to_string(), key_pos),
        pos: node.pos,
        action,
        after,
        volumes,
        volumes_field: "vol",
        env,
        when: When::OnSuccess,
        sensitive,
        approval: None,
        limits: LimitsDraft::default(),
        cache: None,
        retry: None,
        notes,
    })
}
