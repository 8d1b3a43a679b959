//! `sentinel convert`: any dialect's draft printed as the equivalent native
//! `sentinel.yml` (version 1), with comments saying how each dialect-specific
//! thing was mapped. Reading the result back gives the same plan.

use std::fmt::Write as _;

use crate::dialect::Dialect;
use crate::draft::{ActionDraft, At, Draft, EnvDraft, JobRunDraft, LimitsDraft, VarDraft};
use crate::plan::{Shell, When};

/// A scalar as YAML: plain when that reads back as the same string, else
/// double-quoted (JSON's escaping is valid YAML).
pub fn scalar(s: &str) -> String {
    let plain = !s.is_empty()
        && s.trim() == s
        && !s.contains(": ")
        && !s.contains(" #")
        && !s.ends_with(':')
        && s.chars()
            .all(|c| c.is_alphanumeric() || "_-./@:+=$%()*?,~ ".contains(c))
        && !s.starts_with(|c: char| "-?:,[]{}#&*!|>'\"%@`~$".contains(c))
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "true" | "false" | "yes" | "no" | "on" | "off" | "null"
        )
        && s.parse::<f64>().is_err()
        && !s.contains("${");
    if plain {
        s.to_string()
    } else {
        serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
    }
}

/// A possibly multi-line value under `key:` at `indent` spaces.
/// A build stage's `build:` mapping.
fn build(out: &mut String, b: &crate::draft::BuildDraft) {
    out.push_str("    build:\n");
    for (k, v) in [
        ("context", &b.context),
        ("dockerfile", &b.dockerfile),
        ("target", &b.target),
    ] {
        if let Some(v) = v {
            value(out, 6, k, &v.value);
        }
    }
    for (field, map) in [
        ("args", &b.args),
        ("labels", &b.labels),
        ("secrets", &b.secrets),
    ] {
        if !map.is_empty() {
            let _ = writeln!(out, "      {field}:");
            for (k, v) in map {
                value(out, 8, &scalar(&k.value), &v.value);
            }
        }
    }
    let list = |l: &[At<String>]| names_list(l.iter().map(|t| t.value.clone()));
    let _ = writeln!(out, "      tags: {}", list(&b.tags));
    for (k, on) in [("pull", b.pull), ("no_cache", b.no_cache)] {
        if on {
            let _ = writeln!(out, "      {k}: true");
        }
    }
    match &b.push {
        crate::draft::PushDraft::None => {}
        crate::draft::PushDraft::All => out.push_str("      push: true\n"),
        crate::draft::PushDraft::Tags(t) => {
            let _ = writeln!(out, "      push: {}", list(t));
        }
    }
}

fn value(out: &mut String, indent: usize, key: &str, v: &str) {
    let pad = " ".repeat(indent);
    let lines: Vec<&str> = v.split('\n').collect();
    let blockable = v.contains('\n')
        && !v.contains('\r')
        && !v.contains('\t')
        && lines.iter().all(|l| l.trim_end() == *l)
        && !v.trim_end_matches('\n').is_empty()
        && !v.ends_with("\n\n");
    if !blockable {
        let _ = writeln!(out, "{pad}{key}: {}", scalar(v));
        return;
    }
    let chomp = if v.ends_with('\n') { "" } else { "-" };
    let first_indented = v.starts_with(' ');
    let indicator = if first_indented { "2" } else { "" };
    let _ = writeln!(out, "{pad}{key}: |{indicator}{chomp}");
    for line in v.strip_suffix('\n').unwrap_or(v).split('\n') {
        if line.is_empty() {
            out.push('\n');
        } else {
            let _ = writeln!(out, "{pad}  {line}");
        }
    }
}

fn names_list(items: impl IntoIterator<Item = String>) -> String {
    let items: Vec<String> = items.into_iter().map(|s| scalar(&s)).collect();
    format!("[{}]", items.join(", "))
}

fn vars(out: &mut String, indent: usize, vars: &[VarDraft]) {
    if vars.is_empty() {
        return;
    }
    let pad = " ".repeat(indent);
    let _ = writeln!(out, "{pad}env:");
    for v in vars {
        match &v.value {
            EnvDraft::FromHost(_) => {
                let _ = writeln!(out, "{pad}  {}: ~", scalar(&v.name.value));
            }
            EnvDraft::Template(t) => value(out, indent + 2, &scalar(&v.name.value), &t.value),
        }
    }
}

fn limits(out: &mut String, indent: usize, l: &LimitsDraft) {
    let pad = " ".repeat(indent);
    let mut line = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            let _ = writeln!(out, "{pad}{k}: {v}");
        }
    };
    line("timeout", l.timeout.as_ref().map(|v| scalar(&v.value)));
    line(
        "idle_timeout",
        l.idle_timeout.as_ref().map(|v| scalar(&v.value)),
    );
    line("memory", l.memory.as_ref().map(|v| scalar(&v.value)));
    line("cpus", l.cpus.as_ref().map(|v| v.value.to_string()));
    line("network", l.network.as_ref().map(|v| scalar(&v.value)));
    line("log_limit", l.log_limit.as_ref().map(|v| scalar(&v.value)));
    line("pids", l.pids.as_ref().map(|v| v.value.to_string()));
    line("user", l.user.as_ref().map(|v| scalar(&v.value)));
    line("reuse", l.reuse.as_ref().map(|v| v.value.to_string()));
    line(
        "placement",
        l.placement.as_ref().map(|v| {
            let items: Vec<String> = v.value.iter().map(|c| scalar(c)).collect();
            format!("[{}]", items.join(", "))
        }),
    );
}

fn limits_set(l: &LimitsDraft) -> bool {
    l.timeout.is_some()
        || l.idle_timeout.is_some()
        || l.memory.is_some()
        || l.cpus.is_some()
        || l.network.is_some()
        || l.log_limit.is_some()
        || l.pids.is_some()
        || l.user.is_some()
        || l.placement.is_some()
}

/// The native `sentinel.yml` equivalent to `draft`, read from `file`.
pub fn to_native(draft: &Draft, file: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# sentinel.yml converted by `sentinel convert` from {file} ({} dialect).",
        draft.dialect
    );
    if draft.dialect == Dialect::Dockercise {
        out.push_str(
            "# dockercise: each stage's stdout is out/<stage> in the workspace (as it was), its\n\
             # `env` names became variables and edges, and `vol` became `volumes`.\n",
        );
    }
    out.push_str("version: 1\n");
    if let Some(n) = &draft.name {
        let _ = writeln!(out, "name: {}", scalar(n));
    }
    if let Some(b) = &draft.box_image {
        let _ = writeln!(out, "box: {}", scalar(b));
    }
    if !draft.workspace.dirs.is_empty() {
        let _ = writeln!(
            out,
            "workspace: {{git: {}, dirs: {}}}",
            draft.workspace.git,
            names_list(draft.workspace.dirs.iter().map(|d| d.value.clone()))
        );
    } else if !draft.workspace.git {
        out.push_str("workspace: {git: false}\n");
    }
    vars(&mut out, 0, &draft.env);
    if !draft.secrets.is_empty() {
        let _ = writeln!(
            out,
            "secrets: {}",
            names_list(draft.secrets.iter().map(|s| s.value.clone()))
        );
    }
    if limits_set(&draft.defaults) {
        out.push_str("defaults:\n");
        limits(&mut out, 2, &draft.defaults);
    }
    if !draft.services.is_empty() {
        out.push_str("services:\n");
        for s in &draft.services {
            let _ = writeln!(out, "  {}:", scalar(&s.name.value));
            if let Some(i) = &s.image {
                let _ = writeln!(out, "    image: {}", scalar(i));
            }
            if let Some(c) = &s.command {
                value(&mut out, 4, "command", c);
            }
            if !s.env.is_empty() {
                out.push_str("    env:\n");
                for (k, v) in &s.env {
                    value(&mut out, 6, &scalar(&k.value), &v.value);
                }
            }
            if let Some(r) = &s.ready {
                value(&mut out, 4, "ready", r);
            }
            if s.links {
                out.push_str("    links: true\n");
            }
            if let Some(t) = &s.ready_timeout {
                let _ = writeln!(out, "    ready_timeout: {}", scalar(&t.value));
            }
        }
    }
    if !draft.registries.is_empty() {
        out.push_str("registries:\n");
        for r in &draft.registries {
            let _ = writeln!(out, "  {}:", scalar(&r.name.value));
            for (k, v) in [
                ("host", &r.host),
                ("steps", &r.steps),
                ("username", &r.username),
                ("password", &r.password),
            ] {
                if let Some(v) = v {
                    value(&mut out, 4, k, &v.value);
                }
            }
        }
    }
    out.push_str("stages:\n");
    for s in &draft.stages {
        let _ = writeln!(out, "  {}:", scalar(&s.name.value));
        for note in &s.notes {
            let _ = writeln!(out, "    # {note}");
        }
        match &s.action {
            Some(ActionDraft::Container {
                image,
                script,
                shell,
                docker,
                image_command,
                commit,
            }) => {
                if let Some(i) = image {
                    let _ = writeln!(out, "    image: {}", scalar(&i.value));
                }
                if let Some(d) = docker {
                    let _ = writeln!(out, "    docker: {}", d.value);
                }
                if *image_command {
                    out.push_str("    image_command: true\n");
                }
                if let Some(c) = commit {
                    let _ = writeln!(out, "    commit: {}", scalar(&c.value));
                }
                match shell {
                    _ if *image_command => {}
                    Shell::Strict => value(&mut out, 4, "run", &script.value),
                    Shell::Plain => {
                        out.push_str(
                            "    # the script ran with `sh -c`: `set +e` keeps its last command deciding\n",
                        );
                        value(&mut out, 4, "run", &format!("set +e\n{}", script.value));
                    }
                }
            }
            Some(ActionDraft::Job {
                image,
                steps,
                after_steps,
                shell,
                commit,
            }) => {
                if let Some(c) = commit {
                    let _ = writeln!(out, "    commit: {}", scalar(&c.value));
                }
                // A `sh` job (wercker's) keeps its scripts' own `set -e` choice.
                let plain = if *shell == Shell::Plain {
                    out.push_str(
                        "    # its scripts ran with `sh`: `set +e` keeps each one's own choice\n",
                    );
                    "set +e\n"
                } else {
                    ""
                };
                if let Some(i) = image {
                    let _ = writeln!(out, "    image: {}", scalar(&i.value));
                }
                for (field, list) in [("steps", steps), ("after_steps", after_steps)] {
                    if list.is_empty() {
                        continue;
                    }
                    let _ = writeln!(out, "    {field}:");
                    for step in list {
                        let _ = writeln!(out, "      - name: {}", scalar(&step.name.value));
                        if let Some(t) = &step.timeout {
                            let _ = writeln!(out, "        timeout: {}", scalar(&t.value));
                        }
                        match &step.run {
                            JobRunDraft::Script(script) => {
                                value(&mut out, 8, "run", &format!("{plain}{}", script.value))
                            }
                            JobRunDraft::Step {
                                step,
                                with,
                                templates,
                                ..
                            } => {
                                let _ = writeln!(out, "        step: {}", scalar(&step.value));
                                if !with.is_empty() {
                                    out.push_str("        with:\n");
                                    for (k, v) in with {
                                        // Plain text stays plain: `${` would read as a reference.
                                        let v = if *templates {
                                            v.value.clone()
                                        } else {
                                            v.value.replace("${", "$${")
                                        };
                                        value(&mut out, 10, &scalar(&k.value), &v);
                                    }
                                }
                            }
                        }
                    }
                }
            }
            Some(ActionDraft::Step { step, with, .. }) => {
                let _ = writeln!(out, "    step: {}", scalar(&step.value));
                if !with.is_empty() {
                    out.push_str("    with:\n");
                    for (k, v) in with {
                        value(&mut out, 6, &scalar(&k.value), &v.value);
                    }
                }
            }
            Some(ActionDraft::Build(b)) => build(&mut out, b),
            None => out.push_str("    # (this stage could not be read)\n"),
        }
        if !s.after.is_empty() {
            let _ = writeln!(
                out,
                "    after: {}",
                names_list(s.after.iter().map(|a| a.value.clone()))
            );
        }
        if !s.volumes.is_empty() {
            let items: Vec<String> = s
                .volumes
                .iter()
                .map(|v| match &v.path {
                    None => scalar(&v.stage.value),
                    Some(p) => format!(
                        "{{stage: {}, path: {}}}",
                        scalar(&v.stage.value),
                        scalar(&p.value)
                    ),
                })
                .collect();
            let _ = writeln!(out, "    volumes: [{}]", items.join(", "));
        }
        vars(&mut out, 4, &s.env);
        match s.when {
            When::OnSuccess => {}
            other => {
                let _ = writeln!(out, "    when: {}", other.as_str());
            }
        }
        if s.sensitive {
            out.push_str("    sensitive: true\n");
        }
        if let Some(a) = &s.approval {
            let _ = writeln!(out, "    approval: {}", scalar(&a.value));
        }
        limits(&mut out, 4, &s.limits);
        if let Some(c) = &s.cache {
            let list = |l: &[At<String>]| {
                l.iter()
                    .map(|v| scalar(&v.value))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            out.push_str(
                "    cache:
",
            );
            let _ = writeln!(out, "      key: {}", scalar(&c.key.value));
            if !c.restore_keys.is_empty() {
                let _ = writeln!(out, "      restore_keys: [{}]", list(&c.restore_keys));
            }
            let _ = writeln!(out, "      paths: [{}]", list(&c.paths));
        }
        if let Some(r) = &s.retry {
            let _ = writeln!(out, "    retry:\n      attempts: {}", r.attempts.value);
            if !r.on.is_empty() {
                let on: Vec<String> = r.on.iter().map(|v| scalar(&v.value)).collect();
                let _ = writeln!(out, "      on: [{}]", on.join(", "));
            }
            if let Some(b) = &r.backoff {
                let _ = writeln!(out, "      backoff: {}", scalar(&b.value));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_read_back() {
        for s in [
            "plain",
            "echo hi",
            "true",
            "42",
            "a: b",
            "${run.id}",
            "-x",
            "",
            " lead",
            "it's",
            "q\"uote",
            "tab\there",
            "~",
            "sentinel/busybox:local",
        ] {
            let doc = format!("k: {}\n", scalar(s));
            let n = crate::yaml::parse(&doc, Default::default()).unwrap();
            let got = match &n.get("k").unwrap().value {
                crate::yaml::Value::Scalar(v, _) => v.clone(),
                crate::yaml::Value::Null => String::new(),
                _ => panic!("{doc}"),
            };
            assert_eq!(got, s, "{doc}");
        }
    }

    #[test]
    fn blocks_read_back() {
        for v in [
            "line one\nline two",
            "a\n\nb\n",
            "  indented first\nsecond",
            "trailing space \nx",
        ] {
            let mut doc = String::new();
            value(&mut doc, 0, "k", v);
            let n = crate::yaml::parse(&doc, Default::default()).unwrap();
            match &n.get("k").unwrap().value {
                crate::yaml::Value::Scalar(got, _) => assert_eq!(got, v, "{doc}"),
                other => panic!("{other:?} from {doc}"),
            }
        }
    }
}
