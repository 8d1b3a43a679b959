//! `sentinel serve`: one long-running process that accepts runs over HTTP
//! (API and webhooks), queues them durably, runs them with the engine,
//! streams their logs and publishes their results — to the local results
//! folder (served read-only under `/results/`) and, when a bucket is
//! configured, to S3 behind the durable outbox.

pub mod config;
mod deploy_files;
mod deployments;
pub mod local;
pub mod repo;
mod statuses;
mod versions;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use sentinel_engine::Progress;
use sentinel_engine::queue::{RunProgress, Worker, WorkerConfig};
use sentinel_server::AppState;
use tokio_util::sync::CancellationToken;

use crate::Paths;
use crate::context::{self, Dirs};
use config::{LogFormat, ServeArgs, Settings};

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SENTINEL_LOG")
        .unwrap_or_else(|_| "info,sled=warn,aws=warn,hyper=warn".into());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => b.json().init(),
        LogFormat::Text => b.init(),
    }
}

/// Resolves when the process is asked to stop (Ctrl-C or SIGTERM).
async fn stop_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
    }
}

/// How long a webhook delivery id is remembered (a redelivery within it
/// gets the same run).
const DELIVERIES_KEPT_DAYS: i64 = 30;

/// Records what became of a deploy run in its deployment, which its queued
/// request names (a run that deploys nothing has none; a later attempt of a
/// run is the deployment's run from then on). What a stop loses here, the
/// deployments' reader takes from the run.
fn deployment_follows(
    store: &sentinel_store::SledStore,
    changed: &Arc<sentinel_server::deploys::Changes>,
    run: &sentinel_api::RunId,
    status: sentinel_api::RunStatus,
) {
    let (store, run, changed) = (store.clone(), run.clone(), changed.clone());
    tokio::spawn(async move {
        use sentinel_engine::ports::Store as _;
        let Ok(Some(entry)) = store.request_of(&run) else {
            return;
        };
        let Ok(spec) = serde_json::from_value::<sentinel_server::RunSpec>(entry.request) else {
            return;
        };
        // A run that went on from its approval gates: their deployments
        // take its outcome as they are read.
        if spec.resume.is_some() {
            changed.touch();
        }
        let Some(deploy) = spec.deploy else {
            return;
        };
        let doc = if status.is_final() {
            store.get_run(&run).await.ok().flatten()
        } else {
            None
        };
        let r = store.deployment_follows(
            &deploy.deployment,
            &run,
            sentinel_api::DeploymentStatus::of_run(status),
            doc.as_ref().and_then(|d| d.reason.clone()),
            doc.as_ref().and_then(|d| d.finished),
        );
        match r {
            Ok(()) => changed.touch(),
            Err(e) => tracing::warn!(run = %run, "cannot record the deployment's status: {e}"),
        }
    });
}

/// `sentinel serve`.
pub fn serve(paths: &Paths, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let dir = paths
        .dir
        .clone()
        .unwrap_or_else(|| std::path::PathBuf::from("."));
    let project =
        std::fs::canonicalize(&dir).with_context(|| format!("project folder {}", dir.display()))?;
    let settings = Settings::resolve(&args, paths.state.clone(), paths.results.clone(), &project)?;
    if args.print_config {
        print!("{}", settings.to_toml()?);
        return Ok(ExitCode::SUCCESS);
    }
    init_logs(settings.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run_server(project, settings, args.executor))
}

async fn run_server(
    project: std::path::PathBuf,
    settings: Settings,
    executor: context::ExecutorArgs,
) -> anyhow::Result<ExitCode> {
    let dirs = Dirs {
        project,
        state: settings.state.clone(),
        results: settings.results.clone(),
    };
    let Some(store) = context::try_open_store(&dirs.state)? else {
        anyhow::bail!(
            "another sentinel process is using the state folder {}",
            dirs.state.display()
        );
    };
    let secrets_key = settings.secrets_key()?.map(Arc::new);
    // Outputs kept for re-runs are sealed with the server's key when it has one.
    if let Some(key) = &secrets_key {
        store.set_sealing_key(key.clone());
    }
    let github_secret = settings.github_secret()?;
    let (mut containers, docker) = context::server_docker(settings.ready_namespaces).await;
    if let Some(swarm) = executor.swarm(docker.clone()).await? {
        tracing::info!(
            "container stages run on the swarm; workspaces are served at {}",
            swarm.archive_address()
        );
        containers = Arc::new(swarm);
    }
    let steps = sentinel_wasm::WasmExecutor::new(&dirs.state.join("cache/wasm"))?;
    let exec: Arc<dyn sentinel_engine::Executor> = Arc::new(sentinel_engine::exec::Dispatch {
        containers,
        steps: Arc::new(steps),
    });
    let mut engine = context::engine(&dirs, store.clone(), exec, settings.jobs, false);
    let outbox = context::mirror_to_s3(&mut engine, &dirs, &store, settings.s3_config()?).await;
    let reaped = engine.exec.reap().await;
    if reaped > 0 {
        tracing::info!(
            "removed {reaped} container(s), network(s) or other object(s) left by dead sentinel processes"
        );
    }
    let checkouts = dirs.state.join("checkouts");
    let _ = tokio::fs::remove_dir_all(&checkouts).await;
    // Unpushed images of ended runs past their days: at start, then every six hours.
    if let (Some(d), days @ 1..) = (docker.clone(), settings.images_keep_days) {
        let store = store.clone();
        tokio::spawn(async move {
            loop {
                if let Ok(made) = d.made_images().await {
                    let age = std::time::Duration::from_secs(days * 86_400);
                    let done = crate::images::prune(&d, made, Some(&store), age, false, |line| {
                        tracing::info!("images: {line}")
                    })
                    .await;
                    if done.removed > 0 {
                        tracing::info!(
                            "removed {} unpushed image(s) of runs ended over {days} day(s) ago ({} MiB)",
                            done.removed,
                            done.bytes >> 20
                        );
                    }
                }
                tokio::time::sleep(std::time::Duration::from_secs(6 * 3600)).await;
            }
        });
    }

    let live = Arc::new(sentinel_server::live::LiveHub::default());
    let metrics = Arc::new(sentinel_server::metrics::Metrics::default());
    // One cache for the runs and retention (its index updates go one at a time).
    let cache = settings.cache_store(&dirs.state).await?;
    if let Some(r) = &settings.retention {
        let (policy, every) = r.policy()?;
        crate::retention::ServerRetention {
            policy,
            every,
            store: store.clone(),
            sink: engine.sink.clone(),
            state: dirs.state.clone(),
            docker: docker.clone(),
            metrics: metrics.clone(),
            caches: Some((cache.clone(), settings.api.repos.keys().cloned().collect())),
        }
        .spawn();
    }
    // Told of every change to a deployment: the results' document follows.
    let deployments_changed = Arc::new(sentinel_server::deploys::Changes::default());
    // The API's state, once made (a run's end queues what comes after it).
    let api_state: Arc<std::sync::OnceLock<AppState>> = Arc::default();
    // Commit statuses, once the server's address is known.
    let commit_statuses: Arc<std::sync::OnceLock<Arc<statuses::Statuses>>> = Arc::default();
    let progress: RunProgress = {
        let (live, metrics, checkouts) = (live.clone(), metrics.clone(), checkouts.clone());
        let (store, changed) = (store.clone(), deployments_changed.clone());
        let api_state = api_state.clone();
        let commit_statuses = commit_statuses.clone();
        Arc::new(move |run, p| {
            live.on_progress(run, &p);
            metrics.on_progress(run, &p);
            match &p {
                Progress::RunRequeued { .. } => {
                    deployment_follows(&store, &changed, run, sentinel_api::RunStatus::Queued);
                }
                Progress::RunStarted { .. } => {
                    tracing::info!(run = %run, "run started");
                    if let Some(s) = commit_statuses.get() {
                        s.tell(run, false);
                    }
                    deployment_follows(&store, &changed, run, sentinel_api::RunStatus::Running);
                }
                Progress::RunFinished { status, .. } => {
                    tracing::info!(run = %run, status = %status, "run finished");
                    if let Some(s) = commit_statuses.get() {
                        s.tell(run, true);
                    }
                    deployment_follows(&store, &changed, run, *status);
                    // A paused run's checkout goes when it goes on (its
                    // checkout starts afresh), never while it does.
                    if status.is_final() {
                        let dir = checkouts.join(run.as_str());
                        tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir));
                        if let Some(state) = api_state.get().cloned() {
                            let (store, run) = (store.clone(), run.clone());
                            tokio::spawn(async move {
                                use sentinel_engine::ports::Store as _;
                                let Ok(Some(doc)) = store.get_run(&run).await else {
                                    return;
                                };
                                if let Err(e) =
                                    sentinel_server::upstream::after_run(&state, &doc).await
                                {
                                    tracing::warn!(run = %run, "cannot queue what runs after it: {e}");
                                }
                            });
                        }
                    }
                }
                _ => {}
            }
        })
    };
    let resolver = repo::Resolver {
        store: store.clone(),
        repos: settings.api.repos.clone(),
        checkouts,
        secrets_key: secrets_key.clone(),
        state: dirs.state.clone(),
        payloads: dirs.state.join("payloads"),
        results: dirs.results.clone(),
        cache: Some((cache.clone(), settings.cache.default_branch.clone())),
        environments: settings.environments.clone(),
        pull_requests: settings.pull_requests.clone(),
        registries: settings.registries.clone(),
        steps: settings.steps.clone(),
    };
    let worker = Worker::new(
        engine,
        Arc::new(store.clone()),
        WorkerConfig {
            runs: settings.runs,
            max_attempts: settings.max_attempts,
            claim_for: Duration::from_secs(settings.claim_seconds),
            disk: Some(settings.disk_reserve()),
        },
        resolver.into_resolve(),
        progress,
    );
    {
        let (store, changed) = (store.clone(), deployments_changed.clone());
        worker.on_hold(Arc::new(move |entry, op| {
            let (store, changed) = (store.clone(), changed.clone());
            Box::pin(async move {
                use sentinel_engine::queue::HoldOp;
                let id = &entry.run_id;
                let r = match op {
                    HoldOp::Hold => sentinel_server::deploys::hold(&store, &entry).await,
                    HoldOp::Cancel => {
                        let by = "a cancel while it paused";
                        sentinel_server::deploys::cancel_paused(&store, id, by).await
                    }
                };
                changed.touch();
                r
            })
        }));
    }
    for e in worker
        .reclaim()
        .await
        .context("taking back runs of a dead server")?
    {
        tracing::warn!(run = %e.run_id, attempt = e.attempt, "queued again as a new attempt");
    }
    // Webhook delivery ids are remembered for a while, not forever.
    let forget = chrono::Utc::now() - chrono::Duration::days(DELIVERIES_KEPT_DAYS);
    match store.prune_deliveries(forget).await {
        Ok(0) => {}
        Ok(n) => {
            tracing::info!("forgot {n} webhook delivery ids older than {DELIVERIES_KEPT_DAYS} days")
        }
        Err(e) => tracing::warn!("cannot prune webhook delivery ids: {e}"),
    }
    let mut state = AppState::new(store.clone(), settings.api.clone(), worker.clone());
    // The Steps page: the bundled steps, those runs pulled, and the newest
    // of each step in the registries that can list theirs (the registries'
    // stored credentials opened for each listing).
    {
        let (store, key, state_dir) = (store.clone(), secrets_key.clone(), dirs.state.clone());
        let (registries, steps) = (settings.registries.clone(), settings.steps.clone());
        state.steps = Arc::new(move || {
            let catalog = repo::open_registry_secrets(&store, key.as_deref(), &registries)
                .map_err(anyhow::Error::msg)
                .and_then(|opened| {
                    crate::steps::catalog::build(&state_dir, &registries, &steps, &|n| {
                        opened.get(n).cloned()
                    })
                });
            let catalog = catalog.unwrap_or_else(|e| {
                tracing::warn!("the step registries cannot be listed: {e:#}");
                sentinel_registry::Catalog::new(
                    context::step_catalog(),
                    crate::steps::catalog::cache(&state_dir),
                )
            });
            crate::steps::known(&catalog)
        });
    }
    state.live = live;
    state.metrics = metrics.clone();
    state.github_secret = github_secret.map(Into::into);
    state.disk = Some(settings.disk_reserve());
    state.secrets_key = secrets_key.clone();
    state.results_dir = Some(dirs.results.clone());
    state.web_dir = settings.web.clone();
    state.deploys = Arc::new(
        settings
            .deploys(&dirs.state, deployments_changed.clone())
            .await?,
    );
    state.schedules = Arc::new(settings.checked_schedules()?);
    let bucket = match settings.s3_config()? {
        Some(cfg) => Some(sentinel_s3::S3Sink::connect(cfg).await),
        None => None,
    };
    // Its own token: cancelled once the runs going have ended.
    let publish_stop = CancellationToken::new();
    let publishing = tokio::spawn(deployments::publish(
        store.clone(),
        sentinel_results::LocalSink::new(&dirs.results),
        bucket,
        deployments_changed,
        publish_stop.clone(),
    ));
    let watching = state.clone();
    let _ = api_state.set(state.clone());
    sentinel_server::upstream::catch_up(&state, 500).await;
    let app = sentinel_server::router(state);

    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let addr = listener.local_addr()?;
    let url = format!("http://{addr}");
    let sending = match &settings.github {
        Some(gh) => {
            let (s, heard) = statuses::Statuses::new(
                store.clone(),
                gh.clone(),
                settings.api.repos.clone(),
                secrets_key.clone(),
                metrics.clone(),
                &url,
            )?;
            let _ = commit_statuses.set(s.clone());
            tokio::spawn(s.clone().record(heard, publish_stop.clone()));
            Some(tokio::spawn(s.send(publish_stop.clone())))
        }
        None => None,
    };
    let admin = local::LocalAdmin::write(&store, &dirs.state, &url).await?;
    tracing::info!(
        url = %url,
        results = %dirs.results.display(),
        bucket = settings.s3.as_ref().map(|s| s.url.as_str()).unwrap_or("none"),
        web = settings.web.as_ref().map(|w| w.display().to_string()).unwrap_or_else(|| "none (scripts/build-web.sh builds it)".into()),
        "sentinel serve is listening"
    );

    let stop = CancellationToken::new();
    let working = tokio::spawn(worker.clone().serve(stop.clone()));
    let watchers = tokio::spawn(sentinel_server::deploys::watch(
        watching.clone(),
        stop.clone(),
    ));
    let waits = tokio::spawn(sentinel_server::deploys::expire_waits(
        watching.clone(),
        stop.clone(),
    ));
    let versions = tokio::spawn(versions::watch(
        watching.clone(),
        settings.versions.clone(),
        stop.clone(),
    ));
    let scheduling = tokio::spawn(sentinel_server::schedules::run(watching, stop.clone()));
    let http_stop = stop.clone();
    let http = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { http_stop.cancelled().await })
            .await
    });
    stop_signal().await;
    tracing::info!(
        "stopping: no new runs; waiting for {} run(s) going (again to cancel them)",
        worker.running()
    );
    stop.cancel();
    {
        let worker = worker.clone();
        tokio::spawn(async move {
            stop_signal().await;
            tracing::warn!("cancelling the runs going");
            worker.cancel_all();
        });
    }
    let _ = working.await;
    let _ = watchers.await;
    let _ = waits.await;
    let _ = scheduling.await;
    let _ = versions.await;
    publish_stop.cancel();
    let _ = publishing.await;
    if let Some(s) = sending {
        let _ = s.await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), http).await;
    if let Some(docker) = docker {
        docker.release_ready().await;
    }
    admin.remove(&store).await;
    if let Some(outbox) = outbox {
        let waiting = outbox.waiting();
        if waiting > 0 {
            tracing::warn!(
                "{waiting} result(s) wait in the outbox; they go up when the server starts again"
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
