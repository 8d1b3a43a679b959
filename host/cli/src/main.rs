//! `sentinel`: run a pipeline of any dialect locally, validate or convert
//! it, print its JSON Schema, read back runs, stages and logs, serve the
//! HTTP API and run queue, and manage API tokens, run secrets and the
//! results outbox.

mod admin;
mod context;
mod deployments;
mod images;
mod init;
mod outbox;
mod pipeline;
mod progress;
mod read;
mod registries;
mod remote;
mod rerun;
mod retention;
mod run;
mod schedules;
mod secret;
mod serve;
mod steps;
mod trigger;
mod web;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// The allocator: a long-running server's resident memory stays flat with
/// jemalloc, where glibc's malloc grew by ~120 KiB per run (freed memory
/// kept in its arenas); measured by the `serve` benchmark.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Sentinel: a self-hosted CI/CD step host.
#[derive(Debug, Parser)]
#[command(name = "sentinel", version, about)]
struct Cli {
    #[command(flatten)]
    paths: Paths,
    #[command(subcommand)]
    command: Command,
}

/// Where things are. Each has a default derived from the project folder.
#[derive(Debug, Clone, Args)]
pub struct Paths {
    /// The project folder. Default: the pipeline file's folder, else the
    /// current one.
    #[arg(short = 'C', long = "dir", global = true, env = "SENTINEL_DIR")]
    pub dir: Option<PathBuf>,
    /// The state folder (database, run folders). Default: `<dir>/.sentinel`.
    #[arg(long, global = true, env = "SENTINEL_STATE")]
    pub state: Option<PathBuf>,
    /// The results folder. Default: `<state>/results`.
    #[arg(long, global = true, env = "SENTINEL_RESULTS")]
    pub results: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a pipeline: `sentinel.yml`, a dockercise file, …
    Run(run::RunArgs),
    /// Run a run of this machine again, on the source it recorded (its
    /// commit), optionally from a stage that failed.
    Rerun(rerun::RerunArgs),
    /// Check a pipeline file and print its plan.
    Validate {
        #[command(flatten)]
        file: pipeline::FileArgs,
        /// Print the resolved plan as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print any pipeline file as the equivalent native `sentinel.yml`.
    Convert {
        #[command(flatten)]
        file: pipeline::FileArgs,
    },
    /// Print the JSON Schema of `sentinel.yml`.
    Schema,
    /// List runs, newest first; `prune` removes old ones, `keep` marks one
    /// to be kept.
    #[command(args_conflicts_with_subcommands = true)]
    Runs {
        #[command(subcommand)]
        cmd: Option<retention::RunsCommand>,
        #[arg(short = 'n', long, default_value_t = 20)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Show a run and its stages (`last`, an id or a unique prefix).
    Show {
        run: String,
        #[arg(long)]
        json: bool,
    },
    /// Print a stage's log.
    Logs { run: String, stage: String },
    /// Manage API tokens (stored hashed).
    Token {
        #[command(subcommand)]
        cmd: admin::TokenCommand,
    },
    /// Manage run secrets (stored encrypted).
    Secret {
        #[command(subcommand)]
        cmd: secret::SecretCommand,
    },
    /// Results waiting for S3, and those it refused.
    Outbox {
        #[command(subcommand)]
        cmd: outbox::OutboxCommand,
    },
    /// Serve the HTTP API: queue, run and publish runs.
    Serve(serve::config::ServeArgs),
    /// Queue a run on a server.
    Trigger(trigger::TriggerArgs),
    /// What is deployed where now, and the deploys before (from a server).
    Deployments(deployments::DeploymentsArgs),
    /// Deploy a succeeded run to an environment (on a server).
    Promote(deployments::PromoteArgs),
    /// Approve a deploy that waits for an approval (a deploy-scope token).
    Approve(deployments::AnswerArgs),
    /// Reject a deploy that waits for an approval (a deploy-scope token).
    Reject(deployments::AnswerArgs),
    /// A server's schedules, with their next firings.
    Schedules(schedules::SchedulesArgs),
    /// Write a commented starter `sentinel.yml` (or convert the project's
    /// file of another dialect into one).
    Init {
        /// Replace an existing `sentinel.yml`.
        #[arg(long)]
        force: bool,
    },
    /// Print the completion script of a shell (`bash`, `zsh`, `fish`, …).
    Completions { shell: clap_complete::Shell },
    /// The steps this machine knows, and what one may do.
    Step {
        #[command(subcommand)]
        cmd: steps::StepCommand,
    },
    /// Exit 0 when the server answers its health check (a container's
    /// HEALTHCHECK): the server at `--url`, else the one on the state folder.
    Health {
        #[arg(long)]
        url: Option<String>,
    },
    /// The images runs made on this Docker engine, and pruning them.
    Images {
        #[command(subcommand)]
        cmd: images::ImagesCommand,
    },
    /// The results web app.
    Web {
        #[command(subcommand)]
        cmd: web::WebCommand,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Serve(args) = cli.command {
        // The server sets up its own logs (text or JSON).
        return match serve::serve(&cli.paths, args) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SENTINEL_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Run(args) => run::run(&cli.paths, args).await,
            Command::Rerun(r) => run::run_with(&cli.paths, r.args, Some((r.run, r.from))).await,
            Command::Validate { file, json } => run::validate(&cli.paths, &file, json),
            Command::Convert { file } => pipeline::convert(&cli.paths, &file),
            Command::Outbox { cmd } => outbox::outbox(&cli.paths, cmd).await,
            Command::Schema => {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&sentinel_pipeline::json_schema())?
                );
                Ok(ExitCode::SUCCESS)
            }
            Command::Runs { cmd: Some(cmd), .. } => retention::runs(&cli.paths, cmd).await,
            Command::Runs { limit, json, .. } => read::runs(&cli.paths, limit, json).await,
            Command::Show { run, json } => read::show(&cli.paths, &run, json).await,
            Command::Logs { run, stage } => read::logs(&cli.paths, &run, &stage).await,
            Command::Token { cmd } => admin::token(&cli.paths, cmd).await,
            Command::Secret { cmd } => secret::secret(&cli.paths, cmd).await,
            Command::Trigger(args) => trigger::trigger(&cli.paths, args).await,
            Command::Deployments(args) => deployments::deployments(&cli.paths, args).await,
            Command::Promote(args) => deployments::promote(&cli.paths, args).await,
            Command::Approve(args) => deployments::answer(&cli.paths, args, true).await,
            Command::Reject(args) => deployments::answer(&cli.paths, args, false).await,
            Command::Schedules(args) => schedules::schedules(&cli.paths, args).await,
            Command::Web { cmd } => web::web(&cli.paths, cmd).await,
            Command::Images { cmd } => images::images(&cli.paths, cmd).await,
            Command::Health { url } => remote::health(&cli.paths, url).await,
            Command::Step { cmd } => steps::step(&cli.paths, cmd),
            Command::Init { force } => init::init(&cli.paths, force),
            Command::Completions { shell } => init::completions(shell),
            Command::Serve(_) => unreachable!("handled above"),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
