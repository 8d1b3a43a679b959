//! API tokens, stored hashed: a token is `sentinel_<id>_<secret>`; the
//! database keeps its id, name, scopes and the SHA-256 of the whole token —
//! never the token — and checks a presented token in constant time. The
//! secret is 32 random bytes, so a plain SHA-256 is enough (no password
//! stretching is needed for a value nobody chose).

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use subtle::ConstantTimeEq;

use sentinel_engine::ports::StorageError;

use crate::{SledStore, decode, encode, err, get_decoded};

/// What a token may do; each scope includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Read runs, stages and logs.
    Read,
    /// Also trigger, cancel and re-run runs, and promote a run.
    Trigger,
    /// Also approve or reject a deploy to an environment that asks for it.
    Deploy,
    /// Also manage tokens and secrets.
    Admin,
}

/// A scope name that is none of `read`, `trigger`, `deploy`, `admin`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown scope `{0}` (read, trigger, deploy or admin)")]
pub struct UnknownScope(pub String);

impl std::str::FromStr for Scope {
    type Err = UnknownScope;
    fn from_str(s: &str) -> Result<Self, UnknownScope> {
        match s {
            "read" => Ok(Scope::Read),
            "trigger" => Ok(Scope::Trigger),
            "deploy" => Ok(Scope::Deploy),
            "admin" => Ok(Scope::Admin),
            other => Err(UnknownScope(other.to_string())),
        }
    }
}

/// A token as stored (no secret in it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub id: String,
    pub name: String,
    pub scope: Scope,
    pub created: DateTime<Utc>,
    /// Hex SHA-256 of the whole token.
    sha256: String,
}

fn sha256_hex(token: &str) -> String {
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

fn random<const N: usize>() -> Result<[u8; N], StorageError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| err("random", e))?;
    Ok(b)
}

impl SledStore {
    /// Creates a token; returns it (shown once, never stored) and its record.
    pub async fn create_token(
        &self,
        name: &str,
        scope: Scope,
    ) -> Result<(String, TokenInfo), StorageError> {
        let id = hex::encode(random::<6>()?);
        let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random::<32>()?);
        let token = format!("sentinel_{id}_{secret}");
        let info = TokenInfo {
            id: id.clone(),
            name: name.to_string(),
            scope,
            created: Utc::now(),
            sha256: sha256_hex(&token),
        };
        self.tokens
            .insert(id.as_bytes(), encode(&info)?)
            .map_err(|e| err("create token", e))?;
        self.flush().await?;
        Ok((token, info))
    }

    /// The record of a presented token, when it is one of ours.
    pub fn verify_token(&self, token: &str) -> Result<Option<TokenInfo>, StorageError> {
        let Some(id) = token
            .strip_prefix("sentinel_")
            .and_then(|rest| rest.split_once('_'))
            .map(|(id, _)| id)
        else {
            return Ok(None);
        };
        let Some(info) = get_decoded::<TokenInfo>(&self.tokens, id.as_bytes(), "token")? else {
            return Ok(None);
        };
        let same: bool = sha256_hex(token)
            .as_bytes()
            .ct_eq(info.sha256.as_bytes())
            .into();
        Ok(same.then_some(info))
    }

    /// Every token's record, by id.
    pub fn tokens(&self) -> Result<Vec<TokenInfo>, StorageError> {
        self.tokens
            .iter()
            .map(|kv| {
                kv.map_err(|e| err("tokens", e))
                    .and_then(|(_, v)| decode(&v))
            })
            .collect()
    }

    /// Removes a token; false when there was none with that id.
    pub async fn revoke_token(&self, id: &str) -> Result<bool, StorageError> {
        let gone = self
            .tokens
            .remove(id.as_bytes())
            .map_err(|e| err("revoke token", e))?
            .is_some();
        self.flush().await?;
        Ok(gone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tokens_verify_only_as_issued() {
        let tmp = tempfile::tempdir().unwrap();
        let db = SledStore::try_open(tmp.path()).unwrap();
        let (token, info) = db.create_token("ci", Scope::Trigger).await.unwrap();
        assert!(token.starts_with(&format!("sentinel_{}_", info.id)));
        assert_eq!(
            db.verify_token(&token).unwrap().unwrap().scope,
            Scope::Trigger
        );
        // One flipped character anywhere, another id, or garbage: refused.
        let mut flipped = token.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        assert!(
            db.verify_token(&String::from_utf8(flipped).unwrap())
                .unwrap()
                .is_none()
        );
        assert!(
            db.verify_token("sentinel_000000000000_x")
                .unwrap()
                .is_none()
        );
        assert!(db.verify_token("Bearer nothing").unwrap().is_none());
        assert!(Scope::Admin > Scope::Trigger && Scope::Trigger > Scope::Read);
        assert!(db.revoke_token(&info.id).await.unwrap());
        assert!(db.verify_token(&token).unwrap().is_none(), "revoked");
    }
}
