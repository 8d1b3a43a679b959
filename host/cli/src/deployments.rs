//! `sentinel deployments`: what is deployed where now, and the history,
//! from a server's deployments record; `sentinel promote` deploys a
//! succeeded run to an environment, `sentinel approve` / `reject` answer a
//! deploy that waits for an approval.

use std::process::ExitCode;

use clap::Args;
use reqwest::Method;
use serde_json::{Value, json};

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

/// A time of a document, to the second.
fn time(v: &Value, key: &str) -> String {
    v[key]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "-".into())
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
        println!("\nhistory, newest first:");
        for d in &history {
            let status = d["status"].as_str().unwrap_or("unknown");
            let why = d["reason"]
                .as_str()
                .map(|r| format!(": {r}"))
                .unwrap_or_default();
            println!(
                "  {}  {} {} → {}  {status}{why}",
                time(d, "requested"),
                text(d, "app"),
                text(d, "version"),
                text(d, "environment"),
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct PromoteArgs {
    /// The succeeded run to deploy.
    run: String,
    /// The environment (of the server's `[environments]`).
    #[arg(long)]
    to: String,
    /// Deploy a run older than the one deployed there now.
    #[arg(long)]
    rollback: bool,
    #[command(flatten)]
    server: ServerArgs,
}

/// `sentinel promote RUN --to ENV`.
pub async fn promote(paths: &Paths, args: PromoteArgs) -> anyhow::Result<ExitCode> {
    let remote = args.server.remote(paths)?;
    let v = remote
        .call(
            Method::POST,
            &format!("/api/v1/runs/{}/promote", args.run),
            Some(json!({ "to": args.to, "rollback": args.rollback })),
        )
        .await?;
    println!("{}", text(&v, "deployment"));
    match v["status"].as_str() {
        Some("waiting_approval") => eprintln!(
            "deployment {} waits for an approval (sentinel approve {0}, with a deploy token)",
            text(&v, "deployment")
        ),
        _ => eprintln!(
            "deployment {} queued as run {}",
            text(&v, "deployment"),
            text(&v, "run")
        ),
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct AnswerArgs {
    /// The deployment that waits.
    deployment: String,
    /// Why (a rejection).
    #[arg(long)]
    reason: Option<String>,
    #[command(flatten)]
    server: ServerArgs,
}

/// `sentinel approve` (`approved`) or `sentinel reject`.
pub async fn answer(paths: &Paths, args: AnswerArgs, approved: bool) -> anyhow::Result<ExitCode> {
    let remote = args.server.remote(paths)?;
    let (what, body) = if approved {
        ("approve", None)
    } else {
        ("reject", Some(json!({ "reason": args.reason })))
    };
    let v = remote
        .call(
            Method::POST,
            &format!("/api/v1/deployments/{}/{what}", args.deployment),
            body,
        )
        .await?;
    match v["run"].as_str() {
        Some(run) if approved => {
            println!("deployment {} approved: run {run} queued", args.deployment)
        }
        _ => println!("deployment {} {}", args.deployment, text(&v, "status")),
    }
    Ok(ExitCode::SUCCESS)
}
