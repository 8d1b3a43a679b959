//! A client of a running `sentinel serve`: its URL and token come from
//! flags or `SENTINEL_SERVER` / `SENTINEL_TOKEN`, else from the local
//! server's `server.json` in the state folder.

use anyhow::Context as _;
use clap::Args;
use serde_json::Value;

use crate::Paths;
use crate::context::Dirs;
use crate::serve::local;

/// Which server a command talks to.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// The server (else the one running on this state folder).
    #[arg(long, env = "SENTINEL_SERVER", requires = "token")]
    server: Option<String>,
    /// A token with the scope the command needs.
    #[arg(long, env = "SENTINEL_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl ServerArgs {
    /// The server named, else the one running on the state folder.
    pub fn remote(&self, paths: &Paths) -> anyhow::Result<Remote> {
        match (&self.server, &self.token) {
            (Some(url), Some(token)) => Ok(Remote::new(url, token)),
            _ => {
                let dirs = Dirs::new(paths)?;
                Remote::local(&dirs.state).context(
                    "no server: pass --server and --token (or SENTINEL_SERVER / SENTINEL_TOKEN), or start `sentinel serve` on this state folder",
                )
            }
        }
    }
}

/// A server to talk to.
#[derive(Debug, Clone)]
pub struct Remote {
    pub url: String,
    token: String,
    client: reqwest::Client,
}

impl Remote {
    pub fn new(url: &str, token: &str) -> Self {
        Self {
            url: url.trim_end_matches('/').to_string(),
            token: token.to_string(),
            client: reqwest::Client::new(),
        }
    }

    /// The server running on this state folder, if one is.
    pub fn local(state: &std::path::Path) -> Option<Self> {
        local::read(state).map(|f| Self::new(&f.url, &f.token))
    }

    /// Calls the API; an error answer becomes an error with its message.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut req = self
            .client
            .request(method.clone(), format!("{}{path}", self.url))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req
            .send()
            .await
            .with_context(|| format!("cannot reach the server at {}", self.url))?;
        let status = res.status();
        let text = res.text().await.unwrap_or_default();
        let json: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if !status.is_success() {
            let msg = json["error"].as_str().unwrap_or(text.as_str());
            anyhow::bail!("{method} {path}: {status}: {msg}");
        }
        Ok(json)
    }
}

/// `sentinel health`: exit 0 when the server (`url`, else the one running
/// on the state folder) answers its health check within 5 s — a
/// container's `HEALTHCHECK`.
pub async fn health(paths: &Paths, url: Option<String>) -> anyhow::Result<std::process::ExitCode> {
    let url = match url {
        Some(u) => u,
        None => {
            let dirs = Dirs::new(paths)?;
            local::read(&dirs.state).map(|f| f.url).with_context(|| {
                format!(
                    "no server is running on the state folder {} (no server.json); pass --url",
                    dirs.state.display()
                )
            })?
        }
    };
    let url = url.trim_end_matches('/');
    let answer = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()?
        .get(format!("{url}/health"))
        .send()
        .await;
    Ok(match answer {
        Ok(r) if r.status().is_success() => {
            println!("{url}: healthy");
            std::process::ExitCode::SUCCESS
        }
        Ok(r) => {
            eprintln!("{url}: not healthy: {}", r.status());
            std::process::ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("{url}: no answer: {e}");
            std::process::ExitCode::from(1)
        }
    })
}
