//! An image build stage's `build:`: its context and Dockerfile inside the
//! workspace, its arguments, labels and tags, and which tags it pushes.

use sentinel_api::StageName;

use super::{Ctx, check_refs, parse_template};
use crate::draft::{At, BuildDraft, EnvDraft, PushDraft, RegistryDraft};
use crate::plan::{BuildAction, RegistryPlan};
use crate::template::{Ref, Template};

/// Why a name is not an image reference to build or commit to
/// (`repo[:tag]`, the repository lower-case), if it is not.
pub(super) fn image_ref_problem(r: &str) -> Option<&'static str> {
    let (repo, tag) = match r.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, Some(tag)),
        _ => (r, None),
    };
    let repo_ok = !repo.is_empty()
        && repo.split('/').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-:".contains(&b))
        });
    let tag_ok = tag.is_none_or(|t| {
        !t.is_empty()
            && t.len() <= 128
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    });
    (!(repo_ok && tag_ok))
        .then_some("is not an image name: a lower-case repository, optionally `:tag`")
}

/// A path inside the workspace as written, normalised (`.` for the
/// workspace itself); `None` when it leaves it.
pub(super) fn inside(path: &str) -> Option<String> {
    let p = std::path::Path::new(path);
    if p.is_absolute() {
        return None;
    }
    let mut parts = Vec::new();
    for c in p.components() {
        match c {
            std::path::Component::Normal(s) => parts.push(s.to_str()?.to_string()),
            std::path::Component::CurDir => {}
            _ => return None,
        }
    }
    Some(if parts.is_empty() {
        ".".into()
    } else {
        parts.join("/")
    })
}

/// The reference of `t` through which a secret would reach the build, if
/// any: a secret, a pipeline variable made from one, a sensitive stage's
/// output.
fn secret_ref(cx: &Ctx<'_>, t: &Template) -> Option<String> {
    t.refs().find_map(|r| match r {
        Ref::Secret(_) => Some(r.to_string()),
        Ref::Env(n) => cx
            .draft
            .env
            .iter()
            .find(|v| &v.name.value == n)
            .and_then(|v| match &v.value {
                EnvDraft::Template(value) => crate::template::parse(&value.value).ok(),
                EnvDraft::FromHost(_) => None,
            })
            .filter(|t| t.refs().any(|r| matches!(r, Ref::Secret(_))))
            .map(|_| r.to_string()),
        Ref::StageOutput(s) | Ref::StageNamedOutput(s, _)
            if cx
                .draft
                .stages
                .iter()
                .any(|d| d.name.value == s.as_str() && d.sensitive) =>
        {
            Some(r.to_string())
        }
        _ => None,
    })
}

/// A value of the build (an argument, a label, a tag): its references
/// checked, secrets refused (`what` names it in messages).
fn value(
    cx: &mut Ctx<'_>,
    secrets: &[String],
    name: &StageName,
    v: &At<String>,
    what: &str,
) -> Option<Template> {
    let t = parse_template(cx, v)?;
    check_refs(cx, v.pos, &t, Some(name), secrets);
    if let Some(r) = secret_ref(cx, &t) {
        cx.issue(
            v.pos,
            format!("{what} uses `{r}`, a secret: it would be kept in the image's configuration or history"),
            Some(
                "give it as a secret mount: `secrets: {ID: ${secrets.NAME}}` and `RUN --mount=type=secret,id=ID` in the Dockerfile; push credentials go in `registries:`"
                    .into(),
            ),
        );
        return None;
    }
    Some(t)
}

/// A step registry's address: `oci://host/namespace`, `file:///folder`
/// or `s3://bucket/prefix`.
fn step_address_ok(url: &str) -> bool {
    let rest = |p: &str| {
        url.strip_prefix(p)
            .is_some_and(|r| !r.is_empty() && !r.starts_with('/'))
    };
    rest("oci://")
        || rest("s3://")
        || url
            .strip_prefix("file://")
            .is_some_and(|r| r.starts_with('/'))
}

/// The pipeline's registries: an image registry's host each (no scheme, no
/// path), at most one entry per host, credentials as references only; a
/// step registry's address, with no credentials of its own (they are read
/// when the run starts, after its steps are resolved).
pub(super) fn registries(
    cx: &mut Ctx<'_>,
    list: &[RegistryDraft],
    secrets: &[String],
) -> Vec<RegistryPlan> {
    let mut out: Vec<RegistryPlan> = Vec::new();
    for r in list {
        if let Some(url) = &r.steps
            && !step_address_ok(url.value.trim())
        {
            cx.issue(
                url.pos,
                format!("`{}` is not a step registry's address", url.value),
                Some(
                    "`oci://host[:port]/namespace`, `file:///folder` or `s3://bucket/prefix`"
                        .into(),
                ),
            );
        }
        let Some(host) = &r.host else {
            if r.steps.is_none() {
                cx.issue(
                    r.name.pos,
                    format!("registry `{}` has neither `host` (an image registry) nor `steps` (a step registry)", r.name.value),
                    None,
                );
            } else if let Some(u) = r.username.as_ref().or(r.password.as_ref()) {
                cx.issue(
                    u.pos,
                    format!("step registry `{}` cannot take credentials here: steps are resolved before the run's secrets are read", r.name.value),
                    Some("give them in the machine's configuration: a `[registries.NAME]` with the same host and `password_env` (or a server's `password_secret`)".into()),
                );
            }
            continue;
        };
        let host_at = host;
        let host = host.value.trim();
        let host_ok = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
        if !host_ok {
            cx.issue(
                host_at.pos,
                format!("`{}` is not a registry host", host_at.value),
                Some("`host[:port]` as image names write it, like `registry.example.com` or `127.0.0.1:5000` (no `https://`, no path)".into()),
            );
        } else if out.iter().any(|o| o.host == host) {
            cx.issue(
                host_at.pos,
                format!("two registries have the host `{host}`"),
                Some("one entry per host: its credentials serve every image there".into()),
            );
        }
        let mut tpl = |v: &Option<At<String>>| {
            let v = v.as_ref()?;
            let t = parse_template(cx, v)?;
            check_refs(cx, v.pos, &t, None, secrets);
            if let Some(r) = t.refs().find(|r| r.stage().is_some()) {
                cx.issue(
                    v.pos,
                    format!(
                        "a registry cannot use `{r}`: its credentials are read when the run starts"
                    ),
                    None,
                );
            }
            Some((v.pos, t))
        };
        let username = tpl(&r.username);
        let password = tpl(&r.password);
        match (&username, &password) {
            (Some(_), None) | (None, Some(_)) => cx.issue(
                r.name.pos,
                format!(
                    "registry `{}` needs both `username` and `password`, or neither",
                    r.name.value
                ),
                None,
            ),
            _ => {}
        }
        if let Some((pos, t)) = &password
            && t.refs().next().is_none()
        {
            cx.issue(
                *pos,
                format!("the password of registry `{}` is written in the file", r.name.value),
                Some("everyone who reads the file would have it: use `${secrets.NAME}` (declared in `secrets:`) or `${env.NAME}`".into()),
            );
        }
        out.push(RegistryPlan {
            name: r.name.value.clone(),
            host: host.to_string(),
            username: username.map(|(_, t)| t),
            password: password.map(|(_, t)| t),
        });
    }
    out
}

/// A build's plan.
pub(super) fn build_action(
    cx: &mut Ctx<'_>,
    secrets: &[String],
    name: &StageName,
    b: &BuildDraft,
) -> Option<BuildAction> {
    let before = cx.issues.len();
    let mut path = |v: Option<&At<String>>, default: &str, what: &str| match v {
        None => Some(default.to_string()),
        Some(v) => {
            match inside(&v.value) {
                Some(p) => Some(p),
                None => {
                    cx.issue(
                    v.pos,
                    format!("the {what} `{}` is outside the workspace", v.value),
                    Some("a relative path inside the workspace, like `app` or `docker/Dockerfile`".into()),
                );
                    None
                }
            }
        }
    };
    let context = path(b.context.as_ref(), ".", "build context");
    let dockerfile = path(b.dockerfile.as_ref(), "Dockerfile", "Dockerfile");
    let mut args = std::collections::BTreeMap::new();
    for (k, v) in &b.args {
        let ok = k
            .value
            .starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && k.value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            cx.issue(
                k.pos,
                format!("`{}` is not a build argument name", k.value),
                Some("letters, digits and `_`, not starting with a digit".into()),
            );
        }
        if let Some(t) = value(
            cx,
            secrets,
            name,
            v,
            &format!("build argument `{}`", k.value),
        ) {
            args.insert(k.value.clone(), t);
        }
    }
    let mut labels = std::collections::BTreeMap::new();
    for (k, v) in &b.labels {
        if k.value.trim().is_empty() {
            cx.issue(k.pos, "a label needs a name", None);
        }
        if let Some(t) = value(cx, secrets, name, v, &format!("label `{}`", k.value)) {
            labels.insert(k.value.clone(), t);
        }
    }
    if b.tags.is_empty() {
        cx.issue(
            b.pos,
            format!("build `{name}` has no `tags`; name the image"),
            Some("`tags: [registry.example.com/team/app:1.2]`".into()),
        );
    }
    let mut tags = Vec::new();
    for t in &b.tags {
        let Some(tpl) = value(cx, secrets, name, t, &format!("tag `{}`", t.value)) else {
            continue;
        };
        if tpl.refs().next().is_none()
            && let Some(why) = image_ref_problem(&t.value)
        {
            cx.issue(
                t.pos,
                format!("the tag `{}` {why}", t.value),
                Some("write it like `registry.example.com/team/app:1.2`".into()),
            );
        }
        tags.push(tpl);
    }
    let push = match &b.push {
        PushDraft::None => Vec::new(),
        PushDraft::All => tags.clone(),
        PushDraft::Tags(list) => list
            .iter()
            .filter_map(|p| match b.tags.iter().position(|t| t.value == p.value) {
                Some(i) => tags.get(i).cloned(),
                None => {
                    cx.issue(
                        p.pos,
                        format!("`{}` is not one of the build's `tags`", p.value),
                        Some("push names tags as `tags:` writes them".into()),
                    );
                    None
                }
            })
            .collect(),
    };
    let mut secret_mounts = std::collections::BTreeMap::new();
    for (k, v) in &b.secrets {
        let ok = !k.value.is_empty()
            && k.value.len() <= 100
            && k.value
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c));
        if !ok {
            cx.issue(
                k.pos,
                format!("`{}` is not a secret id", k.value),
                Some(
                    "letters, digits, `.`, `_` and `-`, as `RUN --mount=type=secret,id=…` names it"
                        .into(),
                ),
            );
        }
        if let Some(t) = parse_template(cx, v) {
            check_refs(cx, v.pos, &t, Some(name), secrets);
            if secret_ref(cx, &t).is_none() {
                let what = if t.refs().next().is_none() {
                    format!("the secret `{}` is written in the file", k.value)
                } else {
                    format!("the secret `{}` is not a secret reference", k.value)
                };
                cx.issue(
                    v.pos,
                    what,
                    Some("everyone who reads the file would have it: use `${secrets.NAME}` (declared in `secrets:`)".into()),
                );
            }
            secret_mounts.insert(k.value.clone(), t);
        }
    }
    if let Some(t) = &b.target
        && t.value.trim().is_empty()
    {
        cx.issue(
            t.pos,
            "`target:` is empty; name a stage of the Dockerfile",
            None,
        );
    }
    if cx.issues.len() > before {
        return None;
    }
    Some(BuildAction {
        context: context?,
        dockerfile: dockerfile?,
        args,
        target: b.target.as_ref().map(|t| t.value.clone()),
        labels,
        tags,
        pull: b.pull,
        no_cache: b.no_cache,
        push,
        secrets: secret_mounts,
    })
}

#[cfg(test)]
mod tests {
    use super::inside;

    #[test]
    fn paths_stay_inside_the_workspace() {
        assert_eq!(inside(".").as_deref(), Some("."));
        assert_eq!(inside("./app/").as_deref(), Some("app"));
        assert_eq!(inside("a/./b").as_deref(), Some("a/b"));
        assert_eq!(inside("../x"), None);
        assert_eq!(inside("a/../../x"), None);
        assert_eq!(inside("/etc"), None);
    }
}
