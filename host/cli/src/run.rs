//! `sentinel run` and `sentinel validate`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use sentinel_api::{RunStatus, Trigger, TriggerKind};
use sentinel_engine::{ResultsSink as _, RunRequest, Signals};
use sentinel_pipeline::EnvValue;

use crate::Paths;
use crate::context::{self, Dirs};
use crate::pipeline::{FileArgs, load, say_chosen};
use crate::progress::{Mode, reporter};
use sentinel_registry::LockMode;

/// Options of `sentinel run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    file: FileArgs,
    /// Most stages running at once.
    #[arg(short, long, default_value_t = 4)]
    jobs: usize,
    /// Print progress as JSON lines on stdout.
    #[arg(long)]
    json: bool,
    /// Print the stages' logs as they run.
    #[arg(short = 'v', long)]
    follow: bool,
    /// Keep the run's workspace copy under the state folder.
    #[arg(long)]
    keep_workspace: bool,
    /// A file of `NAME=value` lines with secret values (else they come from the environment).
    #[arg(long)]
    secrets_file: Option<PathBuf>,
    /// A value for the pipeline's `NAME: ~` entry (instead of the
    /// environment's); repeatable.
    #[arg(short = 'e', long = "env", value_name = "NAME=value", value_parser = crate::pipeline::name_value)]
    env: Vec<(String, String)>,
    /// Start from what a succeeded run published (its jobs' output folders,
    /// `<stage>.zip` in its results) instead of the project's files: a
    /// deploy from a build. Read from the results folder, else the bucket.
    #[arg(long, value_name = "RUN")]
    from_run: Option<sentinel_api::RunId>,
    /// Run without the cache: nothing restored, nothing saved.
    #[arg(long)]
    no_cache: bool,
    /// Approve the stages that wait for an approval to deploy to ENV
    /// (`approval: ENV`); without it such a stage fails, saying so.
    #[arg(long, value_name = "ENV")]
    approve: Vec<String>,
    /// Run exactly the steps `sentinel.lock` pins: fail if resolving the
    /// pipeline's steps would change it.
    #[arg(long)]
    locked: bool,
    #[command(flatten)]
    executor: context::ExecutorArgs,
    #[command(flatten)]
    s3: S3Args,
}

/// Publishing to S3 as well as to the results folder.
#[derive(Debug, Clone, clap::Args)]
pub struct S3Args {
    /// Also publish the results to S3, at `s3://bucket/prefix`. Credentials
    /// come from the standard AWS chain (environment, profile, web identity).
    #[arg(long, env = "SENTINEL_S3", value_name = "s3://BUCKET/PREFIX")]
    s3: Option<String>,
    /// An S3-compatible endpoint (Garage, MinIO), like `http://127.0.0.1:3900`.
    #[arg(long, env = "SENTINEL_S3_ENDPOINT", requires = "s3")]
    s3_endpoint: Option<String>,
    /// The bucket's region (else the AWS chain's).
    #[arg(long, env = "SENTINEL_S3_REGION", requires = "s3")]
    s3_region: Option<String>,
    /// Path-style addressing, which Garage and MinIO need.
    #[arg(long, env = "SENTINEL_S3_PATH_STYLE", requires = "s3")]
    s3_path_style: bool,
    /// A role to assume for the bucket (the AWS chain's credentials ask
    /// STS for it).
    #[arg(
        long,
        env = "SENTINEL_S3_ROLE_ARN",
        requires = "s3",
        value_name = "ARN"
    )]
    s3_role_arn: Option<String>,
    /// The external id the role's trust policy asks for.
    #[arg(long, env = "SENTINEL_S3_EXTERNAL_ID", requires = "s3_role_arn")]
    s3_external_id: Option<String>,
}

impl S3Args {
    /// The S3 configuration, when `--s3` is given.
    pub fn config(&self) -> anyhow::Result<Option<sentinel_s3::S3Config>> {
        let Some(url) = &self.s3 else {
            return Ok(None);
        };
        let cfg = sentinel_s3::S3Config::at(
            url,
            self.s3_endpoint.clone(),
            self.s3_region.clone(),
            self.s3_path_style,
        )
        .map_err(anyhow::Error::msg)?;
        Ok(Some(sentinel_s3::S3Config {
            role_arn: self.s3_role_arn.clone(),
            external_id: self.s3_external_id.clone(),
            ..cfg
        }))
    }
}

/// `sentinel validate`.
pub fn validate(paths: &Paths, args: &FileArgs, json: bool) -> anyhow::Result<ExitCode> {
    let chosen = args.choose(paths)?;
    say_chosen(&chosen);
    let file = chosen.file;
    let dirs = Dirs::of(paths, &chosen.project)?;
    let plan = match load(&file, &args.select(), &dirs.state, LockMode::ReadOnly) {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&plan)?);
    } else {
        println!(
            "{}: pipeline `{}` is valid: {} stages",
            file.display(),
            plan.name,
            plan.stages.len()
        );
        for s in &plan.stages {
            let needs = if s.needs.is_empty() {
                String::new()
            } else {
                format!(
                    " after {}",
                    s.needs
                        .iter()
                        .map(|n| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            println!("  {} ({}){needs}", s.name, s.when.as_str());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Top-level names of `inner` below `outer`, to leave out of the workspace copy.
fn skip_name(outer: &Path, inner: &Path) -> Option<String> {
    let rel = inner.strip_prefix(outer).ok()?;
    rel.components()
        .next()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
}

/// What a deploy starts from: the build's output folder, and the images
/// its jobs committed (the image each ran in, the image it became).
struct FromRun {
    dir: PathBuf,
    committed: Vec<(String, String)>,
}

/// The output a succeeded run published, unzipped into a folder of the
/// state folder: one job's output as the folder itself, several each in a
/// folder named after its stage. Read from the results folder, else from
/// the bucket (`bucket`: a run recorded on another machine).
async fn restore_output(
    local: &dyn sentinel_engine::ports::ResultsSink,
    bucket: Option<&dyn sentinel_engine::ports::ResultsSink>,
    from: &sentinel_api::RunId,
    state: &Path,
) -> anyhow::Result<FromRun> {
    let mut sink = local;
    let mut run = local.get_run(from).await?;
    if run.is_none()
        && let Some(b) = bucket
    {
        run = b
            .get_run(from)
            .await
            .map_err(|e| anyhow::anyhow!("cannot read run {from} from {}: {e}", b.location()))?;
        sink = b;
    }
    let Some(run) = run else {
        let where_ = match bucket {
            Some(b) => format!("{} or {}", local.location(), b.location()),
            None => local.location(),
        };
        anyhow::bail!("no run {from} in the results at {where_}");
    };
    if run.status != sentinel_api::RunStatus::Succeeded {
        anyhow::bail!(
            "run {from} {}: a run starts from the output of a succeeded run",
            run.status
        );
    }
    let mut zips = Vec::new();
    let mut committed = Vec::new();
    for stage in &run.stages {
        if let Some(zip) = sink.get_artifacts(from, &stage.name).await? {
            zips.push((stage.name.clone(), zip));
        }
        if stage.kind == sentinel_api::StageKind::Job
            && let Some(doc) = sink.get_stage(from, &stage.name).await?
            && let (Some(ran_in), Some(image)) = (&doc.inputs.image, doc.outputs.get("image"))
        {
            committed.push((ran_in.clone(), image.clone()));
        }
    }
    if zips.is_empty() && committed.is_empty() {
        anyhow::bail!(
            "run {from} published no output: its stages left nothing in $SENTINEL_ARTIFACTS ($WERCKER_OUTPUT_DIR)"
        );
    }
    let dir = state.join("from-run").join(from.as_str());
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    let several = zips.len() > 1;
    for (stage, zip) in zips {
        let to = if several {
            dir.join(stage.as_str())
        } else {
            dir.clone()
        };
        sentinel_results::unzip_into(&zip, &to)
            .map_err(|e| anyhow::anyhow!("cannot unzip the output of `{stage}`: {e}"))?;
    }
    eprintln!("starting from the output of run {from}");
    Ok(FromRun { dir, committed })
}

/// A deploy's jobs that run in the box its build ran in run in the image
/// the build committed instead (wercker's deploy "in the image of the
/// build"); says which.
fn use_committed(plan: &mut sentinel_pipeline::Plan, committed: &[(String, String)]) {
    for s in &mut plan.stages {
        if let sentinel_pipeline::Action::Job(j) = &mut s.action
            && let Some((_, image)) = committed.iter().find(|(ran_in, _)| *ran_in == j.image)
        {
            eprintln!(
                "job `{}` runs in the build's committed image {image}",
                s.name
            );
            j.image = image.clone();
        }
    }
}

/// `sentinel run`.
pub async fn run(paths: &Paths, args: RunArgs) -> anyhow::Result<ExitCode> {
    run_with(paths, args, None).await
}

/// `sentinel run`, or with `rerun` (a run and the stage to re-run from)
/// `sentinel rerun`.
pub async fn run_with(
    paths: &Paths,
    args: RunArgs,
    rerun: Option<(sentinel_api::RunId, Option<sentinel_api::StageName>)>,
) -> anyhow::Result<ExitCode> {
    let chosen = args.file.choose(paths)?;
    say_chosen(&chosen);
    let dirs = Dirs::of(paths, &chosen.project)?;
    let open_store = || -> anyhow::Result<sentinel_store::SledStore> {
        context::try_open_store(&dirs.state)?.ok_or_else(|| {
            anyhow::anyhow!(
                "another sentinel process is running a pipeline with the state folder {}; wait for it, or pass --state",
                dirs.state.display()
            )
        })
    };
    // A re-run reads its run first (its commit says which file); a run
    // opens nothing before its file is known to be valid.
    let (again, early) = match rerun {
        Some(_) if args.from_run.is_some() => anyhow::bail!(
            "`--from-run` starts a deploy from a build's output; a re-run starts from the source its run recorded"
        ),
        Some((run, from)) => {
            let store = open_store()?;
            let again = crate::rerun::prepare(&store, &dirs.state, &chosen, &run, from).await?;
            (Some(again), Some(store))
        }
        None => (None, None),
    };
    let file = again.as_ref().map_or(chosen.file, |a| a.file.clone());
    // A re-run uses the lock its commit had, and writes none.
    let mode = match (&again, args.locked) {
        (Some(_), _) => LockMode::ReadOnly,
        (None, true) => LockMode::Locked,
        (None, false) => LockMode::Write,
    };
    let mut plan = match load(&file, &args.file.select(), &dirs.state, mode) {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let store = match early {
        Some(s) => s,
        None => open_store()?,
    };
    let exec = context::executor_for(&plan, &dirs, &args.executor).await?;
    let mut engine = context::engine(&dirs, store.clone(), exec, args.jobs, args.keep_workspace);
    let outbox = context::mirror_to_s3(&mut engine, &dirs, &store, args.s3.config()?).await;
    let reaped = engine.exec.reap().await;
    if reaped > 0 {
        eprintln!(
            "removed {reaped} container(s), network(s) or other object(s) left by dead sentinel processes"
        );
    }
    engine.recover().await.report(|line| eprintln!("{line}"));

    let secrets = context::secrets(&plan.secrets, args.secrets_file.as_deref())?;
    // Only the variables the pipeline asks for leave the host's
    // environment; `-e NAME=value` gives one instead.
    let wanted: Vec<&str> = plan
        .env
        .iter()
        .filter(|(_, v)| matches!(v, EnvValue::FromHost))
        .map(|(k, _)| k.as_str())
        .chain(plan.stages.iter().flat_map(|s| s.host_vars()))
        .collect();
    if let Some((k, _)) = args.env.iter().find(|(k, _)| !wanted.contains(&k.as_str())) {
        anyhow::bail!(
            "`-e {k}=…`: the pipeline has no `{k}: ~` entry to fill (it takes {})",
            if wanted.is_empty() {
                "none".to_string()
            } else {
                wanted.join(", ")
            }
        );
    }
    let given: BTreeMap<&str, &str> = args
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let host_env: BTreeMap<String, String> = wanted
        .into_iter()
        .filter_map(|k| {
            given
                .get(k)
                .map(|v| v.to_string())
                .or_else(|| std::env::var(k).ok())
                .map(|v| (k.to_string(), v))
        })
        .collect();
    let mut skip = vec![".sentinel".to_string()];
    skip.extend(skip_name(&dirs.project, &dirs.state));
    skip.extend(skip_name(&dirs.project, &dirs.results));
    let source = match &args.from_run {
        Some(from) => match restore_output(
            engine.sink.as_ref(),
            outbox
                .as_ref()
                .map(|o| o.as_ref() as &dyn sentinel_engine::ports::ResultsSink),
            from,
            &dirs.state,
        )
        .await
        {
            Ok(from) => {
                skip.clear();
                use_committed(&mut plan, &from.committed);
                from.dir
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                return Ok(ExitCode::from(2));
            }
        },
        None => match &again {
            Some(a) => {
                skip.clear();
                a.source.clone()
            }
            None => dirs.project.clone(),
        },
    };
    let (reuse, not_reused) = match &again {
        Some(a) => crate::rerun::kept(&store, &dirs.state, a, &plan).await?,
        None => Default::default(),
    };

    let signals = Signals::default();
    {
        let signals = signals.clone();
        tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            let mut presses = 0;
            loop {
                tokio::select! {
                    r = tokio::signal::ctrl_c() => { if r.is_err() { return; } }
                    _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
                }
                presses += 1;
                if presses == 1 {
                    eprintln!(
                        "cancelling: stopping running stages, then running `always` stages (press Ctrl-C again to stop those too)"
                    );
                    signals.cancel.cancel();
                } else {
                    eprintln!("aborting: stopping every stage");
                    signals.abort.cancel();
                    return;
                }
            }
        });
    }

    let mode = Mode::detect(args.json);
    let by = std::env::var("USER").ok();
    let gates = local_gates(&plan, &args.approve, by.as_deref().unwrap_or("you"));
    let req = RunRequest {
        plan,
        source,
        skip,
        trigger: Trigger {
            kind: TriggerKind::Local,
            by: by.clone(),
        },
        git: match &again {
            Some(a) => a.git.clone(),
            None => context::git_context(&dirs.project),
        },
        host_env,
        secrets,
        run_id: None,
        reuse,
        not_reused,
        from_run: args.from_run.clone(),
        deploy: None,
        cache: None,
        gates,
        resume: None,
        upstream: None,
        withheld: None,
        pull_request: None,
        trigger_values: Default::default(),
        registries: crate::registries::user_registries()?,
    };
    let mut req = req;
    if !args.no_cache {
        let project = req
            .git
            .as_ref()
            .and_then(|g| g.repo.clone())
            .unwrap_or_else(|| {
                std::path::absolute(&dirs.project)
                    .unwrap_or_default()
                    .display()
                    .to_string()
            });
        req.cache = Some(sentinel_engine::cache::CacheAccess {
            cache: context::local_cache(&dirs.state, Default::default()),
            project,
            default_branch: "main".into(),
            write: true,
        });
    }
    let run = match engine.run(req, reporter(mode, args.follow), signals).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let folder = dirs.results.join(sentinel_api::keys::run_dir(&run.id));
    if mode == Mode::Json {
        println!("{}", serde_json::to_string(&run)?);
    } else {
        let took = run
            .duration_ms
            .map(|ms| format!(" in {:.1}s", ms as f64 / 1000.0))
            .unwrap_or_default();
        let why = run
            .reason
            .as_ref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default();
        if let Ok(stages) = engine.store.get_stages(&run.id).await {
            for (name, c) in stages
                .iter()
                .filter_map(|d| Some((&d.name, d.cache.as_ref()?)))
            {
                eprintln!("cache {name}: {}", sentinel_engine::cache::describe(c));
            }
        }
        eprintln!("run {} {}{took}{why}", run.id, run.status);
        eprintln!("results: {}", folder.display());
    }
    if let Some(outbox) = outbox {
        let waiting = outbox.waiting();
        if waiting > 0 {
            eprintln!(
                "{waiting} result(s) could not reach {} yet; they wait in the state folder and go up with the next sentinel run",
                outbox.location()
            );
        }
    }
    Ok(match run.status {
        RunStatus::Succeeded => ExitCode::SUCCESS,
        RunStatus::Cancelled => ExitCode::from(130),
        _ => ExitCode::from(1),
    })
}

/// The approval gates of a local run: those of the environments `--approve`
/// names pass, approved by `by` now; the others are refused, saying how to
/// approve them.
fn local_gates(
    plan: &sentinel_pipeline::Plan,
    approve: &[String],
    by: &str,
) -> std::collections::BTreeMap<sentinel_api::StageName, sentinel_engine::gate::Gate> {
    use sentinel_engine::gate::Gate;
    plan.stages
        .iter()
        .filter_map(|s| Some((s.name.clone(), s.approval.as_ref()?)))
        .map(|(name, env)| {
            let gate = if approve.contains(env) {
                let doc = sentinel_api::GateDoc {
                    environment: env.clone(),
                    deployment: String::new(),
                    answer: None,
                };
                let answer = sentinel_api::Approval {
                    approved: true,
                    by: format!("{by} (sentinel run --approve {env})"),
                    at: chrono::Utc::now(),
                    reason: None,
                };
                Gate::answered(&doc, &answer, false)
            } else {
                Gate::nobody(env)
            };
            (name, gate)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sentinel_engine::gate::Gate;

    #[test]
    fn only_the_environments_approved_on_the_command_line_pass() {
        let plan = sentinel_pipeline::parse_str(
            "version: 1\nbox: b\nstages:\n  a: {run: x, approval: staging}\n  b: {run: y, approval: production}\n  c: {run: z}\n",
            "sentinel.yml",
            "p",
        )
        .unwrap();
        let gates = local_gates(&plan, &["staging".to_string()], "ann");
        assert_eq!(gates.len(), 2, "{gates:?}");
        match &gates[&"a".parse().unwrap()] {
            Gate::Pass { gate: Some(g), .. } => {
                let answer = g.answer.as_ref().unwrap();
                assert!(answer.approved);
                assert!(answer.by.starts_with("ann"), "{answer:?}");
            }
            other => panic!("{other:?}"),
        }
        match &gates[&"b".parse().unwrap()] {
            Gate::Refuse { reason, .. } => {
                assert!(reason.contains("--approve production"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }
}
