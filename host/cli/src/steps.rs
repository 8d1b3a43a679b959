//! `sentinel step list` and `sentinel step show REF`: the steps this machine
//! knows (bundled, installed, on `SENTINEL_STEPS_PATH`) and, before using
//! one, what it may do — its settings (which are required, their defaults,
//! which are secret), the hosts it may reach, its workspace access, its
//! size and digest.

use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;
use sentinel_pipeline::{StepCatalog as _, WorkspaceAccess};

use crate::Paths;

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
}

/// `sentinel step …`.
pub fn step(_paths: &Paths, cmd: StepCommand) -> anyhow::Result<ExitCode> {
    let catalog = crate::context::step_catalog();
    match cmd {
        StepCommand::List => {
            let mut names = catalog.names();
            names.sort();
            names.dedup();
            if names.is_empty() {
                println!(
                    "no steps: none bundled beside sentinel, and SENTINEL_STEPS_PATH names no folder of steps"
                );
            }
            for name in names {
                match catalog.resolve(&name, Path::new(".")) {
                    Ok(s) => println!(
                        "{:<16} {:<9} {}",
                        s.manifest.name, s.manifest.version, s.manifest.description
                    ),
                    Err(e) => println!("{name:<16} (cannot be read: {e})"),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        StepCommand::Show { reference, json } => {
            let s = match catalog.resolve(&reference, Path::new(".")) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e}");
                    return Ok(ExitCode::from(2));
                }
            };
            let size = std::fs::metadata(&s.wasm).map(|m| m.len()).unwrap_or(0);
            let m = &s.manifest;
            if json {
                let doc = serde_json::json!({
                    "manifest": m,
                    "file": s.wasm,
                    "size": size,
                    "digest": s.digest,
                    "kind": if s.script.is_some() { "script" } else { "wasm" },
                    "signer": null,
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
            println!("  signer:    none (unsigned)");
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
    }
}
