//! The running server's local admin access: at start it writes
//! `<state>/server.json` (owner-only) with its URL and a fresh admin token,
//! so `sentinel token …` and `sentinel secret …` on the same machine go
//! through its API while it holds the database. Whoever can read the state
//! folder could read the database anyway. The token is revoked and the file
//! removed at a clean stop; a new start revokes any left by a killed one.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use sentinel_store::SledStore;
use sentinel_store::tokens::Scope;

/// The token name of local admin tokens.
const NAME: &str = "local-admin";

/// What `server.json` holds.
#[derive(Debug, Serialize, Deserialize)]
pub struct ServerFile {
    pub url: String,
    pub token: String,
    pub pid: u32,
}

/// The file's path in a state folder.
pub fn path(state: &Path) -> PathBuf {
    state.join("server.json")
}

/// The running server of a state folder, if its file is there.
pub fn read(state: &Path) -> Option<ServerFile> {
    let text = std::fs::read_to_string(path(state)).ok()?;
    serde_json::from_str(&text).ok()
}

/// The local admin access of this server.
#[derive(Debug)]
pub struct LocalAdmin {
    id: String,
    file: PathBuf,
}

impl LocalAdmin {
    /// Revokes earlier local tokens, creates one and writes the file.
    pub async fn write(store: &SledStore, state: &Path, url: &str) -> anyhow::Result<Self> {
        for t in store.tokens()? {
            if t.name == NAME {
                store.revoke_token(&t.id).await?;
            }
        }
        let (token, info) = store.create_token(NAME, Scope::Admin).await?;
        let file = path(state);
        let body = serde_json::to_vec_pretty(&ServerFile {
            url: url.to_string(),
            token,
            pid: std::process::id(),
        })?;
        let tmp = file.with_extension("json.tmp");
        {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            let _ = std::fs::remove_file(&tmp);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&body)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &file)?;
        Ok(Self { id: info.id, file })
    }

    /// Revokes the token and removes the file.
    pub async fn remove(self, store: &SledStore) {
        let _ = std::fs::remove_file(&self.file);
        if let Err(e) = store.revoke_token(&self.id).await {
            tracing::warn!("cannot revoke the local admin token: {e}");
        }
    }
}
