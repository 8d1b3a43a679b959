//! What a deploy run finds in its workspace's `deploy/` folder: a marker's
//! payload (checked again: it is read back from the state folder), or a
//! promoted run's published files (`deploy/<stage>/`, from its
//! `<stage>.zip`) and outputs (`deploy/outputs.json`, as its documents
//! show them: masked). Nothing of the repository is overwritten, and
//! `deploy/` must be a plain folder if the repository has one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sentinel_engine::ports::Store as _;
use sentinel_server::DeployRequest;
use sentinel_store::SledStore;

/// `deploy/` in the checkout, made if needed; never a link.
fn folder(dir: &Path) -> Result<PathBuf, String> {
    let dest = dir.join("deploy");
    match dest.symlink_metadata() {
        Ok(m) if !m.is_dir() => Err(
            "the repository's deploy/ is not a folder (a link or a file): the deploy's files go there"
                .into(),
        ),
        Ok(_) => Ok(dest),
        Err(_) => std::fs::create_dir(&dest)
            .map(|()| dest)
            .map_err(|e| format!("deploy/: {e}")),
    }
}

/// Refuses a name the repository already has under `deploy/`.
fn fresh(dest: &Path, name: &str) -> Result<PathBuf, String> {
    let to = dest.join(name);
    if to.symlink_metadata().is_ok() {
        return Err(format!(
            "the repository has deploy/{name}, which the deploy's files would replace"
        ));
    }
    Ok(to)
}

/// Puts what deploy `d` deploys into `dir/deploy/`.
pub async fn place(
    d: &DeployRequest,
    dir: &Path,
    payloads: &Path,
    results: &Path,
    store: &SledStore,
) -> Result<(), String> {
    if let Some(name) = &d.payload {
        let file = payloads.join(format!("{}.tar.gz", d.deployment));
        let marker = sentinel_deploy::Marker {
            app: d.facts.app.clone(),
            version: d.facts.version.parse().map_err(|e| format!("{e}"))?,
        };
        let folder_name = name.trim_end_matches(".tar.gz").to_string();
        let dir = dir.to_path_buf();
        tokio::task::spawn_blocking(move || {
            let f = std::fs::File::open(&file).map_err(|e| {
                format!(
                    "the payload of deployment {} is no longer kept ({}: {e})",
                    file.file_stem().and_then(|s| s.to_str()).unwrap_or(""),
                    file.display()
                )
            })?;
            // It was checked under the watcher's cap when it was found.
            let p = sentinel_deploy::payload::check(f, &marker, &folder_name, 1 << 30)
                .map_err(|e| format!("the kept payload: {e}"))?;
            let dest = folder(&dir)?;
            for (name, bytes) in p.files {
                std::fs::write(fresh(&dest, &name)?, bytes)
                    .map_err(|e| format!("deploy/{name}: {e}"))?;
            }
            Ok::<(), String>(())
        })
        .await
        .map_err(|e| e.to_string())??;
    }
    if let Some(from) = &d.from_run {
        let stages = store.get_stages(from).await.map_err(|e| e.to_string())?;
        let outputs: BTreeMap<String, serde_json::Value> = stages
            .iter()
            .map(|s| {
                let v = serde_json::json!({ "output": s.output, "outputs": s.outputs });
                (s.name.to_string(), v)
            })
            .collect();
        let zips: Vec<(String, PathBuf)> = stages
            .iter()
            .map(|s| {
                let key = sentinel_api::keys::stage_artifacts(from, &s.name);
                (s.name.to_string(), results.join(key))
            })
            .filter(|(_, p)| p.is_file())
            .collect();
        let dir = dir.to_path_buf();
        tokio::task::spawn_blocking(move || {
            let dest = folder(&dir)?;
            let json = serde_json::to_vec_pretty(&outputs).map_err(|e| e.to_string())?;
            std::fs::write(fresh(&dest, "outputs.json")?, json)
                .map_err(|e| format!("deploy/outputs.json: {e}"))?;
            for (stage, zip) in zips {
                let to = fresh(&dest, &stage)?;
                let bytes = std::fs::read(&zip).map_err(|e| format!("{}: {e}", zip.display()))?;
                sentinel_results::unzip_into(&bytes, &to)
                    .map_err(|e| format!("deploy/{stage}/: {e}"))?;
            }
            Ok::<(), String>(())
        })
        .await
        .map_err(|e| e.to_string())??;
    }
    Ok(())
}
