//! The step author's loop: `sentinel step new NAME` scaffolds a crate on
//! the steps SDK, `sentinel step build` compiles it for `wasm32-wasip2`
//! (release), checks the component against its manifest and leaves
//! `step.wasm` beside `step.toml`; `sentinel step test` runs the cases of
//! `tests/cases.toml` through the real runtime — each case a one-stage
//! pipeline run by this binary — so a step crate never links wasmtime.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use serde::Deserialize;

/// Where the steps SDK is: `--sdk`, `SENTINEL_STEP_SDK`, or a `steps-sdk`
/// folder above this binary (a source checkout).
fn sdk_path(flag: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = flag.or_else(|| std::env::var_os("SENTINEL_STEP_SDK").map(PathBuf::from)) {
        return Ok(std::path::absolute(p)?);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            exe.ancestors()
                .map(|a| a.join("steps-sdk"))
                .find(|p| p.join("Cargo.toml").is_file())
        })
        .ok_or_else(|| {
            anyhow::anyhow!(
                "the steps SDK (steps-sdk) was not found: give --sdk PATH or set SENTINEL_STEP_SDK"
            )
        })
}

/// `sentinel step new NAME`.
pub fn new(name: &str, dir: Option<PathBuf>, sdk: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let manifest = format!("name = \"{name}\"\nversion = \"0.1.0\"\n");
    sentinel_pipeline::StepManifest::parse(&manifest, "step.toml")
        .map_err(|e| anyhow::anyhow!("`{name}` cannot be a step's name: {}", e.message))?;
    let dir = dir.unwrap_or_else(|| PathBuf::from(name));
    if dir.exists() && std::fs::read_dir(&dir)?.next().is_some() {
        anyhow::bail!("{} exists and is not empty", dir.display());
    }
    let sdk = sdk_path(sdk)?;
    let env = sentinel_pipeline::step::setting_env_name(name, "who");
    let files: [(&str, String); 6] = [
        (
            "Cargo.toml",
            format!(
                "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\npublish = false\n\n\
                 [dependencies]\nsentinel-step = {{ path = {:?} }}\nserde = {{ version = \"1\", features = [\"derive\"] }}\n\n\
                 [profile.release]\nopt-level = \"s\"\nstrip = true\n\n\
                 # A crate of its own, never a member of an enclosing workspace.\n[workspace]\n",
                sdk.display().to_string()
            ),
        ),
        (
            "src/main.rs",
            format!(
                "//! The `{name}` step: greets someone, and says how long the greeting is.\n\n\
                 use sentinel_step::{{fail, run}};\nuse serde::Deserialize;\n\n\
                 #[derive(Deserialize)]\nstruct Settings {{\n    /// `{env}`\n    who: String,\n}}\n\n\
                 fn main() {{\n    run(|step| {{\n        let s: Settings = step.settings()?;\n        \
                 if s.who.trim().is_empty() {{\n            return Err(fail(\"`who` is empty\"));\n        }}\n        \
                 let greeting = format!(\"Hello, {{}}!\", s.who);\n        \
                 step.set_output(\"length\", &greeting.len().to_string())?;\n        \
                 println!(\"{{greeting}}\");\n        Ok(())\n    }})\n}}\n"
            ),
        ),
        (
            "step.toml",
            format!(
                "{manifest}description = \"Greets someone\"\n\n\
                 [settings.who]\nrequired = true\ndescription = \"Who to greet\"\n\n\
                 # What the step may touch: nothing unless declared here.\n\
                 [capabilities]\nworkspace = \"none\"\nhttp = []\n"
            ),
        ),
        (
            "tests/cases.toml",
            "# `sentinel step test` runs each case as a one-stage pipeline through the\n\
             # real runtime: `with` are the settings, `files` the workspace's files.\n\n\
             [[case]]\nname = \"greets\"\nwith = { who = \"world\" }\nstatus = \"succeeded\"\n\
             output = \"Hello, world!\"\noutputs = { length = \"13\" }\n\n\
             [[case]]\nname = \"refuses an empty name\"\nwith = { who = \" \" }\nstatus = \"failed\"\nlog = [\"`who` is empty\"]\n"
                .to_string(),
        ),
        (".gitignore", "/target\n/step.wasm\n".to_string()),
        (
            "README.md",
            format!(
                "# {name}\n\nA Sentinel step.\n\n```sh\nsentinel step build      # step.wasm, checked against step.toml\n\
                 sentinel step test       # tests/cases.toml through the real runtime\n\
                 sentinel step publish --to REGISTRY\n```\n"
            ),
        ),
    ];
    for (path, text) in files {
        let p = dir.join(path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&p, text)?;
    }
    println!("created the step `{name}` in {}", dir.display());
    println!(
        "next: cd {} && sentinel step build && sentinel step test",
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Deserialize)]
struct CargoToml {
    package: CargoPackage,
}
#[derive(Deserialize)]
struct CargoPackage {
    name: String,
}

/// `sentinel step build`: the component, checked, as `DIR/step.wasm`.
pub fn build(dir: &Path) -> anyhow::Result<PathBuf> {
    let cargo_toml = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&cargo_toml)
        .map_err(|e| anyhow::anyhow!("{}: {e} (is this a step's crate?)", cargo_toml.display()))?;
    let package = toml::from_str::<CargoToml>(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", cargo_toml.display()))?
        .package
        .name;
    let step_toml = dir.join("step.toml");
    let manifest = sentinel_pipeline::StepManifest::parse(
        &std::fs::read_to_string(&step_toml)
            .map_err(|e| anyhow::anyhow!("{}: {e}", step_toml.display()))?,
        &step_toml.display().to_string(),
    )?;
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l == "wasm32-wasip2")
        })
        .unwrap_or(true);
    if !installed {
        anyhow::bail!("the wasm32-wasip2 target is not installed: rustup target add wasm32-wasip2");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.join("target"));
    let status = Command::new("cargo")
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--manifest-path",
        ])
        .arg(&cargo_toml)
        .env("CARGO_TARGET_DIR", &target)
        .status()?;
    if !status.success() {
        anyhow::bail!("cargo build failed ({status})");
    }
    let built = target
        .join("wasm32-wasip2/release")
        .join(format!("{package}.wasm"));
    let bytes = std::fs::read(&built).map_err(|e| anyhow::anyhow!("{}: {e}", built.display()))?;
    let iface = sentinel_wasm::inspect::check_step(&bytes, &manifest)
        .map_err(|e| anyhow::anyhow!("{} is not a usable step: {e}", built.display()))?;
    let out = dir.join("step.wasm");
    std::fs::write(&out, &bytes)?;
    println!(
        "built {} {}: {} ({} bytes, {})",
        manifest.name,
        manifest.version,
        out.display(),
        bytes.len(),
        sentinel_registry::package::sha256(&bytes)
    );
    println!("  imports: {}", iface.imports.join(", "));
    Ok(out)
}

/// One case of `tests/cases.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    #[serde(default)]
    with: BTreeMap<String, String>,
    /// Workspace files: path → text.
    #[serde(default)]
    files: BTreeMap<String, String>,
    /// `succeeded` (default) or `failed`.
    #[serde(default = "succeeded")]
    status: String,
    /// The step's output (stdout), trimmed.
    #[serde(default)]
    output: Option<String>,
    #[serde(default)]
    outputs: BTreeMap<String, String>,
    /// Texts its log must hold.
    #[serde(default)]
    log: Vec<String>,
}

fn succeeded() -> String {
    "succeeded".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Cases {
    #[serde(default)]
    case: Vec<Case>,
}

/// `sentinel step test`: builds, then runs every case.
pub fn test(dir: &Path) -> anyhow::Result<ExitCode> {
    let wasm = std::path::absolute(build(dir)?)?;
    let file = dir.join("tests/cases.toml");
    let text =
        std::fs::read_to_string(&file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let cases: Cases =
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    if cases.case.is_empty() {
        anyhow::bail!("{} has no [[case]]", file.display());
    }
    let exe = std::env::current_exe()?;
    let mut failed = 0;
    for case in &cases.case {
        match run_case(&exe, &wasm, case) {
            Ok(()) => println!("ok      {}", case.name),
            Err(why) => {
                failed += 1;
                println!("FAILED  {}: {why}", case.name);
            }
        }
    }
    println!("{} passed, {failed} failed", cases.case.len() - failed);
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn run_case(exe: &Path, wasm: &Path, case: &Case) -> Result<(), String> {
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let project = tmp.path();
    for (path, text) in &case.files {
        let p = project.join(path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
        }
        std::fs::write(&p, text).map_err(|e| e.to_string())?;
    }
    let with: serde_json::Map<String, serde_json::Value> = case
        .with
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    // JSON is YAML: the settings written exactly, whatever they hold.
    let pipeline = format!(
        "version: 1\nstages:\n  case:\n    step: {}\n    with: {}\n",
        serde_json::to_string(&wasm.display().to_string()).unwrap_or_default(),
        serde_json::Value::Object(with)
    );
    std::fs::write(project.join("sentinel.yml"), pipeline).map_err(|e| e.to_string())?;
    let out = Command::new(exe)
        .args(["run", "--json", "-C"])
        .arg(project)
        .env_remove("SENTINEL_STATE")
        .env_remove("SENTINEL_RESULTS")
        .env_remove("SENTINEL_S3")
        .output()
        .map_err(|e| e.to_string())?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The one run's folder of results.
    let run = std::fs::read_dir(project.join(".sentinel/results/run"))
        .ok()
        .and_then(|mut d| d.next())
        .and_then(|e| e.ok())
        .map(|e| e.path());
    let doc = run
        .as_ref()
        .and_then(|r| std::fs::read(r.join("case.json")).ok())
        .ok_or_else(|| format!("the run made no stage document: {}", stderr.trim()))?;
    let doc: serde_json::Value = serde_json::from_slice(&doc).map_err(|e| e.to_string())?;
    let status = doc["status"].as_str().unwrap_or_default();
    let log = run
        .and_then(|r| std::fs::read_to_string(r.join("case.log")).ok())
        .unwrap_or_default();
    if status != case.status {
        return Err(format!(
            "status {status}, expected {}; its log:\n{}",
            case.status,
            log.trim_end()
        ));
    }
    if let Some(want) = &case.output {
        let have = doc["output"].as_str().unwrap_or_default().trim();
        if have != want.trim() {
            return Err(format!("output {have:?}, expected {want:?}"));
        }
    }
    for (k, want) in &case.outputs {
        let have = doc["outputs"][k].as_str();
        if have != Some(want.as_str()) {
            return Err(format!("output `{k}` is {have:?}, expected {want:?}"));
        }
    }
    for text in &case.log {
        if !log.contains(text.as_str()) {
            return Err(format!(
                "its log does not hold {text:?}; it is:\n{}",
                log.trim_end()
            ));
        }
    }
    Ok(())
}
