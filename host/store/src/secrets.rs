//! Run secrets, encrypted at rest: each value is sealed with
//! ChaCha20-Poly1305 under the server's key (32 bytes from a file or the
//! environment, never stored in the database), a fresh random nonce per
//! value, and the secret's name as associated data — so a sealed value
//! cannot be moved to another name, and a wrong key is an error, not
//! garbage. The database holds names and ciphertext only.

use std::collections::BTreeMap;

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};

use sentinel_engine::ports::StorageError;

use crate::{SledStore, err};

const NONCE: usize = 12;

/// The key that seals secrets.
pub struct SecretsKey(Key);

impl std::fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretsKey(…)")
    }
}

/// Why a key could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(String);

impl SecretsKey {
    /// A key from its text: 64 hex digits or the base64 of 32 bytes
    /// (surrounding white space ignored).
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let t = text.trim();
        let bytes = if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(t).map_err(|e| KeyError(e.to_string()))?
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(t)
                .map_err(|_| {
                    KeyError(
                        "a secrets key is 32 bytes written as 64 hex digits or in base64 (make one with `sentinel secret keygen`)".into(),
                    )
                })?
        };
        let key: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            KeyError(format!(
                "a secrets key is 32 bytes; this one has {}",
                b.len()
            ))
        })?;
        Ok(Self(key.into()))
    }

    /// A new random key, as 64 hex digits.
    pub fn generate() -> Result<String, StorageError> {
        let mut k = [0u8; 32];
        getrandom::fill(&mut k).map_err(|e| err("random", e))?;
        Ok(hex::encode(k))
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(&self.0)
    }

    /// Seals `msg` bound to `aad` (a random nonce, then the ciphertext).
    pub fn seal(&self, aad: &[u8], msg: &[u8]) -> Result<Vec<u8>, StorageError> {
        let mut nonce = [0u8; NONCE];
        getrandom::fill(&mut nonce).map_err(|e| err("random", e))?;
        let sealed = self
            .cipher()
            .encrypt(Nonce::from_slice(&nonce), Payload { msg, aad })
            .map_err(|_| err("seal", "encryption failed"))?;
        let mut stored = nonce.to_vec();
        stored.extend_from_slice(&sealed);
        Ok(stored)
    }

    /// Opens what [`SecretsKey::seal`] sealed with the same `aad`; `None`
    /// when it does not open (another key, another name, damaged).
    pub fn open(&self, aad: &[u8], stored: &[u8]) -> Option<Vec<u8>> {
        if stored.len() < NONCE {
            return None;
        }
        let (nonce, sealed) = stored.split_at(NONCE);
        self.cipher()
            .decrypt(Nonce::from_slice(nonce), Payload { msg: sealed, aad })
            .ok()
    }

    /// The key of a state folder (`seal.key`, mode 0600), made on first use.
    pub fn of_folder(dir: &std::path::Path) -> Result<Self, StorageError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = dir.join("seal.key");
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                return Self::parse(&text).map_err(|e| err(&format!("read {}", path.display()), e));
            }
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(err(&format!("read {}", path.display()), e));
            }
            Err(_) => {}
        }
        let text = Self::generate()?;
        let tmp = dir.join(format!(".seal.key.{}", std::process::id()));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| err("write the sealing key", e))?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| err("write the sealing key", e))?;
        // Another process may have made one meanwhile: theirs wins.
        if std::fs::hard_link(&tmp, &path).is_err() && !path.is_file() {
            let _ = std::fs::remove_file(&tmp);
            return Err(err("write the sealing key", "cannot create seal.key"));
        }
        let _ = std::fs::remove_file(&tmp);
        let text = std::fs::read_to_string(&path).map_err(|e| err("read the sealing key", e))?;
        Self::parse(&text).map_err(|e| err("read the sealing key", e))
    }
}

impl SledStore {
    /// Stores (or replaces) a secret, sealed under `key`.
    pub async fn put_secret(
        &self,
        key: &SecretsKey,
        name: &str,
        value: &str,
    ) -> Result<(), StorageError> {
        let stored = key.seal(name.as_bytes(), value.as_bytes())?;
        self.secrets
            .insert(name.as_bytes(), stored)
            .map_err(|e| err("put secret", e))?;
        self.flush().await
    }

    /// The names of the stored secrets, sorted.
    pub fn secret_names(&self) -> Result<Vec<String>, StorageError> {
        self.secrets
            .iter()
            .keys()
            .map(|k| {
                k.map(|k| String::from_utf8_lossy(&k).into_owned())
                    .map_err(|e| err("secrets", e))
            })
            .collect()
    }

    /// Removes a secret; false when there was none by that name.
    pub async fn remove_secret(&self, name: &str) -> Result<bool, StorageError> {
        let gone = self
            .secrets
            .remove(name.as_bytes())
            .map_err(|e| err("remove secret", e))?
            .is_some();
        self.flush().await?;
        Ok(gone)
    }

    /// Opens the secrets named in `names` that are stored (a name not
    /// stored is left out; the run's own check names it).
    pub fn open_secrets<'n>(
        &self,
        key: &SecretsKey,
        names: impl IntoIterator<Item = &'n String>,
    ) -> Result<BTreeMap<String, String>, StorageError> {
        let mut out = BTreeMap::new();
        for name in names {
            let Some(stored) = self
                .secrets
                .get(name.as_bytes())
                .map_err(|e| err("secret", e))?
            else {
                continue;
            };
            let plain = key.open(name.as_bytes(), &stored).ok_or_else(|| {
                err(
                    "secret",
                    format!(
                        "`{name}` does not open with this server's secrets key (was it set with another key?)"
                    ),
                )
            })?;
            let value = String::from_utf8(plain)
                .map_err(|_| err("secret", format!("`{name}` is not UTF-8")))?;
            out.insert(name.clone(), value);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sealed_at_rest_and_bound_to_key_and_name() {
        let tmp = tempfile::tempdir().unwrap();
        let key = SecretsKey::parse(&SecretsKey::generate().unwrap()).unwrap();
        let value = "hunter2-very-distinctive-value";
        {
            let db = SledStore::try_open(tmp.path()).unwrap();
            db.put_secret(&key, "DEPLOY_TOKEN", value).await.unwrap();
            db.put_secret(&key, "OTHER", "x").await.unwrap();
            assert_eq!(db.secret_names().unwrap(), ["DEPLOY_TOKEN", "OTHER"]);
            let names = vec!["DEPLOY_TOKEN".to_string(), "MISSING".to_string()];
            let open = db.open_secrets(&key, &names).unwrap();
            assert_eq!(open.len(), 1, "only what is stored and named");
            assert_eq!(open["DEPLOY_TOKEN"], value);

            // Another key: an error naming the secret, never garbage.
            let other = SecretsKey::parse(&SecretsKey::generate().unwrap()).unwrap();
            let e = db.open_secrets(&other, &names).unwrap_err().to_string();
            assert!(
                e.contains("DEPLOY_TOKEN") && e.contains("another key"),
                "{e}"
            );

            // A sealed value moved to another name does not open.
            let sealed = db.secrets.get("OTHER").unwrap().unwrap();
            db.secrets.insert("DEPLOY_TOKEN", sealed).unwrap();
            assert!(db.open_secrets(&key, &names).is_err());
            db.put_secret(&key, "DEPLOY_TOKEN", value).await.unwrap();
            assert!(db.remove_secret("OTHER").await.unwrap());
        }
        // Nothing under the state folder holds the value.
        for entry in crate::files_under(tmp.path()) {
            let bytes = std::fs::read(&entry).unwrap();
            assert!(
                !bytes.windows(value.len()).any(|w| w == value.as_bytes()),
                "{} holds the secret in plain text",
                entry.display()
            );
        }
    }

    #[test]
    fn keys_parse_from_hex_or_base64_only_at_32_bytes() {
        assert!(SecretsKey::parse(&"ab".repeat(32)).is_ok());
        assert!(SecretsKey::parse(&format!("  {}\n", "00".repeat(32))).is_ok());
        let b64 = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        assert!(SecretsKey::parse(&b64).is_ok());
        let short = base64::engine::general_purpose::STANDARD.encode([7u8; 16]);
        assert!(
            SecretsKey::parse(&short)
                .unwrap_err()
                .to_string()
                .contains("16")
        );
        assert!(SecretsKey::parse("not a key").is_err());
    }
}
