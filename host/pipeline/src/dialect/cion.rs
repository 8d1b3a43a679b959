//! cion's `.cion.yml`, as its design gave it: `build:` and `release:`, each
//! a list of one-key maps (`- image: …`, `- env: {…}`; a plain mapping with
//! the same keys reads the same). Each runs its image's own command (its
//! `ENTRYPOINT`/`CMD`, no script) on the checkout with `BUILD_DIR` (the
//! checkout), `ARTIFACTS_DIR` (one folder shared from build to release),
//! and its `env`; the build also gets `DOCKER_HOST`, Sentinel's scoped
//! Docker endpoint, where cion ran a Docker-in-Docker instance. The release
//! runs only after the build succeeded; its output is its status.

use crate::Diagnostics;
use crate::dialect::Dialect;
use crate::draft::{
    ActionDraft, At, Draft, EnvDraft, Issue, LimitsDraft, StageDraft, VarDraft, WorkspaceDraft,
};
use crate::plan::{Shell, When};
use crate::yaml::{Node, Pos, Value};

use super::one;

/// Where the build finds the checkout.
pub const BUILD_DIR: &str = "/workspace";
/// The artifacts folder, in the workspace (made before the build starts).
pub const ARTIFACTS: &str = ".cion-artifacts";

/// The text of a scalar node.
fn scalar(n: &Node) -> Option<&str> {
    match &n.value {
        Value::Scalar(s, _) => Some(s),
        _ => None,
    }
}

/// True when a document reads as cion's: only `build` and `release` at the
/// top, the build a list of one-key maps or a mapping with `image`.
pub(super) fn looks_like(root: &Node) -> bool {
    let Value::Map(entries) = &root.value else {
        return false;
    };
    let keys_ok = entries
        .iter()
        .all(|(k, _)| matches!(scalar(k), Some("build" | "release")));
    let build_ok = root.get("build").is_some_and(|b| match &b.value {
        Value::Seq(items) => items.iter().any(|i| i.get("image").is_some()),
        Value::Map(_) => b.get("image").is_some() && b.get("steps").is_none(),
        _ => false,
    });
    keys_ok && build_ok
}

/// One of `build` and `release`, read.
struct Part {
    pos: Pos,
    image: Option<At<String>>,
    env: Vec<VarDraft>,
}

fn read_part(name: &str, n: &Node, issues: &mut Vec<Issue>) -> Part {
    let mut part = Part {
        pos: n.pos,
        image: None,
        env: Vec::new(),
    };
    // Each `(key, value)` of the list's one-key maps, or of the mapping.
    let mut pairs: Vec<(&Node, &Node)> = Vec::new();
    match &n.value {
        Value::Seq(items) => {
            for item in items {
                match &item.value {
                    Value::Map(entries) if entries.len() == 1 => {
                        pairs.push((&entries[0].0, &entries[0].1));
                    }
                    _ => issues.push(Issue::new(
                        item.pos,
                        format!("each entry of `{name}` is a one-key map: `- image: …` or `- env: {{…}}`"),
                        None,
                    )),
                }
            }
        }
        Value::Map(entries) => pairs.extend(entries.iter().map(|(k, v)| (k, v))),
        _ => issues.push(Issue::new(
            n.pos,
            format!(
                "`{name}` is a list like `- image: my/build-image` and `- env: {{…}}`; found {}",
                n.kind()
            ),
            None,
        )),
    }
    for (k, v) in pairs {
        match scalar(k) {
            Some("image") => match scalar(v) {
                Some(image) if part.image.is_none() => {
                    part.image = Some(At::new(image.to_string(), v.pos))
                }
                Some(_) => issues.push(Issue::new(
                    k.pos,
                    format!("`{name}` names its image twice"),
                    None,
                )),
                None => issues.push(Issue::new(
                    v.pos,
                    format!("`image` is an image name; found {}", v.kind()),
                    None,
                )),
            },
            Some("env") => match &v.value {
                Value::Map(entries) => {
                    for (ek, ev) in entries {
                        let Some(key) = scalar(ek) else {
                            issues.push(Issue::new(ek.pos, "a variable's name is text", None));
                            continue;
                        };
                        let value = match &ev.value {
                            Value::Scalar(s, _) => s.clone(),
                            Value::Null => String::new(),
                            _ => {
                                issues.push(Issue::new(
                                    ev.pos,
                                    format!("`{key}` is a value; found {}", ev.kind()),
                                    None,
                                ));
                                continue;
                            }
                        };
                        // cion passed values as written: `${` is not a reference.
                        part.env.push(VarDraft {
                            name: At::new(key.to_string(), ek.pos),
                            value: EnvDraft::Template(At::new(value.replace("${", "$${"), ev.pos)),
                        });
                    }
                }
                Value::Null => {}
                _ => issues.push(Issue::new(
                    v.pos,
                    format!("`env` is a mapping of variables; found {}", v.kind()),
                    None,
                )),
            },
            Some(other) => issues.push(Issue::new(
                k.pos,
                format!("`{other}` is not a key of cion's `{name}`"),
                Some("`image` (run its own command) and `env` (its variables)".into()),
            )),
            None => issues.push(Issue::new(k.pos, "a key is text", None)),
        }
    }
    if part.image.is_none() {
        issues.push(Issue::new(
            part.pos,
            format!("`{name}` has no `image`"),
            Some("`- image: my/build-image`: the image whose own command runs".into()),
        ));
    }
    part
}

fn stage(
    name: &str,
    part: Part,
    docker: bool,
    after: Vec<At<String>>,
    extra: Vec<VarDraft>,
) -> StageDraft {
    let pos = part.pos;
    let mut env = extra;
    env.extend(part.env);
    StageDraft {
        name: At::new(name.to_string(), pos),
        pos,
        action: part.image.map(|image| ActionDraft::Container {
            script: At::new(String::new(), image.pos),
            image: Some(image),
            shell: Shell::Strict,
            docker: docker.then(|| At::new(true, pos)),
            image_command: true,
            commit: None,
        }),
        after,
        volumes: Vec::new(),
        volumes_field: "volumes",
        env,
        when: When::OnSuccess,
        sensitive: false,
        approval: None,
        limits: LimitsDraft::default(),
        cache: None,
        retry: None,
        notes: vec![format!(
            "cion's {name}: the image's own command, with BUILD_DIR and ARTIFACTS_DIR{}",
            if docker {
                " and DOCKER_HOST (the stage's Docker endpoint)"
            } else {
                ""
            }
        )],
    }
}

/// Reads a `.cion.yml` document.
pub(super) fn read(root: Node, file: &str) -> Result<Draft, Diagnostics> {
    let Value::Map(entries) = &root.value else {
        return Err(one(
            file,
            root.pos,
            format!(
                "a .cion.yml is a mapping with `build` and `release`; found {}",
                root.kind()
            ),
            None,
        ));
    };
    let mut issues = Vec::new();
    for (k, _) in entries {
        if !matches!(scalar(k), Some("build" | "release")) {
            issues.push(Issue::new(
                k.pos,
                format!("`{}` is not a key of a .cion.yml", scalar(k).unwrap_or("?")),
                Some("`build` and `release`".into()),
            ));
        }
    }
    let Some(build) = root.get("build") else {
        return Err(one(
            file,
            root.pos,
            "a .cion.yml needs `build`".into(),
            None,
        ));
    };
    let var = |name: &str, value: String, pos: Pos| VarDraft {
        name: At::new(name.to_string(), pos),
        value: EnvDraft::Template(At::new(value, pos)),
    };
    let dirs = |pos: Pos| {
        vec![
            var("BUILD_DIR", BUILD_DIR.to_string(), pos),
            var("ARTIFACTS_DIR", format!("{BUILD_DIR}/{ARTIFACTS}"), pos),
        ]
    };
    let build_part = read_part("build", build, &mut issues);
    let build_pos = build_part.pos;
    let mut stages = vec![stage(
        "build",
        build_part,
        true,
        Vec::new(),
        dirs(build_pos),
    )];
    if let Some(release) = root.get("release") {
        let part = read_part("release", release, &mut issues);
        let pos = part.pos;
        stages.push(stage(
            "release",
            part,
            false,
            vec![At::new("build".to_string(), pos)],
            dirs(pos),
        ));
    }
    Ok(Draft {
        dialect: Dialect::Cion,
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
        workspace: WorkspaceDraft {
            git: true,
            dirs: vec![At::new(ARTIFACTS.to_string(), root.pos)],
        },
        issues,
    })
}
