//! `sentinel deployments`: what is deployed where now, and the history,
//! from a server's deployments record.

use std::process::ExitCode;

use clap::Args;
use reqwest::Method;
use serde_json::Value;

use crate::Paths;
use crate::remote::ServerArgs;

#[derive(Debug, Args)]
pub struct DeploymentsArgs {
    /// Only this application.
    #[arg(long)]
    app: Option<String>,
    /// Only this environment.
    #[arg(long)]
    environment: Option<String>,
    /// How many of the history to show.
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// Print the server's answer as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArgs,
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or("-")
}

/// `sentinel deployments`.
pub async fn deployments(paths: &Paths, args: DeploymentsArgs) -> anyhow::Result<ExitCode> {
    let remote = args.server.remote(paths)?;
    let mut query = vec![format!("limit={}", args.limit)];
    for (k, v) in [("app", &args.app), ("environment", &args.environment)] {
        if let Some(v) = v {
            query.push(format!("{k}={v}"));
        }
    }
    let v = remote
        .call(
            Method::GET,
            &format!("/api/v1/deployments?{}", query.join("&")),
            None,
        )
        .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let current = v["current"].as_array().cloned().unwrap_or_default();
    if current.is_empty() {
        println!("nothing deployed yet");
    } else {
        println!("{:<16} {:<24} {:<16} RUN", "ENVIRONMENT", "APP", "VERSION");
        for d in &current {
            println!(
                "{:<16} {:<24} {:<16} {}",
                text(d, "environment"),
                text(d, "app"),
                text(d, "version"),
                text(d, "run")
            );
        }
    }
    let history = v["deployments"].as_array().cloned().unwrap_or_default();
    if !history.is_empty() {
        println!(
            "\nhistory ({} of {}), newest first:",
            history.len(),
            v["total"]
        );
        for d in &history {
            let status = d["status"].as_str().unwrap_or("unknown");
            let why = d["reason"]
                .as_str()
                .map(|r| format!(": {r}"))
                .unwrap_or_default();
            println!(
                "  {}  {} {} → {}  {status}{why}",
                text(d, "requested"),
                text(d, "app"),
                text(d, "version"),
                text(d, "environment"),
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
