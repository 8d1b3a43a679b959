//! `sentinel images`: the images runs made on this Docker engine (builds,
//! stages' Docker endpoints, `commit:`), and pruning those no registry
//! holds once their run ended and they are old enough.

use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use sentinel_engine::ports::Store as _;

use crate::Paths;
use crate::context::{self, Dirs};

#[derive(Debug, Subcommand)]
pub enum ImagesCommand {
    /// List the images runs made, oldest first.
    List,
    /// Remove the images runs made that no registry holds (never pushed),
    /// once their run ended and they are older than `--older-than`.
    Prune {
        /// How old an image must be (`7d`, `12h`).
        #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
        older_than: Duration,
        /// List what would go; remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

fn name(i: &sentinel_docker::MadeImage) -> String {
    i.tags
        .first()
        .cloned()
        .unwrap_or_else(|| i.id.chars().take(19).collect())
}

fn age(created: i64) -> String {
    let secs = (chrono::Utc::now().timestamp() - created).max(0) as u64;
    humantime::format_duration(Duration::from_secs(secs - secs % 60)).to_string()
}

/// `sentinel images …`.
pub async fn images(paths: &Paths, cmd: ImagesCommand) -> anyhow::Result<ExitCode> {
    let docker = sentinel_docker::DockerExecutor::connect().await?;
    let made = docker.made_images().await.map_err(anyhow::Error::msg)?;
    match cmd {
        ImagesCommand::List => {
            for i in &made {
                println!(
                    "{:<60} {:>8} MiB  {:<9} {} ago{}",
                    name(i),
                    i.size >> 20,
                    if i.pushed { "pushed" } else { "unpushed" },
                    age(i.created),
                    i.run
                        .as_ref()
                        .map(|r| format!("  run {r}"))
                        .unwrap_or_default()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        ImagesCommand::Prune {
            older_than,
            dry_run,
        } => {
            // Runs still going keep their images: the state says which.
            let dirs = Dirs::new(paths)?;
            let store = if dirs.state.is_dir() {
                context::try_open_store(&dirs.state)?
            } else {
                None
            };
            if store.is_none() {
                eprintln!(
                    "the state folder {} is not readable now (or there is none): images are judged by their age alone",
                    dirs.state.display()
                );
            }
            let done = prune(&docker, made, store.as_ref(), older_than, dry_run, |line| {
                println!("{line}")
            })
            .await;
            println!(
                "{} {} image(s), {} MiB; kept {} of runs still going or in use; pushed images are the registry's",
                if dry_run { "would remove" } else { "removed" },
                done.removed,
                done.bytes >> 20,
                done.kept
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// What a prune did.
#[derive(Debug, Default)]
pub struct Pruned {
    pub removed: u64,
    pub bytes: i64,
    pub kept: u64,
}

/// Removes (or, dry, lists) the unpushed images in `made` older than
/// `older_than` whose run ended (by `store`; a run it does not know, or
/// without one, by age alone); `say` gets a line per image.
pub async fn prune(
    docker: &sentinel_docker::DockerExecutor,
    made: Vec<sentinel_docker::MadeImage>,
    store: Option<&sentinel_store::SledStore>,
    older_than: Duration,
    dry_run: bool,
    say: impl FnMut(String),
) -> Pruned {
    let cutoff = chrono::Utc::now().timestamp() - older_than.as_secs() as i64;
    let mut ended = Vec::new();
    let mut running = 0;
    for i in made
        .into_iter()
        .filter(|i| !i.pushed && i.created <= cutoff)
    {
        if let (Some(store), Some(run)) = (store, &i.run)
            && let Ok(Some(doc)) = store.get_run(run).await
            && !doc.status.is_final()
        {
            running += 1;
            continue;
        }
        ended.push(i);
    }
    let mut done = remove(docker, ended, dry_run, say).await;
    done.kept += running;
    done
}

/// Removes (or, dry, lists) `images`; `say` gets a line per image.
pub async fn remove(
    docker: &sentinel_docker::DockerExecutor,
    images: Vec<sentinel_docker::MadeImage>,
    dry_run: bool,
    mut say: impl FnMut(String),
) -> Pruned {
    let mut done = Pruned::default();
    for i in images {
        if !dry_run && let Err(e) = docker.remove_made_image(&i.id).await {
            say(format!("kept {}: {e}", name(&i)));
            done.kept += 1;
            continue;
        }
        say(format!(
            "{} {} ({} ago)",
            if dry_run { "would remove" } else { "removed" },
            name(&i),
            age(i.created)
        ));
        done.removed += 1;
        done.bytes += i.size;
    }
    done
}
