//! Stages' outputs kept for a re-run: the raw values (a re-run's later
//! stages must see exactly what the first run's saw), sealed at rest like
//! run secrets with ChaCha20-Poly1305, bound to their run and stage. The
//! key is the server's secrets key, else the state folder's `seal.key`
//! (mode 0600, made on first use); the database never holds them in clear.

use sentinel_api::{RunId, StageName};
use sentinel_engine::ports::{KeptOutputs, StorageError};

use crate::{SledStore, err};

fn key(run: &RunId, stage: &StageName) -> Vec<u8> {
    format!("{run}/{stage}").into_bytes()
}

/// Keeps a stage's outputs, sealed.
pub(crate) fn put(
    store: &SledStore,
    run: &RunId,
    stage: &StageName,
    kept: &KeptOutputs,
) -> Result<(), StorageError> {
    let k = key(run, stage);
    let plain = serde_json::to_vec(kept).map_err(|e| err("encode outputs", e))?;
    let sealed = store.sealing_key()?.seal(&k, &plain)?;
    store
        .kept
        .insert(k, sealed)
        .map_err(|e| err("keep outputs", e))?;
    Ok(())
}

/// A stage's kept outputs; `None` when there are none, or they do not
/// open with the current key (sealed under another one).
pub(crate) fn get(
    store: &SledStore,
    run: &RunId,
    stage: &StageName,
) -> Result<Option<KeptOutputs>, StorageError> {
    let k = key(run, stage);
    let Some(sealed) = store.kept.get(&k).map_err(|e| err("kept outputs", e))? else {
        return Ok(None);
    };
    let Some(plain) = store.sealing_key()?.open(&k, &sealed) else {
        tracing::warn!("the kept outputs of {run}/{stage} do not open with this key");
        return Ok(None);
    };
    serde_json::from_slice(&plain)
        .map(Some)
        .map_err(|e| err("kept outputs", e))
}

impl SledStore {
    /// Forgets every kept output of a run (retention).
    pub fn forget_kept(&self, run: &RunId) -> Result<usize, StorageError> {
        let mut n = 0;
        for kv in self.kept.scan_prefix(format!("{run}/")) {
            let (k, _) = kv.map_err(|e| err("kept outputs", e))?;
            self.kept.remove(k).map_err(|e| err("kept outputs", e))?;
            n += 1;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sentinel_engine::ports::Store;
    use std::collections::BTreeMap;

    #[tokio::test]
    async fn outputs_are_sealed_at_rest_and_bound_to_their_stage() {
        let tmp = tempfile::tempdir().unwrap();
        let value = "ASIA-kept-output-very-distinctive";
        let run: RunId = "01JDX3K6Q2T8W9V5M4N3P2R1S0".parse().unwrap();
        let (a, b): (StageName, StageName) = ("a".parse().unwrap(), "b".parse().unwrap());
        {
            let db = SledStore::try_open(tmp.path()).unwrap();
            let kept = KeptOutputs {
                output: value.into(),
                outputs: BTreeMap::from([("k".to_string(), value.to_string())]),
            };
            db.keep_outputs(&run, &a, &kept).await.unwrap();
            assert_eq!(db.kept_outputs(&run, &a).await.unwrap(), Some(kept));
            assert_eq!(db.kept_outputs(&run, &b).await.unwrap(), None);
            // Moved to another stage, it does not open.
            let sealed = db.kept.get(key(&run, &a)).unwrap().unwrap();
            db.kept.insert(key(&run, &b), sealed).unwrap();
            assert_eq!(db.kept_outputs(&run, &b).await.unwrap(), None);
            db.flush().await.unwrap();
        }
        let mode = std::fs::metadata(tmp.path().join("seal.key")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.permissions().mode() & 0o777, 0o600);
        for entry in crate::files_under(tmp.path()) {
            let bytes = std::fs::read(&entry).unwrap();
            assert!(
                !bytes.windows(value.len()).any(|w| w == value.as_bytes()),
                "{} holds the output in clear",
                entry.display()
            );
        }
    }
}
