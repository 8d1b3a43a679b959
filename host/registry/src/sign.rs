//! Signatures of published steps: ed25519 over the step's name, version,
//! content digest and manifest digest (so neither the component nor what it
//! declares it may do can change under a signature). Keys are written as
//! `ed25519:<base64>`; a secret key file holds `ed25519-secret:<base64>`.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};

const PUBLIC: &str = "ed25519:";
const SECRET: &str = "ed25519-secret:";

/// A signature as it is stored beside a package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// The signer's public key, `ed25519:<base64>`.
    pub key: String,
    /// The signature, base64.
    pub signature: String,
}

/// What is signed.
pub fn message(name: &str, version: &str, digest: &str, manifest_digest: &str) -> Vec<u8> {
    format!("sentinel-step-signature-v1\n{name}\n{version}\n{digest}\n{manifest_digest}\n")
        .into_bytes()
}

/// A secret key read from its file.
#[derive(Debug)]
pub struct SecretKey(SigningKey);

impl SecretKey {
    /// A new random key.
    pub fn generate() -> Result<Self, String> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| format!("no randomness: {e}"))?;
        Ok(Self(SigningKey::from_bytes(&seed)))
    }

    /// The file's text.
    pub fn to_file_text(&self) -> String {
        format!("{SECRET}{}\n", B64.encode(self.0.to_bytes()))
    }

    /// Reads a key file.
    pub fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the signing key {}: {e}", path.display()))?;
        let b64 = text.trim().strip_prefix(SECRET).ok_or_else(|| {
            format!(
                "{} is not a signing key (`sentinel step keygen` writes one)",
                path.display()
            )
        })?;
        let bytes: [u8; 32] = B64
            .decode(b64)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| format!("{}: the key is not 32 bytes of base64", path.display()))?;
        Ok(Self(SigningKey::from_bytes(&bytes)))
    }

    /// `ed25519:<base64>`.
    pub fn public(&self) -> String {
        format!("{PUBLIC}{}", B64.encode(self.0.verifying_key().to_bytes()))
    }

    /// Signs `msg`.
    pub fn sign(&self, msg: &[u8]) -> Signature {
        Signature {
            key: self.public(),
            signature: B64.encode(self.0.sign(msg).to_bytes()),
        }
    }
}

/// Checks a public key's text.
pub fn parse_public(key: &str) -> Result<VerifyingKey, String> {
    let bytes: [u8; 32] = key
        .strip_prefix(PUBLIC)
        .and_then(|b| B64.decode(b).ok())
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| format!("`{key}` is not a public key (ed25519:<base64 of 32 bytes>)"))?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| format!("`{key}`: {e}"))
}

/// Which signatures a registry's steps need.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trust {
    /// Keys whose signatures are accepted; empty: signatures not required.
    pub keys: Vec<String>,
}

impl Trust {
    /// Verifies `sig` (if any) over `msg`: a signature that does not verify
    /// is always refused; when keys are trusted, an unsigned step or one
    /// signed by another key is refused too. The signer on success.
    pub fn check(&self, sig: Option<&Signature>, msg: &[u8]) -> Result<Option<String>, String> {
        let Some(sig) = sig else {
            if self.keys.is_empty() {
                return Ok(None);
            }
            return Err(format!(
                "it is not signed, and signatures by {} are required",
                self.keys.join(", ")
            ));
        };
        let key = parse_public(&sig.key)?;
        let bytes: [u8; 64] = B64
            .decode(&sig.signature)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or("its signature is not 64 bytes of base64")?;
        key.verify(msg, &ed25519_dalek::Signature::from_bytes(&bytes))
            .map_err(|_| format!("its signature by {} does not verify: the step or its manifest changed after it was signed", sig.key))?;
        if !self.keys.is_empty() && !self.keys.contains(&sig.key) {
            return Err(format!(
                "it is signed by {}, which is not a trusted key (trusted: {})",
                sig.key,
                self.keys.join(", ")
            ));
        }
        Ok(Some(sig.key.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_check() {
        let k = SecretKey::generate().unwrap();
        let other = SecretKey::generate().unwrap();
        let msg = message("x", "1.0.0", "sha256:aa", "sha256:bb");
        let sig = k.sign(&msg);
        let open = Trust::default();
        assert_eq!(open.check(None, &msg), Ok(None));
        assert_eq!(open.check(Some(&sig), &msg), Ok(Some(k.public())));
        let trusted = Trust {
            keys: vec![k.public()],
        };
        assert!(
            trusted
                .check(None, &msg)
                .unwrap_err()
                .contains("not signed")
        );
        assert_eq!(trusted.check(Some(&sig), &msg), Ok(Some(k.public())));
        let e = trusted.check(Some(&other.sign(&msg)), &msg).unwrap_err();
        assert!(e.contains("not a trusted key"), "{e}");
        let changed = message("x", "1.0.0", "sha256:ab", "sha256:bb");
        let e = open.check(Some(&sig), &changed).unwrap_err();
        assert!(e.contains("does not verify"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, k.to_file_text()).unwrap();
        assert_eq!(SecretKey::read(&path).unwrap().public(), k.public());
        assert!(parse_public("ed25519:nope").is_err());
    }
}
