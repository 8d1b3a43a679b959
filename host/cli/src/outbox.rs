//! `sentinel outbox`: what waits for the results bucket and what it refused
//! for good (parked), and `retry`, which puts parked results back in the
//! queue and sends them now when the bucket is known (`--s3` or the one the
//! state folder's runs mirror to).

use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use sentinel_engine::ports::Outbox as _;

use crate::Paths;
use crate::context::{self, Dirs};
use crate::run::S3Args;

#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
    /// How many results wait, and the parked ones with why.
    Status,
    /// Queue the parked results again and send everything waiting.
    Retry {
        #[command(flatten)]
        s3: S3Args,
    },
}

pub async fn outbox(paths: &Paths, cmd: OutboxCommand) -> anyhow::Result<ExitCode> {
    let dirs = Dirs::new(paths)?;
    let Some(store) = context::try_open_store(&dirs.state)? else {
        anyhow::bail!(
            "another sentinel process is using the state folder {} (a server answers `sentinel outbox` through its metrics)",
            dirs.state.display()
        );
    };
    match cmd {
        OutboxCommand::Status => {
            let parked = store.parked().await?;
            println!(
                "{} result(s) wait for the bucket; {} parked",
                store.len(),
                parked.len()
            );
            for p in parked {
                println!(
                    "  run {}  {}  parked {}: {}",
                    p.item.run(),
                    p.item.describe(),
                    p.at.format("%Y-%m-%d %H:%M:%S"),
                    p.reason
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        OutboxCommand::Retry { s3 } => {
            let cfg = match s3.config()? {
                Some(c) => Some(c),
                None => context::remembered_mirror(&store),
            };
            let Some(cfg) = cfg else {
                let n = store.unpark_all().await?;
                println!(
                    "{n} parked result(s) queued again; they go up with the next run that has the bucket"
                );
                return Ok(ExitCode::SUCCESS);
            };
            let outbox = context::s3_outbox(&dirs, &store, cfg).await;
            let n = outbox.retry_parked().await?;
            let done = outbox.settle(Duration::from_secs(60)).await;
            println!(
                "{n} parked result(s) queued again; {} wait, {} parked",
                outbox.waiting(),
                outbox.parked()
            );
            Ok(if done && outbox.parked() == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}
