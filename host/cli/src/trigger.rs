//! `sentinel trigger REPO`: queues a run on a server (its API) and, with
//! `--wait`, follows it to its end; the exit code is the run's.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use reqwest::Method;
use serde_json::json;

use crate::Paths;
use crate::remote::ServerArgs;

#[derive(Debug, Args)]
pub struct TriggerArgs {
    /// A repository of the server's configuration.
    repo: String,
    /// The branch, tag or commit.
    #[arg(long = "ref", default_value = "HEAD")]
    git_ref: String,
    /// One of the repository's named pipelines (required when it has them).
    #[arg(long)]
    pipeline: Option<String>,
    #[command(flatten)]
    server: ServerArgs,
    /// Wait for the run to end and exit with its result.
    #[arg(long)]
    wait: bool,
    /// A value for the pipeline's `NAME: ~` entry; repeatable.
    #[arg(short = 'e', long = "env", value_name = "NAME=value", value_parser = crate::pipeline::name_value)]
    env: Vec<(String, String)>,
}

/// `sentinel trigger`.
pub async fn trigger(paths: &Paths, args: TriggerArgs) -> anyhow::Result<ExitCode> {
    let remote = args.server.remote(paths)?;
    let v = remote
        .call(
            Method::POST,
            "/api/v1/runs",
            Some(json!({
                "repo": args.repo,
                "ref": args.git_ref,
                "pipeline": args.pipeline,
                "env": args.env.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
            })),
        )
        .await?;
    let id = v["id"].as_str().unwrap_or_default().to_string();
    println!("{id}");
    eprintln!("run {id} queued on {}", remote.url);
    if !args.wait {
        return Ok(ExitCode::SUCCESS);
    }
    let mut last = String::new();
    loop {
        let v = remote
            .call(Method::GET, &format!("/api/v1/runs/{id}"), None)
            .await?;
        let status = v["run"]["status"].as_str().unwrap_or_default().to_string();
        if status != last {
            eprintln!("run {id} {status}");
            last = status.clone();
        }
        match status.as_str() {
            "succeeded" => return Ok(ExitCode::SUCCESS),
            "cancelled" => return Ok(ExitCode::from(130)),
            "failed" | "interrupted" => {
                if let Some(r) = v["run"]["reason"].as_str() {
                    eprintln!("  {r}");
                }
                return Ok(ExitCode::from(1));
            }
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}
