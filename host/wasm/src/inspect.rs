//! What a component declares before it ever runs: that it is a component
//! (not a core module), its top-level imports and exports, and whether they
//! fit a step's manifest — it exports `wasi:cli/run`, imports `wasi:http`
//! only when it declares hosts, and never imports `wasi:sockets` (the
//! sandbox gives no sockets: such a step would fail at its first run).

use sentinel_pipeline::StepManifest;
use wasmparser::{Encoding, Parser, Payload};

/// A component's top-level interface names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interface {
    pub imports: Vec<String>,
    pub exports: Vec<String>,
}

/// Reads a component's top-level imports and exports.
pub fn inspect(bytes: &[u8]) -> Result<Interface, String> {
    let mut out = Interface::default();
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(|e| format!("not a valid WebAssembly binary: {e}"))?;
        match payload {
            Payload::Version { encoding, .. } if depth == 0 && encoding != Encoding::Component => {
                return Err(
                    "a core module, not a component: build for wasm32-wasip2 (a WASI 0.2 component)"
                        .into(),
                );
            }
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(r) if depth == 0 => {
                for i in r {
                    let i = i.map_err(|e| e.to_string())?;
                    out.imports.push(i.name.name.to_string());
                }
            }
            Payload::ComponentExportSection(r) if depth == 0 => {
                for x in r {
                    let x = x.map_err(|e| e.to_string())?;
                    out.exports.push(x.name.name.to_string());
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

fn package(name: &str) -> &str {
    name.split(['/', '@']).next().unwrap_or(name)
}

/// Checks a step's component against its manifest; its interface when it
/// fits.
pub fn check_step(bytes: &[u8], manifest: &StepManifest) -> Result<Interface, String> {
    let iface = inspect(bytes)?;
    if !iface
        .exports
        .iter()
        .any(|e| e.starts_with("wasi:cli/run@0.2"))
    {
        return Err(format!(
            "it does not export wasi:cli/run@0.2 (its exports: {}): a step is a command component (`fn main`, built for wasm32-wasip2)",
            if iface.exports.is_empty() {
                "none".to_string()
            } else {
                iface.exports.join(", ")
            }
        ));
    }
    if let Some(s) = iface.imports.iter().find(|i| package(i) == "wasi:sockets") {
        return Err(format!(
            "it imports {s}: steps get no sockets (outgoing HTTP goes through wasi:http, to the hosts step.toml declares)"
        ));
    }
    if manifest.capabilities.http.is_empty()
        && let Some(h) = iface.imports.iter().find(|i| package(i) == "wasi:http")
    {
        return Err(format!(
            "it imports {h} but step.toml declares no hosts: add `[capabilities] http = [\"host\"]` for the hosts it may reach"
        ));
    }
    Ok(iface)
}
