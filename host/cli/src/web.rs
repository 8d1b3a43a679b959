//! `sentinel web publish`: puts the built results app (`dist/`, from
//! `scripts/build-web.sh`) next to the results — into an S3 bucket prefix
//! (its website endpoint then serves app and results together) or a local
//! results folder (any static host) — with the right content types and a
//! `config.json` saying the results sit beside it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;

use crate::Paths;
use crate::context::Dirs;
use crate::run::S3Args;

#[derive(Debug, Subcommand)]
pub enum WebCommand {
    /// Publish the app into the results bucket (--s3) or results folder.
    Publish {
        /// The built app.
        #[arg(long, default_value = "dist")]
        dist: PathBuf,
        #[command(flatten)]
        s3: S3Args,
    },
}

/// The content type of an app file.
pub fn content_type(path: &Path) -> &'static str {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default()
    {
        "html" => "text/html; charset=utf-8",
        "js" => "text/javascript; charset=utf-8",
        "wasm" => "application/wasm",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// The app's files, relative paths and all.
fn files(dist: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    if !dist.join("index.html").is_file() {
        anyhow::bail!(
            "{} holds no built app (index.html): run scripts/build-web.sh",
            dist.display()
        );
    }
    let mut out = Vec::new();
    for e in walkdir::WalkDir::new(dist) {
        let e = e?;
        if e.file_type().is_file() {
            let rel = e
                .path()
                .strip_prefix(dist)?
                .to_string_lossy()
                .replace('\\', "/");
            out.push((rel, e.path().to_path_buf()));
        }
    }
    Ok(out)
}

/// What a static copy of the app reads: the results beside it.
pub const STATIC_CONFIG: &str = "{\"mode\": \"static\", \"results\": \"./\"}\n";

/// `sentinel web …`.
pub async fn web(paths: &Paths, cmd: WebCommand) -> anyhow::Result<ExitCode> {
    let WebCommand::Publish { dist, s3 } = cmd;
    let files = files(&dist)?;
    let tmp = tempfile::tempdir()?;
    let config = tmp.path().join("config.json");
    std::fs::write(&config, STATIC_CONFIG)?;
    match s3.config()? {
        Some(cfg) => {
            let location = format!("s3://{}/{}", cfg.bucket, cfg.prefix);
            let sink = sentinel_s3::S3Sink::connect(cfg).await;
            for (key, path) in files
                .iter()
                .chain([&("config.json".to_string(), config.clone())])
            {
                sink.put_object(key, path, content_type(path))
                    .await
                    .with_context(|| format!("uploading {key}"))?;
            }
            eprintln!(
                "published the app ({} files) to {location}",
                files.len() + 1
            );
        }
        None => {
            let dirs = Dirs::new(paths)?;
            for (rel, path) in files
                .iter()
                .chain([&("config.json".to_string(), config.clone())])
            {
                let to = dirs.results.join(rel);
                if let Some(parent) = to.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::copy(path, &to).with_context(|| format!("copying {rel}"))?;
            }
            eprintln!(
                "published the app into {} (open index.html through any static web server)",
                dirs.results.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
