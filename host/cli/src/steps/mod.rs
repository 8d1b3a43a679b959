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
use sentinel_pipeline::{StepCatalog as _, WorkspaceAccess};

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
    let catalog = || -> anyhow::Result<sentinel_registry::Catalog> {
        let dir = paths.dir.clone().unwrap_or_else(|| PathBuf::from("."));
        catalog::user(&crate::context::Dirs::of(paths, &dir)?.state)
    };
    match cmd {
        StepCommand::Publish {
            dir,
            to,
            owner,
            sign,
            force,
        } => publish::publish(paths, &dir, &to, owner.as_deref(), sign, force),
        StepCommand::Pull { reference } => publish::pull(paths, &reference),
        StepCommand::New { name, dir, sdk } => author::new(&name, dir, sdk),
        StepCommand::Build { dir } => author::build(&dir).map(|_| ExitCode::SUCCESS),
        StepCommand::Test { dir } => author::test(&dir),
        StepCommand::Keygen { out } => publish::keygen(out),
        StepCommand::Update { names, file } => publish::update(paths, &file, names),
        StepCommand::List => list(&catalog()?),
        StepCommand::Show { reference, json } => show(&catalog()?, &reference, json),
    }
}

/// `sentinel step list`.
fn list(catalog: &sentinel_registry::Catalog) -> anyhow::Result<ExitCode> {
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

/// `sentinel step show REF`.
fn show(
    catalog: &sentinel_registry::Catalog,
    reference: &str,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let s = match catalog.resolve(reference, Path::new(".")) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let size = std::fs::metadata(&s.wasm).map(|m| m.len()).unwrap_or(0);
    let m = &s.manifest;
    // A step from a registry: where it came from, who signed it.
    let entry = catalog
        .cache
        .of_component(&s.digest)
        .into_iter()
        .find(|e| e.origin.name == m.name && e.origin.version == m.version);
    let signer = entry
        .as_ref()
        .and_then(|e| e.origin.signature.as_ref())
        .map(|sig| sig.key.clone());
    let source = entry.as_ref().map(|e| e.origin.source.clone());
    if json {
        let doc = serde_json::json!({
            "manifest": m,
            "file": s.wasm,
            "size": size,
            "digest": s.digest,
            "kind": if s.script.is_some() { "script" } else { "wasm" },
            "signer": signer,
            "source": source,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("{} {} — {}", m.name, m.version, m.description);
    println!(
        "  kind:      {}",
        if s.script.is_some() {
            "script step (runs in a job's container)"
        } else {
            "WebAssembly component (WASI 0.2, sandboxed)"
        }
    );
    println!("  file:      {} ({size} bytes)", s.wasm.display());
    println!("  digest:    {}", s.digest);
    if let Some(src) = &source {
        println!("  from:      {src}");
    }
    println!(
        "  signer:    {}",
        signer.as_deref().unwrap_or("none (unsigned)")
    );
    println!(
        "  workspace: {}",
        match m.capabilities.workspace {
            WorkspaceAccess::None => "none",
            WorkspaceAccess::Read => "read",
            WorkspaceAccess::Write => "read and write",
        }
    );
    if m.capabilities.http.is_empty() {
        println!("  network:   none");
    } else {
        println!("  network:   HTTP to {}", m.capabilities.http.join(", "));
    }
    if m.settings.is_empty() {
        println!("  settings:  none");
    } else {
        println!("  settings:");
        for (key, spec) in &m.settings {
            let mut what = Vec::new();
            if spec.required {
                what.push("required".to_string());
            }
            if let Some(d) = &spec.default {
                what.push(format!("default {d:?}"));
            }
            if spec.secret {
                what.push("secret".to_string());
            }
            println!(
                "    {key:<14} {:<34} {}{}",
                sentinel_pipeline::step::setting_env_name(&m.name, key),
                what.join(", "),
                if spec.description.is_empty() {
                    String::new()
                } else {
                    format!(" — {}", spec.description)
                }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
