//! `sentinel step …`: `list` and `show REF` — the steps this machine knows
//! (bundled, on `SENTINEL_STEPS_PATH`, pulled into the cache) and, before
//! using one, what it may do: its settings (which are required, their
//! defaults, which are secret), the hosts it may reach, its workspace
//! access, its size, digest and signer; the author's loop (`new`, `build`,
//! `test`: `author.rs`); registries (`publish`, `pull`, `keygen`, `update`:
//! `publish.rs`); the catalog they all use (`catalog.rs`).

mod author;
pub mod catalog;
mod publish;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use sentinel_api::{StepInfo, StepSettingInfo, StepsDoc};
use sentinel_pipeline::{ResolvedStep, StepCatalog as _, WorkspaceAccess};
use sentinel_registry::Catalog;
use sentinel_registry::cache::Entry;

use crate::Paths;
use crate::pipeline::FileArgs;

#[derive(Debug, Subcommand)]
pub enum StepCommand {
    /// List the steps this machine knows.
    List,
    /// Show what a step may do: settings, hosts, workspace access, size,
    /// digest (`name`, `name@1`, `owner/name@1.2.3` or a path).
    Show {
        reference: String,
        /// The manifest and facts as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Publish a built step (a folder with step.toml and step.wasm) or a
    /// script step's folder to a registry.
    Publish {
        /// The step's folder.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// The registry: a name of the config file's `[registries]`, or an
        /// address (oci://host/namespace, file:///folder, s3://bucket/prefix).
        #[arg(long)]
        to: String,
        /// Publish as `OWNER/NAME`.
        #[arg(long)]
        owner: Option<String>,
        /// Sign with this key (`sentinel step keygen`); default:
        /// `SENTINEL_STEP_KEY`.
        #[arg(long, value_name = "KEY_FILE")]
        sign: Option<PathBuf>,
        /// Replace a version already published with other content (runs that
        /// pinned it will refuse the new bytes).
        #[arg(long)]
        force: bool,
    },
    /// Scaffold a new step crate on the steps SDK.
    New {
        name: String,
        /// The folder (default: ./NAME).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The steps SDK's folder (default: SENTINEL_STEP_SDK, or the one of
        /// this source checkout).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Build a step crate for wasm32-wasip2, check the component against
    /// step.toml, and leave step.wasm beside it.
    Build {
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Build, then run the cases of tests/cases.toml through the real runtime.
    Test {
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// List the versions a registry holds of a step (`team:name`,
    /// `oci://host/ns/name`, or a name in the default registry), and the
    /// one the reference resolves to now.
    Versions { reference: String },
    /// Resolve a reference and put its step in the cache.
    Pull { reference: String },
    /// Make an ed25519 signing key; prints its public key.
    Keygen {
        /// Where to write it (default: `step-signing.key` beside the user's
        /// config file).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Resolve a pipeline's steps again (those named, else all) and write
    /// `sentinel.lock`.
    Update {
        /// Step names to move (default: all).
        #[arg(long = "step", value_name = "NAME")]
        names: Vec<String>,
        #[command(flatten)]
        file: FileArgs,
    },
}

/// `sentinel step …`.
pub fn step(paths: &Paths, cmd: StepCommand) -> anyhow::Result<ExitCode> {
    let catalog = || catalog::of_paths(paths);
    match cmd {
        StepCommand::Publish {
            dir,
            to,
            owner,
            sign,
            force,
        } => publish::publish(paths, &dir, &to, owner.as_deref(), sign, force),
        StepCommand::Pull { reference } => publish::pull(paths, &reference),
        StepCommand::Versions { reference } => versions(&catalog()?, &reference),
        StepCommand::New { name, dir, sdk } => author::new(&name, dir, sdk),
        StepCommand::Build { dir } => author::build(&dir).map(|_| ExitCode::SUCCESS),
        StepCommand::Test { dir } => author::test(&dir),
        StepCommand::Keygen { out } => publish::keygen(out),
        StepCommand::Update { names, file } => publish::update(paths, &file, names),
        StepCommand::List => list(&catalog()?),
        StepCommand::Show { reference, json } => show(&catalog()?, &reference, json),
    }
}

/// `sentinel step versions REF`.
fn versions(catalog: &Catalog, reference: &str) -> anyhow::Result<ExitCode> {
    let (at, listed, chosen) = match catalog.versions(reference) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(if e.is_transient() { 75 } else { 2 }));
        }
    };
    if listed.is_empty() {
        println!("{at}: no versions published");
    }
    for l in &listed {
        println!(
            "{:<12} {:<73} {}",
            l.version,
            l.digest.as_deref().unwrap_or("-"),
            if chosen.as_ref() == Some(&l.version) {
                format!("← {reference}")
            } else {
                String::new()
            }
        );
    }
    if !listed.is_empty() && chosen.is_none() {
        println!("(no version matches {reference})");
    }
    Ok(ExitCode::SUCCESS)
}

/// `sentinel step list`.
fn list(catalog: &Catalog) -> anyhow::Result<ExitCode> {
    let names = catalog.local.names();
    let cached = catalog.cache.entries();
    if names.is_empty() && cached.is_empty() {
        println!(
            "no steps: none bundled beside sentinel, SENTINEL_STEPS_PATH names no folder of steps, and none was pulled"
        );
    }
    for name in names {
        match catalog.local.resolve(&name, Path::new(".")) {
            Ok(s) => println!(
                "{:<16} {:<9} {}",
                s.manifest.name, s.manifest.version, s.manifest.description
            ),
            Err(e) => println!("{name:<16} (cannot be read: {e})"),
        }
    }
    for e in cached {
        println!(
            "{:<16} {:<9} pulled from {}",
            e.origin.name, e.origin.version, e.origin.source
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// What a resolved step is and may do; `entry` when it came from a
/// registry (the cache says where from and who signed it).
pub fn info(s: &ResolvedStep, entry: Option<&Entry>) -> StepInfo {
    describe(
        &s.manifest,
        if s.script.is_some() { "script" } else { "wasm" },
        &s.digest,
        std::fs::metadata(&s.wasm).map(|m| m.len()).unwrap_or(0),
        entry.map_or_else(|| "bundled".into(), |e| e.origin.source.clone()),
        entry
            .and_then(|e| e.origin.signature.as_ref())
            .map(|sig| sig.key.clone()),
    )
}

/// A step's facts from its manifest and what is known of its package.
fn describe(
    m: &sentinel_pipeline::StepManifest,
    kind: &str,
    digest: &str,
    size: u64,
    source: String,
    signer: Option<String>,
) -> StepInfo {
    StepInfo {
        name: m.name.clone(),
        version: m.version.clone(),
        description: m.description.clone(),
        kind: kind.into(),
        digest: digest.to_string(),
        size,
        source,
        signer,
        workspace: match m.capabilities.workspace {
            WorkspaceAccess::None => "none",
            WorkspaceAccess::Read => "read",
            WorkspaceAccess::Write => "write",
        }
        .into(),
        http: m.capabilities.http.clone(),
        settings: m
            .settings
            .iter()
            .map(|(key, spec)| StepSettingInfo {
                key: key.clone(),
                env: sentinel_pipeline::step::setting_env_name(&m.name, key),
                required: spec.required,
                default: spec.default.clone(),
                secret: spec.secret,
                description: spec.description.clone(),
            })
            .collect(),
    }
}

/// The steps a machine knows: those of its local step folders, those its
/// runs pulled into the cache, and the newest of each step its registries
/// hold (those that can list theirs) — the server's Steps page.
pub fn known(catalog: &Catalog) -> StepsDoc {
    let local = &catalog.local;
    let mut steps: Vec<StepInfo> = local
        .names()
        .into_iter()
        .filter_map(|n| local.resolve(&n, Path::new(".")).ok())
        .map(|s| info(&s, None))
        .collect();
    steps.extend(
        catalog
            .cache
            .entries()
            .iter()
            .filter_map(|e| e.resolved().ok().map(|s| info(&s, Some(e)))),
    );
    for (_, n) in catalog.published() {
        let name = n.path.rsplit('/').next().unwrap_or(&n.path);
        let version = n.version.to_string();
        let pkg = sentinel_registry::Package {
            kind: n.published.kind,
            manifest_text: n.manifest_text.clone(),
            body: Vec::new(),
            signature: None,
        };
        if let Ok(m) = pkg.manifest(name, &version, &n.location) {
            let kind = match n.published.kind {
                sentinel_registry::Kind::Wasm => "wasm",
                sentinel_registry::Kind::Script => "script",
            };
            steps.push(describe(
                &m,
                kind,
                &n.published.digest,
                n.published.size,
                n.location.clone(),
                n.published.signed_by.clone(),
            ));
        }
    }
    steps.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
    steps.dedup_by(|a, b| a.digest == b.digest && a.name == b.name && a.version == b.version);
    StepsDoc { steps }
}

/// `sentinel step show REF`.
fn show(catalog: &Catalog, reference: &str, json: bool) -> anyhow::Result<ExitCode> {
    let s = match catalog.resolve(reference, Path::new(".")) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    // A step from a registry: where it came from, who signed it.
    let entry = catalog
        .cache
        .of_component(&s.digest)
        .into_iter()
        .find(|e| e.origin.name == s.manifest.name && e.origin.version == s.manifest.version);
    let i = info(&s, entry.as_ref());
    if json {
        let mut doc = serde_json::to_value(&i)?;
        doc["file"] = serde_json::json!(s.wasm);
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("{} {} — {}", i.name, i.version, i.description);
    println!(
        "  kind:      {}",
        if i.kind == "script" {
            "script step (runs in a job's container)"
        } else {
            "WebAssembly component (WASI 0.2, sandboxed)"
        }
    );
    println!("  file:      {} ({} bytes)", s.wasm.display(), i.size);
    println!("  digest:    {}", i.digest);
    println!("  from:      {}", i.source);
    println!(
        "  signer:    {}",
        i.signer.as_deref().unwrap_or("none (unsigned)")
    );
    println!(
        "  workspace: {}",
        if i.workspace == "write" {
            "read and write"
        } else {
            &i.workspace
        }
    );
    if i.http.is_empty() {
        println!("  network:   none");
    } else {
        println!("  network:   HTTP to {}", i.http.join(", "));
    }
    if i.settings.is_empty() {
        println!("  settings:  none");
    } else {
        println!("  settings:");
        for st in &i.settings {
            let mut what = Vec::new();
            if st.required {
                what.push("required".to_string());
            }
            if let Some(d) = &st.default {
                what.push(format!("default {d:?}"));
            }
            if st.secret {
                what.push("secret".to_string());
            }
            println!(
                "    {:<14} {:<34} {}{}",
                st.key,
                st.env,
                what.join(", "),
                if st.description.is_empty() {
                    String::new()
                } else {
                    format!(" — {}", st.description)
                }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
