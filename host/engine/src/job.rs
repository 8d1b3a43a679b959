//! A job's steps made executable: a script as written; a script step as a
//! script of its own (its settings exported for the job's shell to expand,
//! its folder's `run.sh` run from where the container sees the folder); a
//! WebAssembly step as step work whose settings' `$NAME`s are the job's
//! variables.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use sentinel_pipeline::script_step::ScriptManifest;
use sentinel_pipeline::step::split_reference;
use sentinel_pipeline::{JobAction, JobRun, JobStep, StepAction};

use crate::env::{StepSettings, expand_job_vars};
use crate::exec::{JobStepRun, JobStepWork, JobWork, STEPS_MOUNT, StepWork, Var};

/// The helper functions wercker's own init step defined for every step
/// (`success`, `info`, `warn`, `debug`, `error`, `fail`, `setMessage`),
/// and the variables earlier steps exported, kept for the next at exit (as
/// wercker's one shared shell had them).
const WERCKER_HELPERS: &str = r#"_message() { printf '%b%b%b\n' "$2" "$1" '\033[m'; }
success() { _message "$1" '\033[32m\033[1m'; }
info() { _message "$1" '\033[37m\033[1m'; }
debug() { _message "$1" '\033[38m\033[1m'; }
warn() { _message "$1" '\033[33m\033[1m'; }
error() { _message "error: $1" '\033[31m\033[1m'; }
setMessage() { [ -n "$WERCKER_REPORT_MESSAGE_FILE" ] && echo "$1" > "$WERCKER_REPORT_MESSAGE_FILE"; return 0; }
fail() { _message "failed: $1" '\033[31m\033[1m'; setMessage "$1"; exit 1; }
if [ -n "${SENTINEL_JOB_RESULT:-}" ]; then export WERCKER_RESULT="$SENTINEL_JOB_RESULT"; fi
if [ -f /tmp/.wercker-env ]; then . /tmp/.wercker-env; fi
trap 'export -p > /tmp/.wercker-env' EXIT
"#;

/// A value inside double quotes, where the shell still expands `$NAME`
/// and `$(…)` (as wercker exported settings).
fn double_quoted(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 2);
    out.push('"');
    for c in v.chars() {
        if matches!(c, '"' | '\\' | '`') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// A value inside single quotes (taken as written).
fn single_quoted(v: &str) -> String {
    format!("'{}'", v.replace('\'', "'\\''"))
}

/// The script that runs a script step: the step's context and settings
/// exported, then its `run.sh` sourced from `mount` with `set +e` (a
/// wercker step's status is its last command's) and no input.
fn folder_script(step: &StepAction, kind: ScriptManifest, mount: &str, vars: &[Var]) -> String {
    let prefix = kind.prefix();
    let (owner, name, _) = split_reference(&step.step);
    let mut s = String::new();
    if kind == ScriptManifest::Wercker {
        s.push_str(WERCKER_HELPERS);
    }
    let _ = writeln!(s, "export {prefix}_STEP_ROOT={}", single_quoted(mount));
    let _ = writeln!(s, "export {prefix}_STEP_NAME={}", single_quoted(name));
    let _ = writeln!(
        s,
        "export {prefix}_STEP_OWNER={}",
        single_quoted(owner.unwrap_or(if kind == ScriptManifest::Wercker {
            "wercker"
        } else {
            ""
        }))
    );
    for v in vars {
        let _ = writeln!(s, "export {}={}", v.name, double_quoted(&v.value));
    }
    s.push_str("set +e\n");
    let _ = writeln!(
        s,
        ". {} < /dev/null",
        single_quoted(&format!("{mount}/run.sh"))
    );
    s
}

/// The job's work: `env` is the job's environment, `settings` its steps'
/// resolved settings by step name.
pub fn work(job: &JobAction, env: &[Var], settings: &BTreeMap<String, StepSettings>) -> JobWork {
    let mounts: Vec<(PathBuf, String)> = job
        .script_steps()
        .iter()
        .enumerate()
        .filter_map(|(i, st)| {
            let dir = st.resolved.script_dir()?;
            let (_, name, _) = split_reference(&st.step);
            Some((dir.to_path_buf(), format!("{STEPS_MOUNT}/{i}-{name}")))
        })
        .collect();
    let none = StepSettings::default();
    let one = |s: &JobStep| {
        let run = match &s.run {
            JobRun::Script(script) => JobStepRun::Script(script.clone()),
            JobRun::Step(st) => {
                let set = settings.get(&s.name).unwrap_or(&none);
                match (st.resolved.script, st.resolved.script_dir()) {
                    (Some(kind), Some(dir)) => {
                        let mount = mounts
                            .iter()
                            .find(|(d, _)| d == dir)
                            .map_or(STEPS_MOUNT, |(_, m)| m.as_str());
                        JobStepRun::Script(folder_script(st, kind, mount, &set.vars))
                    }
                    _ => {
                        // The step sees the job's context, and its settings
                        // with the job's variables expanded.
                        let mut vars: Vec<Var> = env
                            .iter()
                            .filter(|v| v.name.starts_with("SENTINEL_"))
                            .cloned()
                            .collect();
                        for v in &set.vars {
                            let (value, secret) = expand_job_vars(&v.value, env);
                            vars.retain(|x| x.name != v.name);
                            vars.push(Var {
                                name: v.name.clone(),
                                value,
                                secret: v.secret || secret,
                            });
                        }
                        JobStepRun::Wasm {
                            work: StepWork {
                                name: st.resolved.manifest.name.clone(),
                                wasm: st.resolved.wasm.clone(),
                                digest: st.resolved.digest.clone(),
                                workspace: st.resolved.manifest.capabilities.workspace,
                                http: set.http.clone(),
                            },
                            env: vars,
                        }
                    }
                }
            }
        };
        JobStepWork {
            name: s.name.clone(),
            run,
            timeout: s.timeout,
        }
    };
    JobWork {
        image: job.image.clone(),
        shell: job.shell,
        steps: job.steps.iter().map(one).collect(),
        after_steps: job.after_steps.iter().map(one).collect(),
        mounts,
        commit: job.commit.clone(),
        steps_executor: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_quoted_for_the_shell_to_expand() {
        assert_eq!(
            double_quoted("a $B \"c\" `d` \\"),
            "\"a $B \\\"c\\\" \\`d\\` \\\\\""
        );
        assert_eq!(single_quoted("it's"), "'it'\\''s'");
    }
}
