//! `sentinel step publish`, `pull`, `keygen` and `update`: a built step
//! (or a script step's folder) published to a registry, signed when a key
//! is given; a reference pulled into the cache; a signing key made; the
//! lock file moved.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use sentinel_pipeline::{StepCatalog as _, StepManifest};
use sentinel_registry::{Kind, LockMode, Package, SecretKey};

use crate::Paths;
use crate::context::Dirs;
use crate::pipeline::FileArgs;

/// A step folder's package: `step.toml` + `step.wasm` (what `sentinel step
/// build` leaves), or a script step (`run.sh` beside its manifest).
pub fn package_of(dir: &Path) -> anyhow::Result<(Package, StepManifest)> {
    let dir = if dir.extension().is_some_and(|e| e == "wasm") {
        dir.parent().unwrap_or(Path::new("."))
    } else {
        dir
    };
    if let Some(script) = sentinel_pipeline::script_step::load_folder(dir) {
        let (manifest, _) = script?;
        let body = sentinel_registry::package::script_tar(dir).map_err(anyhow::Error::msg)?;
        return Ok((
            Package {
                kind: Kind::Script,
                manifest_text: String::new(),
                body,
                signature: None,
            },
            manifest,
        ));
    }
    let wasm = dir.join("step.wasm");
    if !wasm.is_file() {
        anyhow::bail!(
            "{} holds no step.wasm (run `sentinel step build` first) and no run.sh (a script step)",
            dir.display()
        );
    }
    // Each file read once: the manifest's text is what is published.
    let toml = dir.join("step.toml");
    let manifest_text = std::fs::read_to_string(&toml).map_err(|e| {
        anyhow::anyhow!(
            "cannot read {}: {e} (a step needs a step.toml beside its .wasm)",
            toml.display()
        )
    })?;
    let manifest = StepManifest::parse(&manifest_text, &toml.display().to_string())?;
    let body =
        std::fs::read(&wasm).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", wasm.display()))?;
    sentinel_wasm::inspect::check_step(&body, &manifest)
        .map_err(|e| anyhow::anyhow!("{}: {e}", wasm.display()))?;
    Ok((
        Package {
            kind: Kind::Wasm,
            manifest_text,
            body,
            signature: None,
        },
        manifest,
    ))
}

/// The signing key: `--sign FILE`, else `SENTINEL_STEP_KEY`.
fn signing_key(flag: Option<PathBuf>) -> anyhow::Result<Option<SecretKey>> {
    let path = flag.or_else(|| std::env::var_os("SENTINEL_STEP_KEY").map(PathBuf::from));
    path.map(|p| SecretKey::read(&p).map_err(anyhow::Error::msg))
        .transpose()
}

/// `sentinel step publish`.
pub fn publish(
    paths: &Paths,
    dir: &Path,
    to: &str,
    owner: Option<&str>,
    sign: Option<PathBuf>,
    force: bool,
) -> anyhow::Result<ExitCode> {
    let (mut pkg, manifest) = package_of(dir)?;
    let version = sentinel_registry::semver::Version::parse(&manifest.version)?;
    if let Some(key) = signing_key(sign)? {
        pkg.signature = Some(key.sign(&pkg.message(&manifest.name, &manifest.version)));
    }
    let catalog = super::catalog::of_paths(paths)?;
    let registry = match catalog.registries.get(to) {
        Some(named) => named.registry.clone(),
        None if to.contains("://") || to.starts_with('/') => {
            super::catalog::open_with(&catalog, to)?
        }
        None => anyhow::bail!(
            "no step registry `{to}`: name a `[registries.{to}]` with `steps = \"…\"` in {}, or give an address (oci://host/namespace, file:///folder, s3://bucket/prefix)",
            crate::registries::user_config_path()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "the user's config file".into())
        ),
    };
    let path = match owner {
        Some(o) => format!("{o}/{}", manifest.name),
        None => manifest.name.clone(),
    };
    let at = catalog
        .block(registry.publish(&path, &version, &pkg, force))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("published {} {} to {at}", manifest.name, manifest.version);
    println!("  digest:   {}", pkg.digest());
    println!("  manifest: {}", pkg.manifest_digest());
    match &pkg.signature {
        Some(s) => println!("  signed:   {}", s.key),
        None => println!("  signed:   no (runs that require signatures will refuse it)"),
    }
    Ok(ExitCode::SUCCESS)
}

/// `sentinel step pull REF`: resolves and caches a reference.
pub fn pull(paths: &Paths, reference: &str) -> anyhow::Result<ExitCode> {
    let catalog = super::catalog::of_paths(paths)?;
    match catalog.resolve(reference, Path::new(".")) {
        Ok(s) => {
            println!(
                "{} {} {} ({})",
                s.manifest.name,
                s.manifest.version,
                s.digest,
                s.wasm.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(if e.is_transient() { 75 } else { 2 }))
        }
    }
}

/// Where `keygen` writes a key by default.
fn default_key_path() -> Option<PathBuf> {
    crate::registries::user_config_path().map(|p| p.with_file_name("step-signing.key"))
}

/// `sentinel step keygen`.
pub fn keygen(out: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let path = out
        .or_else(default_key_path)
        .ok_or_else(|| anyhow::anyhow!("no HOME: give --out FILE"))?;
    if path.exists() {
        anyhow::bail!(
            "{} exists: a signing key is never overwritten (remove it, or give --out)",
            path.display()
        );
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let key = SecretKey::generate().map_err(anyhow::Error::msg)?;
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        f.write_all(key.to_file_text().as_bytes())?;
    }
    eprintln!("wrote the signing key {} (keep it secret)", path.display());
    eprintln!(
        "publish with: sentinel step publish --sign {} …; trust it with: trusted_keys = [\"{}\"]",
        path.display(),
        key.public()
    );
    println!("{}", key.public());
    Ok(ExitCode::SUCCESS)
}

/// `sentinel step update [NAME…]`: re-resolves the pipeline's steps (those
/// named, else all) and writes the lock file.
pub fn update(paths: &Paths, file: &FileArgs, names: Vec<String>) -> anyhow::Result<ExitCode> {
    let chosen = file.choose(paths)?;
    crate::pipeline::say_chosen(&chosen);
    let dirs = Dirs::of(paths, &chosen.project)?;
    let names: BTreeSet<String> = names.into_iter().collect();
    match crate::pipeline::load(
        &chosen.file,
        &file.select(),
        &dirs.state,
        LockMode::Update(names),
    ) {
        Ok(_) => {
            eprintln!(
                "{} is up to date",
                sentinel_registry::Lock::path_for(&chosen.file).display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(code) => Ok(code),
    }
}
