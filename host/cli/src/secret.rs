//! `sentinel secret …`: run secrets, encrypted at rest in the server's
//! database. The value of `set` comes from stdin (never from the command
//! line, where other users and shell history would see it); `list` shows
//! names only. Through the running server's API when one holds the
//! database, else directly with the key from `SENTINEL_SECRETS_KEY` or
//! `--key-file`.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;
use serde_json::json;

use sentinel_store::secrets::SecretsKey;

use crate::Paths;
use crate::context::{self, Dirs};
use crate::remote::Remote;

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Store a secret; its value is read from stdin.
    Set {
        name: String,
        /// The key file (else SENTINEL_SECRETS_KEY); not needed when a server runs.
        #[arg(long, env = "SENTINEL_SECRETS_KEY_FILE")]
        key_file: Option<PathBuf>,
    },
    /// List the secrets' names.
    List,
    /// Remove a secret.
    Rm { name: String },
    /// Print a new random secrets key (64 hex digits) to keep in a file.
    Keygen,
}

fn key(file: Option<&PathBuf>) -> anyhow::Result<SecretsKey> {
    let text = match std::env::var("SENTINEL_SECRETS_KEY") {
        Ok(v) => v,
        Err(_) => {
            let f = file.context(
                "no secrets key: set SENTINEL_SECRETS_KEY or pass --key-file (make one with `sentinel secret keygen`)",
            )?;
            std::fs::read_to_string(f).with_context(|| format!("key file {}", f.display()))?
        }
    };
    Ok(SecretsKey::parse(&text)?)
}

fn read_value() -> anyhow::Result<String> {
    let mut v = String::new();
    std::io::stdin()
        .read_to_string(&mut v)
        .context("reading the secret's value from stdin")?;
    let v = v.strip_suffix('\n').unwrap_or(&v);
    let v = v.strip_suffix('\r').unwrap_or(v).to_string();
    if v.is_empty() {
        anyhow::bail!("the value read from stdin is empty");
    }
    Ok(v)
}

/// `sentinel secret …`.
pub async fn secret(paths: &Paths, cmd: SecretCommand) -> anyhow::Result<ExitCode> {
    if let SecretCommand::Keygen = cmd {
        println!("{}", SecretsKey::generate()?);
        return Ok(ExitCode::SUCCESS);
    }
    let dirs = Dirs::new(paths)?;
    match context::try_open_store(&dirs.state)? {
        Some(store) => match cmd {
            SecretCommand::Set { name, key_file } => {
                let key = key(key_file.as_ref())?;
                let value = read_value()?;
                store.put_secret(&key, &name, &value).await?;
                eprintln!("secret {name} stored (encrypted)");
            }
            SecretCommand::List => {
                for n in store.secret_names()? {
                    println!("{n}");
                }
            }
            SecretCommand::Rm { name } => {
                if !store.remove_secret(&name).await? {
                    anyhow::bail!("no secret `{name}`");
                }
                eprintln!("secret {name} removed");
            }
            SecretCommand::Keygen => {}
        },
        None => {
            let remote = Remote::local(&dirs.state).with_context(|| {
                format!(
                    "the state folder {} is in use by another sentinel process that is not a server",
                    dirs.state.display()
                )
            })?;
            match cmd {
                SecretCommand::Set { name, .. } => {
                    let value = read_value()?;
                    remote
                        .call(
                            reqwest::Method::PUT,
                            &format!("/api/v1/secrets/{name}"),
                            Some(json!({ "value": value })),
                        )
                        .await?;
                    eprintln!(
                        "secret {name} stored (encrypted) by the server at {}",
                        remote.url
                    );
                }
                SecretCommand::List => {
                    let v = remote
                        .call(reqwest::Method::GET, "/api/v1/secrets", None)
                        .await?;
                    for n in v["secrets"].as_array().into_iter().flatten() {
                        println!("{}", n.as_str().unwrap_or_default());
                    }
                }
                SecretCommand::Rm { name } => {
                    remote
                        .call(
                            reqwest::Method::DELETE,
                            &format!("/api/v1/secrets/{name}"),
                            None,
                        )
                        .await?;
                    eprintln!("secret {name} removed");
                }
                SecretCommand::Keygen => {}
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
