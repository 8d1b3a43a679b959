//! Pipeline files: read a file of any dialect (`sentinel.yml` v1,
//! dockercise, …) with positions into a dialect-neutral [`draft::Draft`],
//! validate it purely, and resolve it into the [`Plan`] the engine runs.
//! [`convert`] prints any pipeline as a native `sentinel.yml`.
//!
//! Every error is a [`Diagnostic`] with the file, line and column, and a hint
//! ("did you mean …") where one helps.

pub mod cache;
pub mod convert;
pub mod de;
pub mod dialect;
pub mod draft;
pub mod placement;
pub mod plan;
pub mod raw;
pub mod retry;
pub mod script_step;
pub mod step;
pub mod template;
pub mod validate;
pub mod yaml;

use std::fmt;
use std::path::{Path, PathBuf};

pub use cache::{CacheKey, CachePath, CachePlan, KeyPart};
pub use dialect::{Dialect, Select};
pub use plan::{
    Action, ContainerAction, EnvValue, JobAction, JobRun, JobStep, Limits, Network, Plan,
    Provenance, ServicePlan, Shell, StagePlan, StepAction, Volume, When, WorkspaceOptions,
};
pub use step::{
    DirCatalog, NoSteps, ResolvedStep, StepCatalog, StepError, StepManifest, WorkspaceAccess,
};
pub use template::{DeployField, Part, Ref, Template, TriggerField};

use yaml::{Caps, Pos};

/// One problem with a pipeline file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub pos: Pos,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.pos, self.message)?;
        if let Some(h) = &self.hint {
            write!(f, " ({h})")?;
        }
        Ok(())
    }
}

/// All the problems found in a pipeline file, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// Why a pipeline could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(#[from] Diagnostics),
}

/// Reads and validates the pipeline file at `path`. The pipeline's default
/// name is the name of the folder holding it.
pub fn load(path: &Path) -> Result<Plan, LoadError> {
    load_with(path, &NoSteps)
}

/// Reads and validates the pipeline file at `path`, resolving steps with
/// `catalog`. Its dialect is the one its name says, else its content's.
pub fn load_with(path: &Path, catalog: &dyn StepCatalog) -> Result<Plan, LoadError> {
    load_selected(path, catalog, &Select::default())
}

/// Like [`load_with`], choosing the pipeline (and deploy target) of a file
/// that holds several.
pub fn load_selected(
    path: &Path,
    catalog: &dyn StepCatalog,
    select: &Select,
) -> Result<Plan, LoadError> {
    read_draft(path, select)?.plan(catalog)
}

/// A pipeline file read into its draft (before its steps are resolved).
#[derive(Debug)]
pub struct ReadDraft {
    pub draft: draft::Draft,
    /// The file's name as errors show it.
    pub file: String,
    /// The default pipeline name: the project folder's name.
    pub folder: String,
    /// Relative step paths are relative to it.
    pub base: PathBuf,
}

impl ReadDraft {
    /// Resolves its steps with `catalog` and validates it into the plan.
    pub fn plan(&self, catalog: &dyn StepCatalog) -> Result<Plan, LoadError> {
        Ok(plan_draft(
            &self.draft,
            &self.file,
            &self.folder,
            catalog,
            &self.base,
        )?)
    }
}

/// Reads a file (of any dialect) into its draft, choosing the pipeline (and
/// deploy target) of a file that holds several.
pub fn read_draft(path: &Path, select: &Select) -> Result<ReadDraft, LoadError> {
    let (src, file) = read_file(path)?;
    let folder = path
        .canonicalize()
        .ok()
        .and_then(|p| {
            p.parent()
                .and_then(|d| d.file_name())
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "pipeline".to_string());
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let dialect = Dialect::from_file_name(path);
    let draft = dialect::read_selected(&src, &file, dialect, select)?;
    Ok(ReadDraft {
        draft,
        file,
        folder,
        base,
    })
}

/// Reads a pipeline file's text, refusing one larger than the cap.
pub fn read_file(path: &Path) -> Result<(String, String), LoadError> {
    let meta = std::fs::metadata(path).map_err(|source| LoadError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let caps = Caps::default();
    let file = path.display().to_string();
    if meta.len() > caps.max_bytes as u64 {
        return Err(dialect::one(
            &file,
            Pos { line: 1, col: 1 },
            format!(
                "the file is {} bytes; the limit is {} bytes",
                meta.len(),
                caps.max_bytes
            ),
            None,
        )
        .into());
    }
    let src = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: file.clone(),
        source,
    })?;
    Ok((src, file))
}

/// Parses and validates pipeline source text; `file` is used in messages.
pub fn parse_str(src: &str, file: &str, default_name: &str) -> Result<Plan, Diagnostics> {
    parse_str_with(src, file, default_name, &NoSteps, Path::new("."))
}

/// Like [`parse_str`], resolving `step:` references with `catalog`
/// (relative paths against `base`) before the pure validation.
pub fn parse_str_with(
    src: &str,
    file: &str,
    default_name: &str,
    catalog: &dyn StepCatalog,
    base: &Path,
) -> Result<Plan, Diagnostics> {
    parse_str_as(src, file, default_name, None, catalog, base)
}

/// Like [`parse_str_with`], in a given dialect (`None`: detected from the content).
pub fn parse_str_as(
    src: &str,
    file: &str,
    default_name: &str,
    dialect: Option<Dialect>,
    catalog: &dyn StepCatalog,
    base: &Path,
) -> Result<Plan, Diagnostics> {
    let draft = dialect::read(src, file, dialect)?;
    plan_draft(&draft, file, default_name, catalog, base)
}

/// Resolves a draft's steps and validates it into a plan.
pub fn plan_draft(
    draft: &draft::Draft,
    file: &str,
    default_name: &str,
    catalog: &dyn StepCatalog,
    base: &Path,
) -> Result<Plan, Diagnostics> {
    // Each distinct reference is resolved (read and hashed) once, however
    // many stages use it.
    let steps: step::StepAnswers = draft
        .step_refs()
        .into_iter()
        .map(|r| {
            let answer = catalog.resolve(&r, base);
            (r, answer)
        })
        .collect();
    // The names only serve "did you mean" hints of references that did not
    // resolve: a catalog may have to read its cache to list them.
    let names = if steps.values().any(Result::is_err) {
        catalog.names()
    } else {
        Vec::new()
    };
    validate::validate(draft, default_name, &steps, &names).map_err(|issues| {
        let mut ds: Vec<Diagnostic> = issues
            .into_iter()
            .map(|i| Diagnostic {
                file: file.to_string(),
                pos: i.pos,
                message: i.message,
                hint: i.hint,
            })
            .collect();
        ds.sort_by_key(|d| d.pos);
        Diagnostics(ds)
    })
}

/// The JSON Schema of the pipeline format, generated from the raw types.
pub fn json_schema() -> serde_json::Value {
    let schema = schemars::schema_for!(raw::RawPipeline);
    serde_json::to_value(schema).unwrap_or_default()
}
