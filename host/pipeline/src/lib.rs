//! `sentinel.yml`: parse (YAML with positions) → detect the version →
//! deserialise the raw schema → validate purely → the resolved [`Plan`].
//!
//! Every error is a [`Diagnostic`] with the file, line and column, and a hint
//! ("did you mean …") where one helps.

pub mod de;
pub mod plan;
pub mod raw;
pub mod step;
pub mod template;
pub mod validate;
pub mod yaml;

use std::fmt;
use std::path::Path;

pub use plan::{Action, EnvValue, Limits, Network, Plan, ServicePlan, StagePlan, When};
pub use step::{DirCatalog, NoSteps, ResolvedStep, StepCatalog, StepManifest, WorkspaceAccess};
pub use template::{Part, Ref, Template};

use yaml::{Caps, Pos, Value};

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

/// Reads and validates the pipeline file at `path`, resolving steps with `catalog`.
pub fn load_with(path: &Path, catalog: &dyn StepCatalog) -> Result<Plan, LoadError> {
    let meta = std::fs::metadata(path).map_err(|source| LoadError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let caps = Caps::default();
    let file = path.display().to_string();
    if meta.len() > caps.max_bytes as u64 {
        return Err(Diagnostics(vec![Diagnostic {
            file,
            pos: Pos { line: 1, col: 1 },
            message: format!(
                "the file is {} bytes; the limit is {} bytes",
                meta.len(),
                caps.max_bytes
            ),
            hint: None,
        }])
        .into());
    }
    let src = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: file.clone(),
        source,
    })?;
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
    Ok(parse_str_with(&src, &file, &folder, catalog, &base)?)
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
    let diag = |pos: Pos, message: String, hint: Option<String>| Diagnostic {
        file: file.to_string(),
        pos,
        message,
        hint,
    };
    let root = yaml::parse(src, Caps::default())
        .map_err(|e| Diagnostics(vec![diag(e.pos, e.message, None)]))?;

    // Detect the version before reading anything else.
    match (&root.value, root.get("version")) {
        (Value::Map(_), Some(v)) => match &v.value {
            Value::Scalar(s, _) if s == "1" => {}
            Value::Scalar(s, _) => {
                return Err(Diagnostics(vec![diag(
                    v.pos,
                    format!("unsupported version `{s}`; this Sentinel reads version 1"),
                    None,
                )]));
            }
            _ => {
                return Err(Diagnostics(vec![diag(
                    v.pos,
                    "`version` must be a number".into(),
                    None,
                )]));
            }
        },
        (Value::Map(_), None) => {
            return Err(Diagnostics(vec![diag(
                root.pos,
                "missing `version`".into(),
                Some("start the file with `version: 1`".into()),
            )]));
        }
        _ => {
            return Err(Diagnostics(vec![diag(
                root.pos,
                format!("a pipeline file is a mapping, found {}", root.kind()),
                None,
            )]));
        }
    }

    // Top-level `x-…` keys are free-form extensions (a place for anchors).
    let mut root = root;
    if let Value::Map(entries) = &mut root.value {
        entries.retain(|(k, _)| !matches!(&k.value, Value::Scalar(s, _) if s.starts_with("x-")));
    }
    let raw: raw::RawPipeline = de::from_node(&root)
        .map_err(|e| Diagnostics(vec![diag(e.pos.unwrap_or(root.pos), e.message, e.hint)]))?;
    // Each distinct reference is resolved (read and hashed) once, however
    // many stages use it.
    let refs: std::collections::BTreeSet<String> =
        raw.stages.values().filter_map(|s| s.step.clone()).collect();
    let steps: step::StepAnswers = refs
        .into_iter()
        .map(|r| {
            let answer = catalog.resolve(&r, base);
            (r, answer)
        })
        .collect();
    let names = catalog.names();
    validate::validate(&raw, default_name, &steps, &names).map_err(|issues| {
        let mut ds: Vec<Diagnostic> = issues
            .into_iter()
            .map(|i| diag(root.locate(&i.path), i.message, i.hint))
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
