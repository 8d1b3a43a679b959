//! Builds a stage's environment from the plan: the `SENTINEL_*` context,
//! the pipeline's `env:`, then the stage's own `env:`, with every `${…}`
//! resolved. Each variable says whether it holds a secret (a container gets
//! those from a file, never in its configuration). It also records what
//! the stage document may show: values, or the reference itself for secrets
//! and sensitive outputs.

use std::collections::BTreeMap;

use sentinel_api::{GitContext, RunId, StageName};
use sentinel_pipeline::script_step::script_setting_env;
use sentinel_pipeline::step::{setting_env_name, split_reference};
use sentinel_pipeline::{EnvValue, JobRun, Plan, Ref, StagePlan, StepAction, Template, When};

use crate::exec::{PRIVATE_MOUNT, Var, WORKSPACE_MOUNT};
use crate::masker::MIN_SECRET_LEN;

/// Why a value could not be resolved: what is missing, or what is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    #[error("environment variable `{0}` is not set")]
    HostVar(String),
    #[error("unknown variable `{0}`")]
    UnknownVar(String),
    #[error("secret `{0}` is not set")]
    Secret(String),
    #[error("stage `{0}` has no output")]
    NoOutput(String),
    #[error("stage `{stage}` set no output `{key}` (write `{key}=…` to $SENTINEL_OUTPUT)")]
    NoNamedOutput { stage: String, key: String },
    #[error("`{0}`: this run deploys nothing (a deploy marker or a promotion starts a deploy run)")]
    NotDeploy(String),
    #[error(
        "`{0}`: this run was not started by another pipeline's run (`after =` in the server's config starts one so)"
    )]
    NotUpstream(String),
    #[error("`{0}`: this run's trigger does not tell it (a version watch does)")]
    NoTriggerValue(String),
    #[error(
        "`{0}`: the upstream run {1} has no such output (its stage did not succeed, is sensitive, or has no such key)"
    )]
    NoUpstreamOutput(String, RunId),
    #[error("setting `{setting}` is a secret: {source}")]
    ShortSecret {
        setting: String,
        #[source]
        source: crate::masker::MaskError,
    },
}

/// What a stage's environment is built from.
#[derive(Debug)]
pub struct EnvInputs<'a> {
    pub plan: &'a Plan,
    pub run_id: &'a RunId,
    pub git: Option<&'a GitContext>,
    /// What a deploy run deploys.
    pub deploy: Option<&'a sentinel_api::DeployFacts>,
    /// The run of another pipeline that started this one.
    pub upstream: Option<&'a crate::request::Upstream>,
    /// What its trigger told it (`${trigger.*}`).
    pub trigger_values: &'a BTreeMap<String, String>,
    pub host_env: &'a BTreeMap<String, String>,
    pub secrets: &'a BTreeMap<String, String>,
    /// Raw outputs of finished stages: the output and the named outputs.
    pub outputs: &'a BTreeMap<StageName, (String, BTreeMap<String, String>)>,
    /// Stages whose outputs are secrets.
    pub sensitive: &'a [StageName],
    /// The run's status so far, for `when: always | on_failure` stages.
    pub run_status: &'a str,
    /// Stages that failed so far (comma-separated), for the same stages.
    pub failed_stages: String,
}

/// The resolved environment and what may be recorded of it.
#[derive(Debug, Default)]
pub struct StageEnv {
    pub vars: Vec<Var>,
    /// Stage and pipeline variables as they may appear in documents.
    pub recorded: BTreeMap<String, String>,
    /// A step's settings as they may appear in documents.
    pub settings: BTreeMap<String, String>,
    /// Values of a step's secret settings: they join the masker.
    pub secret_values: Vec<String>,
    /// A step's allowed HTTP hosts, settings substituted.
    pub http: Vec<String>,
    /// A job's steps' settings, by step name.
    pub steps: BTreeMap<String, StepSettings>,
    /// A build's values, resolved.
    pub build: Option<crate::exec::BuildWork>,
    /// A container stage's image, when its name has references.
    pub image: Option<String>,
}

/// One step's resolved settings.
#[derive(Debug, Default, Clone)]
pub struct StepSettings {
    /// `SENTINEL_<STEP>_<KEY>` (a wercker script step's `WERCKER_…`).
    pub vars: Vec<Var>,
    /// As documents may show them.
    pub shown: BTreeMap<String, String>,
    /// A WebAssembly step's allowed HTTP hosts, settings substituted.
    pub http: Vec<String>,
}

/// The host (and port) of a URL-like value: `https://h:9000/x` → `h:9000`.
pub fn host_of(value: &str) -> String {
    let (scheme, rest) = value.split_once("://").map_or(("", value), |(s, r)| (s, r));
    let host = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    let host = host
        .rsplit_once('@')
        .map_or(host, |(_, h)| h)
        .to_ascii_lowercase();
    // A URL's host and port: the scheme's port when it names none.
    let has_port = match host.strip_prefix('[') {
        Some(v6) => v6.contains("]:"),
        None => host
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok()),
    };
    match scheme.to_ascii_lowercase().as_str() {
        "http" if !has_port => format!("{host}:80"),
        "https" if !has_port => format!("{host}:443"),
        _ => host,
    }
}

/// Resolves one reference; the error names what is missing.
pub fn resolve(inputs: &EnvInputs<'_>, r: &Ref) -> Result<String, EnvError> {
    let git = |f: fn(&GitContext) -> &Option<String>| {
        inputs.git.and_then(|g| f(g).clone()).unwrap_or_default()
    };
    match r {
        Ref::Env(name) => match inputs.plan.env.get(name) {
            Some(EnvValue::Value(t)) => t.render(|r| resolve(inputs, r)),
            Some(EnvValue::FromHost) => host(inputs, name),
            None => Err(EnvError::UnknownVar(name.clone())),
        },
        Ref::Secret(name) => inputs
            .secrets
            .get(name)
            .cloned()
            .ok_or_else(|| EnvError::Secret(name.clone())),
        Ref::StageOutput(s) => inputs
            .outputs
            .get(s)
            .map(|(o, _)| o.clone())
            .ok_or_else(|| EnvError::NoOutput(s.to_string())),
        Ref::StageNamedOutput(s, k) => inputs
            .outputs
            .get(s)
            .and_then(|(_, named)| named.get(k).cloned())
            .ok_or_else(|| EnvError::NoNamedOutput {
                stage: s.to_string(),
                key: k.clone(),
            }),
        Ref::RunId => Ok(inputs.run_id.to_string()),
        Ref::GitCommit => Ok(git(|g| &g.commit)),
        Ref::GitBranch => Ok(git(|g| &g.branch)),
        Ref::GitRepo => Ok(git(|g| &g.repo)),
        Ref::Deploy(field) => inputs
            .deploy
            .map(|d| field.of(d))
            .ok_or_else(|| EnvError::NotDeploy(r.to_string())),
        Ref::Trigger(field) => inputs
            .trigger_values
            .get(field.name())
            .cloned()
            .ok_or_else(|| EnvError::NoTriggerValue(r.to_string())),
        Ref::UpstreamRunId | Ref::UpstreamOutput(_) | Ref::UpstreamNamedOutput(..) => {
            let up = inputs
                .upstream
                .ok_or_else(|| EnvError::NotUpstream(r.to_string()))?;
            let value = match r {
                Ref::UpstreamOutput(s) => up.outputs.get(s).map(|(o, _)| o.clone()),
                Ref::UpstreamNamedOutput(s, k) => up
                    .outputs
                    .get(s)
                    .and_then(|(_, named)| named.get(k).cloned()),
                _ => Some(up.run.to_string()),
            };
            value.ok_or_else(|| EnvError::NoUpstreamOutput(r.to_string(), up.run.clone()))
        }
    }
}

fn host(inputs: &EnvInputs<'_>, name: &str) -> Result<String, EnvError> {
    inputs
        .host_env
        .get(name)
        .cloned()
        .ok_or_else(|| EnvError::HostVar(name.to_string()))
}

/// True when a template's value must be recorded as a reference.
fn is_secret(inputs: &EnvInputs<'_>, t: &Template) -> bool {
    t.refs().any(|r| match r {
        Ref::Secret(_) => true,
        Ref::StageOutput(s) | Ref::StageNamedOutput(s, _) => inputs.sensitive.contains(s),
        _ => false,
    })
}

/// Builds the environment of `stage`.
pub fn stage_env(inputs: &EnvInputs<'_>, stage: &StagePlan) -> Result<StageEnv, EnvError> {
    let mut env = StageEnv::default();
    let set_var = |vars: &mut Vec<Var>, k: &str, value: String, secret: bool| {
        vars.retain(|v| v.name != k);
        vars.push(Var {
            name: k.to_string(),
            value,
            secret,
        });
    };
    let set = |vars: &mut Vec<Var>, k: &str, v: String| set_var(vars, k, v, false);
    let context = [
        ("SENTINEL_RUN_ID", inputs.run_id.to_string()),
        ("SENTINEL_PIPELINE", inputs.plan.name.clone()),
        ("SENTINEL_STAGE", stage.name.to_string()),
        ("SENTINEL_WORKSPACE", WORKSPACE_MOUNT.to_string()),
        ("SENTINEL_ARTIFACTS", format!("{PRIVATE_MOUNT}/artifacts")),
        ("SENTINEL_OUTPUT", format!("{PRIVATE_MOUNT}/output")),
    ];
    for (k, v) in context {
        set(&mut env.vars, k, v);
    }
    if let Some(d) = inputs.deploy {
        for (k, v) in d.vars() {
            set(&mut env.vars, k, v);
        }
    }
    if !matches!(stage.action, sentinel_pipeline::Action::Step(_)) {
        // Kept between runs when the stage's `cache:` names it.
        set(
            &mut env.vars,
            "SENTINEL_CACHE_DIR",
            format!("{PRIVATE_MOUNT}/cache"),
        );
    }
    if stage.when != When::OnSuccess {
        set(
            &mut env.vars,
            "SENTINEL_RUN_STATUS",
            inputs.run_status.to_string(),
        );
        set(
            &mut env.vars,
            "SENTINEL_FAILED_STAGES",
            inputs.failed_stages.clone(),
        );
    }
    if let Some(g) = inputs.git {
        for (k, v) in [
            ("SENTINEL_COMMIT", &g.commit),
            ("SENTINEL_BRANCH", &g.branch),
            ("SENTINEL_REPO", &g.repo),
        ] {
            if let Some(v) = v {
                set(&mut env.vars, k, v.clone());
            }
        }
    }
    if let sentinel_pipeline::Action::Step(step) = &stage.action {
        let settings = step_settings(inputs, step, &mut env.secret_values)?;
        env.vars.extend(settings.vars);
        env.settings = settings.shown;
        env.http = settings.http;
        return Ok(env);
    }
    for (k, v) in &inputs.plan.env {
        let value = resolve(inputs, &Ref::Env(k.clone()))?;
        let secret = matches!(v, EnvValue::Value(t) if is_secret(inputs, t));
        let shown = match v {
            EnvValue::Value(t) if secret => t.to_string(),
            _ => value.clone(),
        };
        env.recorded.insert(k.clone(), shown);
        set_var(&mut env.vars, k, value, secret);
    }
    for (k, v) in &stage.env {
        let (value, secret, shown) = match v {
            EnvValue::FromHost => {
                let value = host(inputs, k)?;
                (value.clone(), false, value)
            }
            EnvValue::Value(t) => {
                let value = t.render(|r| resolve(inputs, r))?;
                let secret = is_secret(inputs, t);
                let shown = if secret { t.to_string() } else { value.clone() };
                (value, secret, shown)
            }
        };
        env.recorded.insert(k.clone(), shown);
        set_var(&mut env.vars, k, value, secret);
    }
    if let sentinel_pipeline::Action::Container(c) = &stage.action
        && let Some(t) = &c.image_ref
    {
        env.image = Some(t.render(|r| resolve(inputs, r))?);
    }
    if let sentinel_pipeline::Action::Build(b) = &stage.action {
        let render = |t: &Template| t.render(|r| resolve(inputs, r));
        let pairs = |m: &BTreeMap<String, Template>| {
            m.iter()
                .map(|(k, t)| Ok((k.clone(), render(t)?)))
                .collect::<Result<Vec<_>, EnvError>>()
        };
        env.build = Some(crate::exec::BuildWork {
            context: b.context.clone(),
            dockerfile: b.dockerfile.clone(),
            args: pairs(&b.args)?,
            target: b.target.clone(),
            labels: pairs(&b.labels)?,
            tags: b.tags.iter().map(render).collect::<Result<_, _>>()?,
            pull: b.pull,
            no_cache: b.no_cache,
            push: b.push.iter().map(render).collect::<Result<_, _>>()?,
            secrets: pairs(&b.secrets)?,
        });
    }
    if let sentinel_pipeline::Action::Job(job) = &stage.action {
        for st in job.steps.iter().chain(&job.after_steps) {
            if let JobRun::Step(step) = &st.run {
                let settings = step_settings(inputs, step, &mut env.secret_values)?;
                env.steps.insert(st.name.clone(), settings);
            }
        }
    }
    Ok(env)
}

/// A step's settings resolved: its variables, what documents may show of
/// them, and (for a WebAssembly step) the hosts it may reach. A secret
/// value joins `secret_values`, refused when too short to mask.
fn step_settings(
    inputs: &EnvInputs<'_>,
    step: &StepAction,
    secret_values: &mut Vec<String>,
) -> Result<StepSettings, EnvError> {
    let manifest = &step.resolved.manifest;
    let mut out = StepSettings::default();
    let mut values = BTreeMap::new();
    for (k, t) in &step.with {
        let value = t.render(|r| resolve(inputs, r))?;
        let secret = manifest.settings.get(k).is_some_and(|s| s.secret);
        let shown = if is_secret(inputs, t) {
            t.to_string()
        } else if secret {
            "***".to_string()
        } else {
            value.clone()
        };
        if secret && !value.is_empty() {
            if value.len() < MIN_SECRET_LEN {
                return Err(EnvError::ShortSecret {
                    setting: k.clone(),
                    source: crate::masker::MaskError::TooShort(value.len()),
                });
            }
            secret_values.push(value.clone());
        }
        out.shown.insert(k.clone(), shown);
        let name = match step.resolved.script {
            Some(kind) => script_setting_env(kind.prefix(), split_reference(&step.step).1, k),
            None => setting_env_name(&manifest.name, k),
        };
        out.vars.retain(|v| v.name != name);
        out.vars.push(Var {
            name,
            value: value.clone(),
            secret: secret || is_secret(inputs, t),
        });
        values.insert(k.clone(), value);
    }
    for entry in &manifest.capabilities.http {
        let mut host = entry.clone();
        for (k, v) in &values {
            host = host.replace(&format!("{{{k}}}"), &host_of(v));
        }
        if !host.contains('{') && !host.is_empty() {
            out.http.push(host.to_ascii_lowercase());
        }
    }
    Ok(out)
}

/// Expands `$NAME` and `${NAME}` in a step setting with the job's
/// variables, as the job's shell would (an unknown name is empty; a `$`
/// not followed by a name stays); also says whether a secret was used.
pub fn expand_job_vars(value: &str, vars: &[Var]) -> (String, bool) {
    fn ident_len(s: &str) -> usize {
        let b = s.as_bytes();
        if !b
            .first()
            .is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_')
        {
            return 0;
        }
        b.iter()
            .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_')
            .count()
    }
    let mut out = String::with_capacity(value.len());
    let mut secret = false;
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, tail) = match after.strip_prefix('{') {
            Some(b) => match b.find('}') {
                Some(e) if e > 0 && ident_len(&b[..e]) == e => (&b[..e], &b[e + 1..]),
                _ => ("", after),
            },
            None => {
                let n = ident_len(after);
                (&after[..n], &after[n..])
            }
        };
        if name.is_empty() {
            out.push('$');
            rest = after;
            continue;
        }
        if let Some(v) = vars.iter().rev().find(|v| v.name == name) {
            out.push_str(&v.value);
            secret |= v.secret;
        }
        rest = tail;
    }
    out.push_str(rest);
    (out, secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_urls_host_comes_with_its_port() {
        assert_eq!(
            host_of("https://Hooks.Example.com/x?y"),
            "hooks.example.com:443"
        );
        assert_eq!(host_of("http://user:pw@127.0.0.1:9000/p"), "127.0.0.1:9000");
        assert_eq!(host_of("http://example.com"), "example.com:80");
        assert_eq!(host_of("http://[::1]/"), "[::1]:80");
        assert_eq!(host_of("http://[::1]:8080/"), "[::1]:8080");
        assert_eq!(host_of("s3.example.com"), "s3.example.com");
    }

    #[test]
    fn job_variables_expand_as_a_shell_would() {
        let vars = [
            Var::plain("A", "1"),
            Var {
                name: "KEY".into(),
                value: "s3cr3t".into(),
                secret: true,
            },
        ];
        assert_eq!(expand_job_vars("x$A-${A}y", &vars), ("x1-1y".into(), false));
        assert_eq!(expand_job_vars("$KEY", &vars), ("s3cr3t".into(), true));
        assert_eq!(
            expand_job_vars("$NOPE.$ 5$ ${}", &vars),
            (".$ 5$ ${}".into(), false)
        );
        assert_eq!(expand_job_vars("cost $5", &vars), ("cost $5".into(), false));
    }

    #[test]
    fn a_secret_setting_too_short_to_mask_is_refused() {
        let fixtures =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipeline/tests/golden");
        let yaml = "version: 1\nsecrets: [TOKEN]\nstages:\n  greet:\n    step: ./fixtures/greet/step.wasm\n    with: {name: world, token: '${secrets.TOKEN}'}\n";
        let plan = sentinel_pipeline::parse_str_with(
            yaml,
            "sentinel.yml",
            "p",
            &sentinel_pipeline::NoSteps,
            &fixtures,
        )
        .unwrap();
        let run_id: RunId = "01JDX3K6Q2T8W9V5M4N3P2R1S0".parse().unwrap();
        let empty = BTreeMap::new();
        let env_with = |token: &str| {
            let secrets = BTreeMap::from([("TOKEN".to_string(), token.to_string())]);
            let inputs = EnvInputs {
                plan: &plan,
                run_id: &run_id,
                git: None,
                deploy: None,
                upstream: None,
                trigger_values: &empty,
                host_env: &empty,
                secrets: &secrets,
                outputs: &BTreeMap::new(),
                sensitive: &[],
                run_status: "running",
                failed_stages: String::new(),
            };
            stage_env(&inputs, &plan.stages[0])
        };
        let e = env_with("abc").unwrap_err().to_string();
        assert!(
            e.contains("setting `token` is a secret") && e.contains("at least 4 bytes"),
            "{e}"
        );
        let ok = env_with("long-enough-token").unwrap();
        assert_eq!(ok.secret_values, vec!["long-enough-token".to_string()]);
        assert!(
            ok.vars
                .iter()
                .any(|v| v.secret && v.value == "long-enough-token")
        );
    }
}
