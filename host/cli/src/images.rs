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
            let cutoff = chrono::Utc::now().timestamp() - older_than.as_secs() as i64;
            let (mut removed, mut bytes, mut kept) = (0u64, 0i64, 0u64);
            for i in made.iter().filter(|i| !i.pushed && i.created <= cutoff) {
                if let (Some(store), Some(run)) = (&store, &i.run)
                    && let Ok(Some(doc)) = store.get_run(run).await
                    && !doc.status.is_final()
                {
                    kept += 1;
                    continue;
                }
                if dry_run {
                    println!("would remove {} ({} ago)", name(i), age(i.created));
                    removed += 1;
                    bytes += i.size;
                    continue;
                }
                match docker.remove_made_image(&i.id).await {
                    Ok(()) => {
                        println!("removed {} ({} ago)", name(i), age(i.created));
                        removed += 1;
                        bytes += i.size;
                    }
                    Err(e) => {
                        eprintln!("kept {}: {e}", name(i));
                        kept += 1;
                    }
                }
            }
            println!(
                "{} {removed} image(s), {} MiB; kept {kept} of runs still going or in use; pushed images are the registry's",
                if dry_run { "would remove" } else { "removed" },
                bytes >> 20
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
