//! A wercker pipeline's steps: a bare name, `owner/name@version`, a name
//! with its settings (also wercker's legacy form, the settings beside the
//! name), or `script:` with `name`, `code` and `cwd`.

use super::{Reader, scalar, setting_text};

/// The first lines of a wercker script step: the variables the steps before
/// it exported are read, and its own are kept for the next when it ends
/// (each step runs in its own `sh`; wercker's shared one).
pub(crate) const SHARED_EXPORTS: &str =
    "[ -f /tmp/.wercker-env ] && . /tmp/.wercker-env\ntrap 'export -p > /tmp/.wercker-env' EXIT\n";
use crate::de::did_you_mean;
use crate::draft::{At, JobRunDraft, JobStepDraft};
use crate::yaml::{Node, Pos, Value};

impl Reader {
    /// A list of steps.
    pub(super) fn steps(&mut self, n: &Node, prelude: &str, after: bool) -> Vec<JobStepDraft> {
        let Value::Seq(items) = &n.value else {
            if !matches!(n.value, Value::Null) {
                self.issue(n.pos, "steps are a list", None);
            }
            return Vec::new();
        };
        let mut out: Vec<JobStepDraft> = Vec::new();
        for item in items {
            let Some(mut step) = self.step(item, prelude, after) else {
                continue;
            };
            // wercker allowed two steps of one name; a job's steps each have their own.
            let base = step.name.value.clone();
            let mut n = 1;
            while out.iter().any(|s| s.name.value == step.name.value) {
                n += 1;
                step.name.value = format!("{base} ({n})");
            }
            out.push(step);
        }
        out
    }

    /// One step: `name`, `{name: {settings}}`, the legacy `{name: , k: v}`,
    /// or `{script: {name, code}}`.
    fn step(&mut self, item: &Node, prelude: &str, after: bool) -> Option<JobStepDraft> {
        let (id, id_pos, data): (&str, Pos, Vec<(&Node, &Node)>) = match &item.value {
            Value::Scalar(s, _) => (s.as_str(), item.pos, Vec::new()),
            Value::Map(entries) if entries.len() == 1 => {
                let (k, v) = &entries[0];
                let id = scalar(k).unwrap_or_default();
                match &v.value {
                    Value::Map(d) => (id, k.pos, d.iter().map(|(a, b)| (a, b)).collect()),
                    _ => {
                        self.issue(
                            v.pos,
                            format!("step `{id}` is empty"),
                            Some(format!(
                                "give its settings as a mapping under `{id}:`, or write `- {id}`"
                            )),
                        );
                        return None;
                    }
                }
            }
            Value::Map(entries)
                if entries
                    .first()
                    .is_some_and(|(_, v)| matches!(v.value, Value::Null)) =>
            {
                // wercker's legacy form: the first key names the step, the others are its data.
                let (k, _) = &entries[0];
                (
                    scalar(k).unwrap_or_default(),
                    k.pos,
                    entries[1..].iter().map(|(a, b)| (a, b)).collect(),
                )
            }
            _ => {
                self.issue(
                    item.pos,
                    "a step is a name, or a mapping of one name to its settings",
                    Some(
                        "e.g. `- npm-install` or `- script: {name: test, code: make test}`".into(),
                    ),
                );
                return None;
            }
        };
        if id.trim().is_empty() {
            self.issue(id_pos, "a step needs a name", None);
            return None;
        }
        if id.starts_with("internal/") {
            self.issue(
                id_pos,
                format!("wercker's built-in step `{id}` is not supported"),
                None,
            );
            return None;
        }
        let mut display = None;
        let mut cwd = None;
        let mut code = None;
        let mut with = Vec::new();
        for (k, v) in &data {
            let key = scalar(k).unwrap_or_default();
            let Some(value) = setting_text(v) else {
                self.issue(
                    v.pos,
                    format!(
                        "setting `{key}` of step `{id}` must be text, found {}",
                        v.kind()
                    ),
                    Some(
                        "wercker passed lists and mappings as empty text; write the value as text"
                            .into(),
                    ),
                );
                continue;
            };
            match key {
                "name" => display = Some(At::new(value, v.pos)),
                "cwd" => cwd = Some(At::new(value, v.pos)),
                "checkpoint" => {}
                "code" if id == "script" => code = Some(At::new(value, v.pos)),
                _ if id == "script" => self.issue(
                    k.pos,
                    format!("a script step has `name`, `code` and `cwd`, not `{key}`"),
                    did_you_mean(key, ["name", "code", "cwd"]),
                ),
                _ => with.push((At::new(key.to_string(), k.pos), At::new(value, v.pos))),
            }
        }
        let (_, bare, _) = crate::step::split_reference(id);
        let name = display.unwrap_or_else(|| At::new(bare.to_string(), id_pos));
        let result = if after {
            "export WERCKER_RESULT=\"$SENTINEL_JOB_RESULT\"\n"
        } else {
            ""
        };
        if id == "script" {
            let Some(code) = code else {
                self.issue(id_pos, "a script step needs `code`", None);
                return None;
            };
            let cd = cwd
                .map(|c| format!("cd -- '{}'\n", c.value.replace('\'', "'\\''")))
                .unwrap_or_default();
            let strict = if code.value.starts_with("#!") {
                ""
            } else {
                "set -e\n"
            };
            // wercker ran every step in one shell: what a step exports is
            // there for the next (not for the after-steps, which wercker ran
            // in a restarted container).
            let shared = if after { "" } else { SHARED_EXPORTS };
            let script = format!("{result}{shared}{prelude}{cd}{strict}{}", code.value);
            return Some(JobStepDraft {
                name,
                run: JobRunDraft::Script(At::new(script, code.pos)),
                timeout: None,
            });
        }
        if let Some(c) = cwd {
            self.issue(
                c.pos,
                format!("`cwd` is supported on script steps only; step `{id}` runs from the project folder"),
                None,
            );
        }
        let with_pos = with.first().map_or(id_pos, |(k, _)| k.pos);
        Some(JobStepDraft {
            name,
            run: JobRunDraft::Step {
                step: At::new(id.to_string(), id_pos),
                with,
                with_pos,
                templates: false,
            },
            timeout: None,
        })
    }
}
