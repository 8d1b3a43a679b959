//! `sentinel rerun RUN [--from STAGE]`: a run of this state folder again,
//! on the source it recorded — its commit, checked out apart, when the
//! project is a git repository; else the project folder as it is now (said
//! in the output) — and, from a stage, keeping what the run's other stages
//! did exactly as the server's re-run does (`sentinel_engine::rerun`).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;
use sentinel_api::{GitContext, RunDoc, RunId, StageName, StageStatus};

use crate::context::git;
use crate::pipeline::Chosen;
use crate::run::RunArgs;

/// Options of `sentinel rerun`.
#[derive(Debug, Args)]
pub struct RerunArgs {
    /// The run to repeat (one of this state folder's).
    #[arg(value_name = "RUN")]
    pub run: RunId,
    /// Run again from this stage (one that failed, was skipped or was
    /// cancelled): the stages before it that succeeded are kept, with their
    /// outputs and files, and not run.
    #[arg(long, value_name = "STAGE")]
    pub from: Option<StageName>,
    #[command(flatten)]
    pub args: RunArgs,
}

/// A re-run, once its earlier run is read and its source is ready.
#[derive(Debug)]
pub struct Again {
    pub earlier: RunDoc,
    pub from: Option<StageName>,
    /// The pipeline file to read.
    pub file: PathBuf,
    /// The folder the workspace is copied from.
    pub source: PathBuf,
    /// The git context of the run (the recorded commit).
    pub git: Option<GitContext>,
    /// A checkout of the recorded commit, removed after the run.
    pub checkout: Option<PathBuf>,
}

impl Drop for Again {
    fn drop(&mut self) {
        if let Some(dir) = &self.checkout {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Reads the earlier run and makes its source ready: its commit checked
/// out under the state folder, or the project folder as it is now.
pub async fn prepare(
    store: &dyn sentinel_engine::Store,
    state: &Path,
    chosen: &Chosen,
    run: &RunId,
    from: Option<StageName>,
) -> anyhow::Result<Again> {
    let earlier = store.get_run(run).await?.with_context(|| {
        format!(
            "no run {run} in the state folder {}; `sentinel runs` lists them (a server's run is re-run through its API)",
            state.display()
        )
    })?;
    if !earlier.status.is_final() {
        anyhow::bail!(
            "run {run} is {}: a run is re-run once it has ended",
            earlier.status
        );
    }
    if let Some(from) = &from {
        let stage = earlier
            .stages
            .iter()
            .find(|s| &s.name == from)
            .with_context(|| format!("run {run} has no stage `{from}`"))?;
        if stage.status == StageStatus::Succeeded {
            anyhow::bail!(
                "stage `{from}` of run {run} succeeded: re-run from a stage that failed (or was skipped or cancelled)"
            );
        }
    }
    let commit = earlier.git.as_ref().and_then(|g| g.commit.clone());
    let top = git(&chosen.project, &["rev-parse", "--show-toplevel"]);
    let (Some(commit), Some(top)) = (commit, top) else {
        eprintln!(
            "run {run} recorded no commit: re-running on the project folder as it is now ({})",
            chosen.project.display()
        );
        return Ok(Again {
            earlier,
            from,
            file: chosen.file.clone(),
            source: chosen.project.clone(),
            git: crate::context::git_context(&chosen.project),
            checkout: None,
        });
    };
    let dir = state
        .join("rerun")
        .join(format!("{run}-{}", std::process::id()));
    if let Err(e) = checkout(Path::new(&top), &commit, &dir).await {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(e.context(format!("cannot check out commit {commit} of run {run}")));
    }
    // The project and its file at the same place in the checkout.
    let prefix = git(&chosen.project, &["rev-parse", "--show-prefix"]).unwrap_or_default();
    let source = dir.join(&prefix);
    let file = source.join(
        chosen
            .file
            .strip_prefix(&chosen.project)
            .unwrap_or(&chosen.file),
    );
    // Made before the last check: dropping it removes the checkout.
    let again = Again {
        git: Some(GitContext {
            commit: Some(commit.clone()),
            ..earlier.git.clone().unwrap_or_default()
        }),
        earlier,
        from,
        file,
        source,
        checkout: Some(dir),
    };
    if !again.file.is_file() {
        anyhow::bail!(
            "commit {} has no {}: the pipeline file of run {run} is elsewhere (name it)",
            short(&commit),
            Path::new(&prefix)
                .join(chosen.file.file_name().unwrap_or_default())
                .display()
        );
    }
    eprintln!(
        "re-running run {run} at commit {} (the project's files at that commit: changes not committed are not in it)",
        short(&commit)
    );
    Ok(again)
}

fn short(commit: &str) -> &str {
    &commit[..12.min(commit.len())]
}

/// A clone of `repo` at `commit` in `dir` (objects hard-linked, so it is
/// quick and stands alone inside containers too).
async fn checkout(repo: &Path, commit: &str, dir: &Path) -> anyhow::Result<()> {
    let git = |args: Vec<std::ffi::OsString>| async move {
        let out = tokio::process::Command::new("git")
            .args(&args)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .context("cannot run git")?;
        if !out.status.success() {
            anyhow::bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    };
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)?;
    }
    git(vec![
        "clone".into(),
        "--quiet".into(),
        "--local".into(),
        "--no-checkout".into(),
        repo.into(),
        dir.into(),
    ])
    .await?;
    git(vec![
        "-C".into(),
        dir.into(),
        "checkout".into(),
        "--quiet".into(),
        "--detach".into(),
        commit.into(),
    ])
    .await
}

/// What the re-run keeps of the earlier run (nothing without `--from`).
pub async fn kept(
    store: &dyn sentinel_engine::Store,
    state: &Path,
    again: &Again,
    plan: &sentinel_pipeline::Plan,
) -> anyhow::Result<sentinel_engine::rerun::Kept> {
    let Some(from) = &again.from else {
        return Ok(Default::default());
    };
    let kept = sentinel_engine::rerun::reused_from(store, state, &again.earlier.id, from, plan)
        .await
        .map_err(anyhow::Error::msg)?;
    for name in kept.0.keys() {
        eprintln!("keeping `{name}` as it ended in run {}", again.earlier.id);
    }
    for (name, why) in &kept.1 {
        eprintln!("running `{name}` again: {why}");
    }
    Ok(kept)
}
