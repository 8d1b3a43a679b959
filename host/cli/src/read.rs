//! `sentinel runs`, `show` and `logs`: read the results folder. When the
//! state database is free they first recover dead runs; when another process
//! holds it (a run is going) they read the results folder as it is.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context as _;
use sentinel_api::{RunId, RunSummary, StageName};
use sentinel_engine::ResultsSink;
use sentinel_results::LocalSink;

use crate::Paths;
use crate::context::{self, Dirs};

/// Recovers dead runs when the state folder is free; what a mirrored
/// bucket must learn of them waits in the outbox for the next run with it.
async fn recover_if_free(dirs: &Dirs) -> anyhow::Result<()> {
    if let Some(store) = context::try_open_store(&dirs.state)? {
        let exec = context::docker_or_unavailable().await;
        let mut engine = context::engine(dirs, store.clone(), exec, 1, false);
        context::defer_mirror(&mut engine, dirs, &store).await;
        engine.recover().await.report(|line| eprintln!("{line}"));
    }
    Ok(())
}

async fn all_runs(sink: &LocalSink) -> anyhow::Result<Vec<RunSummary>> {
    Ok(sink.list_index(usize::MAX).await?)
}

/// Finds a run by `last`, its id, or a unique prefix of it.
async fn resolve(sink: &LocalSink, query: &str) -> anyhow::Result<RunId> {
    let runs = all_runs(sink).await?;
    if query == "last" {
        return runs
            .first()
            .map(|r| r.id.clone())
            .context("there are no runs yet");
    }
    let q = query.to_ascii_uppercase();
    let hits: Vec<&RunSummary> = runs
        .iter()
        .filter(|r| r.id.as_str().starts_with(&q))
        .collect();
    match hits.as_slice() {
        [one] => Ok(one.id.clone()),
        [] => anyhow::bail!("no run matches `{query}` in {}", sink.location()),
        many => anyhow::bail!("`{query}` matches {} runs; give more of the id", many.len()),
    }
}

/// `sentinel runs`.
pub async fn runs(paths: &Paths, limit: usize, json: bool) -> anyhow::Result<ExitCode> {
    let dirs = Dirs::new(paths)?;
    recover_if_free(&dirs).await?;
    let sink = LocalSink::new(&dirs.results);
    let runs: Vec<RunSummary> = sink.list_index(limit).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&runs)?);
        return Ok(ExitCode::SUCCESS);
    }
    if runs.is_empty() {
        println!("no runs yet in {}", sink.location());
    }
    for r in runs {
        let took = r
            .duration_ms
            .map(|ms| format!("{:.1}s", ms as f64 / 1000.0))
            .unwrap_or_else(|| "-".into());
        let branch = r
            .git
            .as_ref()
            .and_then(|g| g.branch.clone())
            .unwrap_or_default();
        println!(
            "{}  {:<11} {:>8}  {}  {}  {}",
            r.id,
            r.status.as_str(),
            took,
            r.created.format("%Y-%m-%d %H:%M:%S"),
            r.pipeline,
            branch
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `sentinel show RUN`.
pub async fn show(paths: &Paths, query: &str, json: bool) -> anyhow::Result<ExitCode> {
    let dirs = Dirs::new(paths)?;
    recover_if_free(&dirs).await?;
    let sink = LocalSink::new(&dirs.results);
    let id = resolve(&sink, query).await?;
    let run = sink
        .get_run(&id)
        .await?
        .with_context(|| format!("run {id} has no run.json"))?;
    if json {
        let mut stages = Vec::new();
        for s in &run.stages {
            stages.extend(sink.get_stage(&id, &s.name).await?);
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"run": run, "stages": stages}))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("run {}  {}  pipeline {}", run.id, run.status, run.pipeline);
    if let Some(r) = &run.reason {
        println!("reason: {r}");
    }
    let w = run
        .stages
        .iter()
        .map(|s| s.name.as_str().len())
        .max()
        .unwrap_or(5);
    for entry in &run.stages {
        let doc = sink.get_stage(&id, &entry.name).await?;
        let took = entry
            .duration_ms
            .map(|ms| format!("{:.1}s", ms as f64 / 1000.0))
            .unwrap_or_else(|| "-".into());
        let reason = doc
            .as_ref()
            .and_then(|d| d.reason.clone())
            .map(|r| format!("  {r}"))
            .unwrap_or_default();
        let needs = if entry.needs.is_empty() {
            String::new()
        } else {
            format!(
                "  after {}",
                entry
                    .needs
                    .iter()
                    .map(|n| n.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            )
        };
        println!(
            "  {:<w$}  {:<11} {:>7}{needs}{reason}",
            entry.name.as_str(),
            entry.status.as_str(),
            took
        );
    }
    println!(
        "results: {}",
        dirs.results
            .join(sentinel_api::keys::run_dir(&id))
            .display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `sentinel logs RUN STAGE`.
pub async fn logs(paths: &Paths, query: &str, stage: &str) -> anyhow::Result<ExitCode> {
    let dirs = Dirs::new(paths)?;
    let sink = LocalSink::new(&dirs.results);
    let id = resolve(&sink, query).await?;
    let stage: StageName = stage.parse()?;
    let bytes = match sink.get_log(&id, &stage).await? {
        Some(b) => b,
        None => {
            // A running stage's log lives in the run folder until it ends.
            let live = sentinel_engine::workspace::RunDirs::new(&dirs.state, &id).log(&stage);
            std::fs::read(&live)
                .with_context(|| format!("stage `{stage}` of run {id} has no log (yet)"))?
        }
    };
    std::io::stdout().write_all(&bytes)?;
    Ok(ExitCode::SUCCESS)
}
