//! `sentinel token …`: API tokens in the state database (hashed there; a new
//! token is printed once and never again) — through the admin API of the
//! server that holds the database when one runs.

use std::process::ExitCode;

use clap::Subcommand;
use sentinel_store::tokens::Scope;

use crate::Paths;
use crate::context::{self, Dirs};

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it (once: only its hash is kept).
    Create {
        /// Who or what uses it (`ci`, `alice`).
        #[arg(long)]
        name: String,
        /// read, trigger (includes read) or admin (includes both).
        #[arg(long, default_value = "read")]
        scope: Scope,
    },
    /// List tokens (ids, names, scopes; never the tokens).
    List,
    /// Revoke a token by id.
    Revoke { id: String },
}

/// `sentinel token …`.
pub async fn token(paths: &Paths, cmd: TokenCommand) -> anyhow::Result<ExitCode> {
    let dirs = Dirs::new(paths)?;
    let Some(store) = context::try_open_store(&dirs.state)? else {
        // A server holds the database: through its admin API.
        let Some(remote) = crate::remote::Remote::local(&dirs.state) else {
            anyhow::bail!(
                "the state database {} is in use by another sentinel process that is not a server; wait for it to end",
                dirs.state.display()
            );
        };
        return token_remote(&remote, cmd).await;
    };
    match cmd {
        TokenCommand::Create { name, scope } => {
            let (token, info) = store.create_token(&name, scope).await?;
            eprintln!(
                "token {} ({name}, {scope:?}) created; it is shown once:",
                info.id
            );
            println!("{token}");
        }
        TokenCommand::List => {
            for t in store.tokens()? {
                println!(
                    "{}  {:<8} {}  {}",
                    t.id,
                    format!("{:?}", t.scope).to_lowercase(),
                    t.created.format("%Y-%m-%d %H:%M"),
                    t.name
                );
            }
        }
        TokenCommand::Revoke { id } => {
            if !store.revoke_token(&id).await? {
                anyhow::bail!("no token with id `{id}`");
            }
            eprintln!("token {id} revoked");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_token(t: &serde_json::Value) {
    println!(
        "{}  {:<8} {}  {}",
        t["id"].as_str().unwrap_or_default(),
        t["scope"].as_str().unwrap_or_default(),
        t["created"]
            .as_str()
            .unwrap_or_default()
            .get(..16)
            .unwrap_or_default()
            .replace('T', " "),
        t["name"].as_str().unwrap_or_default()
    );
}

async fn token_remote(
    remote: &crate::remote::Remote,
    cmd: TokenCommand,
) -> anyhow::Result<ExitCode> {
    use reqwest::Method;
    match cmd {
        TokenCommand::Create { name, scope } => {
            let v = remote
                .call(
                    Method::POST,
                    "/api/v1/tokens",
                    Some(serde_json::json!({ "name": name, "scope": scope })),
                )
                .await?;
            eprintln!(
                "token {} ({name}, {scope:?}) created by the server at {}; it is shown once:",
                v["info"]["id"].as_str().unwrap_or_default(),
                remote.url
            );
            println!("{}", v["token"].as_str().unwrap_or_default());
        }
        TokenCommand::List => {
            let v = remote.call(Method::GET, "/api/v1/tokens", None).await?;
            for t in v["tokens"].as_array().into_iter().flatten() {
                print_token(t);
            }
        }
        TokenCommand::Revoke { id } => {
            remote
                .call(Method::DELETE, &format!("/api/v1/tokens/{id}"), None)
                .await?;
            eprintln!("token {id} revoked");
        }
    }
    Ok(ExitCode::SUCCESS)
}
