//! `sentinel token …`: API tokens in the state database (hashed there; a new
//! token is printed once and never again).

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
        anyhow::bail!(
            "the state database {} is in use by another sentinel process; stop it, or manage tokens through its API",
            dirs.state.display()
        );
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
