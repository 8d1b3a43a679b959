//! Which pipeline file a command works on and how it is read: the file as
//! `-f FILE` or a positional argument, else the first usual name of any
//! dialect in the project folder (`sentinel.yml` first), said on stderr;
//! the project folder is `-C` when given, else the file's folder. Also
//! `sentinel convert`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use sentinel_pipeline::{Dialect, LoadError, Plan, Select};

use crate::Paths;
use crate::context;

/// The pipeline file of a command.
#[derive(Debug, Clone, Args)]
pub struct FileArgs {
    /// The pipeline file (any dialect). Default: the first of `sentinel.yml`,
    /// `dockercise.yml`, … found in the project folder.
    #[arg(value_name = "FILE")]
    file: Option<PathBuf>,
    /// The pipeline file, as a flag.
    #[arg(
        short = 'f',
        long = "file",
        value_name = "FILE",
        conflicts_with = "file"
    )]
    flag: Option<PathBuf>,
    /// The pipeline to run of a file that holds several (a wercker.yml's;
    /// default `build`).
    #[arg(long, value_name = "NAME")]
    pipeline: Option<String>,
    /// A deploy target of that pipeline (wercker's): its step list runs
    /// instead of the pipeline's `steps`.
    #[arg(long, value_name = "NAME")]
    deploy_target: Option<String>,
}

/// The chosen file and the project folder it belongs to.
#[derive(Debug, Clone)]
pub struct Chosen {
    pub file: PathBuf,
    pub project: PathBuf,
    /// True when no file was named and one was looked for.
    pub found: bool,
}

impl FileArgs {
    /// A named file, when one was given.
    pub fn named(&self) -> Option<&Path> {
        self.file.as_deref().or(self.flag.as_deref())
    }

    /// The pipeline and deploy target chosen.
    pub fn select(&self) -> Select {
        Select {
            pipeline: self.pipeline.clone(),
            deploy_target: self.deploy_target.clone(),
        }
    }

    /// The file and project folder; an error lists the names looked for.
    pub fn choose(&self, paths: &Paths) -> anyhow::Result<Chosen> {
        if let Some(file) = self.named() {
            let project = match &paths.dir {
                Some(d) => d.clone(),
                None => match file.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                    _ => PathBuf::from("."),
                },
            };
            return Ok(Chosen {
                file: file.to_path_buf(),
                project,
                found: false,
            });
        }
        let project = paths.dir.clone().unwrap_or_else(|| PathBuf::from("."));
        match sentinel_pipeline::dialect::find_pipeline(&project) {
            Some((file, _)) => Ok(Chosen {
                file,
                project,
                found: true,
            }),
            None => anyhow::bail!(
                "no pipeline file in {}: looked for {} (name one: `sentinel run FILE`)",
                project.display(),
                sentinel_pipeline::dialect::usual_names().join(", ")
            ),
        }
    }
}

/// Says which file a command uses, when it looked for one.
pub fn say_chosen(c: &Chosen) {
    if c.found {
        let dialect = Dialect::from_file_name(&c.file).unwrap_or(Dialect::Sentinel);
        eprintln!("using {} ({dialect})", c.file.display());
    }
}

/// Loads and validates a file with the user's step registries and the lock
/// file beside it (used as `mode` says, written or checked once the file is
/// valid), printing its diagnostics; `Err` holds the exit code. Steps are
/// pulled into the cache of `state`.
pub fn load(
    file: &Path,
    select: &Select,
    state: &Path,
    mode: sentinel_registry::LockMode,
) -> Result<Plan, ExitCode> {
    let mut catalog = match crate::steps::catalog::user(state).and_then(|c| {
        c.with_lock(sentinel_registry::Lock::path_for(file), mode)
            .map_err(anyhow::Error::msg)
    }) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Err(ExitCode::from(2));
        }
    };
    let plan = crate::steps::catalog::plan(file, select, &mut catalog).map_err(report)?;
    match catalog.finish() {
        Ok(Some(said)) => eprintln!("{said}"),
        Ok(None) => {}
        Err(e) => {
            eprintln!("error: {e}");
            return Err(ExitCode::from(2));
        }
    }
    Ok(plan)
}

fn report(e: LoadError) -> ExitCode {
    match e {
        LoadError::Invalid(d) => {
            for diag in &d.0 {
                eprintln!("error: {diag}");
            }
        }
        e => eprintln!("error: {e}"),
    }
    ExitCode::from(2)
}

/// `sentinel convert`: the file as a native `sentinel.yml` on stdout,
/// once it is valid.
pub fn convert(paths: &Paths, args: &FileArgs) -> anyhow::Result<ExitCode> {
    let chosen = args.choose(paths)?;
    say_chosen(&chosen);
    match converted(&chosen.file, &args.select()) {
        Ok(text) => {
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        Err(code) => Ok(code),
    }
}

/// `file` (of any dialect) as a native `sentinel.yml`, once it is valid;
/// the errors reported and the exit code otherwise.
pub fn converted(file: &Path, select: &Select) -> Result<String, ExitCode> {
    let (src, name) = sentinel_pipeline::read_file(file).map_err(report)?;
    let dialect = Dialect::from_file_name(file);
    let draft = sentinel_pipeline::dialect::read_selected(&src, &name, dialect, select)
        .map_err(|d| report(LoadError::Invalid(d)))?;
    let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
    // Steps of registries are looked up in the user's cache only: nothing
    // is pulled to convert a file.
    let catalog = sentinel_registry::Catalog::new(context::step_catalog(), {
        let project = base.canonicalize().unwrap_or_else(|_| base.clone());
        crate::steps::catalog::cache(&project.join(".sentinel"))
    });
    sentinel_pipeline::plan_draft(&draft, &name, "pipeline", &catalog, &base)
        .map_err(|d| report(LoadError::Invalid(d)))?;
    Ok(sentinel_pipeline::convert::to_native(&draft, &name))
}

/// `NAME=value` of a `-e` flag.
pub fn name_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !k.contains(char::is_whitespace) => {
            Ok((k.to_string(), v.to_string()))
        }
        _ => Err(format!("`{s}` is not NAME=value")),
    }
}
