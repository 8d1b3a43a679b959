//! `sentinel schedules`: a server's schedules, each with its cron
//! expression, time zone, next firing and the run its last firing queued.

use std::process::ExitCode;

use clap::Args;
use reqwest::Method;
use serde_json::Value;

use crate::Paths;
use crate::remote::ServerArgs;

#[derive(Debug, Args)]
pub struct SchedulesArgs {
    /// Print the server's answer as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArgs,
}

/// `sentinel schedules`.
pub async fn schedules(paths: &Paths, args: SchedulesArgs) -> anyhow::Result<ExitCode> {
    let remote = args.server.remote(paths)?;
    let v = remote.call(Method::GET, "/api/v1/schedules", None).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let list = v["schedules"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        println!("no schedules ([schedules.NAME] in the server's config adds one)");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<16} {:<16} {:<16} {:<18} {:<22} LAST RUN",
        "SCHEDULE", "REPO", "CRON", "TIME ZONE", "NEXT (UTC)"
    );
    for s in &list {
        let text = |k: &str| s[k].as_str().unwrap_or("-").to_string();
        let next = if s["enabled"] == Value::Bool(false) {
            "disabled".to_string()
        } else {
            s["next"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
                .unwrap_or_else(|| "-".into())
        };
        println!(
            "{:<16} {:<16} {:<16} {:<18} {:<22} {}",
            text("name"),
            format!("{}@{}", text("repo"), text("branch")),
            text("cron"),
            text("timezone"),
            next,
            text("last_run")
        );
    }
    Ok(ExitCode::SUCCESS)
}
