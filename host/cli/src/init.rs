//! `sentinel init` (a commented starter `sentinel.yml`, or the project's
//! file of another dialect converted) and `sentinel completions SHELL`.

use std::process::ExitCode;

use clap::CommandFactory;

use crate::Paths;

/// The starter pipeline `sentinel init` writes when the project has none.
const STARTER: &str = r#"# sentinel.yml — this project's pipeline (the format: docs/pipeline-format.md
# in Sentinel's repository; `sentinel schema` prints its JSON Schema).
version: 1

# The image of container stages that name none.
box: alpine:3.20

# Variables every stage gets. `NAME: ~` takes NAME from the environment
# `sentinel run` runs in (or `sentinel run -e NAME=value`).
env:
  GREETING: hello

# Names of secrets; values come from `--secrets-file` or the environment,
# never from this file. A stage sees one only through `${secrets.NAME}`.
# secrets: [DEPLOY_TOKEN]

stages:
  build:
    # A script, run by `sh -e` in the workspace (a copy of this folder).
    run: |
      echo "$GREETING from run $SENTINEL_RUN_ID"
      echo "version=1.0.0" >> "$SENTINEL_OUTPUT"   # a named output

  test:
    after: [build]
    env:
      VERSION: ${stages.build.outputs.version}
    run: echo "testing $VERSION"

  # A WebAssembly step, sandboxed, configured by its settings:
  # notify:
  #   after: [test]
  #   step: notify@1
  #   with: {url: "https://hooks.example.com/ci", message: "tests passed"}
"#;

/// `sentinel init`: writes `sentinel.yml` in the project folder.
pub fn init(paths: &Paths, force: bool) -> anyhow::Result<ExitCode> {
    let dir = paths.dir.clone().unwrap_or_else(|| ".".into());
    let target = dir.join("sentinel.yml");
    if target.exists() && !force {
        anyhow::bail!("{} exists already (--force replaces it)", target.display());
    }
    let text = match sentinel_pipeline::dialect::find_pipeline(&dir) {
        Some((file, dialect)) if dialect != sentinel_pipeline::Dialect::Sentinel => {
            eprintln!(
                "converting {} ({dialect}) into sentinel.yml",
                file.display()
            );
            match crate::pipeline::converted(&file, &sentinel_pipeline::Select::default()) {
                Ok(text) => text,
                Err(code) => return Ok(code),
            }
        }
        _ => STARTER.to_string(),
    };
    std::fs::write(&target, text)?;
    println!("wrote {}; run it with `sentinel run`", target.display());
    Ok(ExitCode::SUCCESS)
}

/// `sentinel completions SHELL`: the shell's completion script on stdout.
pub fn completions(shell: clap_complete::Shell) -> anyhow::Result<ExitCode> {
    let mut cmd = crate::Cli::command();
    clap_complete::generate(shell, &mut cmd, "sentinel", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}
