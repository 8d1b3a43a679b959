//! Pipeline dialects: which file formats Sentinel reads, how a file's
//! dialect is detected (its name, else its content), the usual file names
//! looked for when none is given, and the reader of each dialect, which
//! turns the file into a [`Draft`] with positions in that file.

mod cion;
mod dockercise;
mod v1;
mod wercker;

pub use wercker::Select;

use std::path::Path;

use crate::draft::Draft;
use crate::yaml::{self, Caps, Node, Pos, Value};
use crate::{Diagnostic, Diagnostics};

/// A pipeline file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dialect {
    /// `sentinel.yml`, version 1: Sentinel's own.
    Sentinel,
    /// dockercise: a top-level map of stages with `img`, `run`, `after`,
    /// `env` and `vol`.
    Dockercise,
    /// `wercker.yml`: a `box`, `services` and pipelines of steps.
    Wercker,
    /// cion's `.cion.yml`: a `build` image and a `release` image.
    Cion,
}

/// Every dialect, in the order their usual file names are looked for.
pub const DIALECTS: &[Dialect] = &[
    Dialect::Sentinel,
    Dialect::Dockercise,
    Dialect::Wercker,
    Dialect::Cion,
];

impl Dialect {
    /// The dialect's name in messages and flags.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sentinel => "sentinel",
            Self::Dockercise => "dockercise",
            Self::Wercker => "wercker",
            Self::Cion => "cion",
        }
    }

    /// Parses a dialect's name (`--dialect`).
    pub fn from_name(name: &str) -> Option<Self> {
        DIALECTS.iter().copied().find(|d| d.name() == name)
    }

    /// The file names this dialect's users give their pipeline, most usual first.
    pub fn file_names(self) -> &'static [&'static str] {
        match self {
            Self::Sentinel => &["sentinel.yml", "sentinel.yaml", ".sentinel.yml"],
            Self::Dockercise => &[
                "dockercise.yml",
                ".dockercise.yml",
                "dockercise.yaml",
                ".dockercise.yaml",
            ],
            Self::Wercker => &[
                "wercker.yml",
                ".wercker.yml",
                "wercker.yaml",
                ".wercker.yaml",
            ],
            Self::Cion => &[".cion.yml", ".cion.yaml", "cion.yml"],
        }
    }

    /// The dialect a file's name says, if it says one.
    pub fn from_file_name(path: &Path) -> Option<Self> {
        let name = path.file_name()?.to_str()?;
        if let Some(d) = DIALECTS
            .iter()
            .copied()
            .find(|d| d.file_names().contains(&name))
        {
            return Some(d);
        }
        // dockercise also found `*.dockercise.yaml` and (as graphci) `*.graphci.yaml`.
        [
            ".dockercise.yml",
            ".dockercise.yaml",
            ".graphci.yml",
            ".graphci.yaml",
        ]
        .iter()
        .any(|s| name.ends_with(s))
        .then_some(Self::Dockercise)
    }

    /// The dialect of a parsed document, from its content: a `version` key
    /// means Sentinel's; a top-level map holding a stage map with `img` or
    /// `run` means dockercise; one holding a pipeline with `steps` means
    /// wercker's. `None` when it looks like none of them.
    pub fn from_content(root: &Node) -> Option<Self> {
        let Value::Map(entries) = &root.value else {
            return None;
        };
        if root.get("version").is_some() || root.get("stages").is_some() {
            return Some(Self::Sentinel);
        }
        if cion::looks_like(root) {
            return Some(Self::Cion);
        }
        let stage_like = |n: &Node| n.get("img").is_some() || n.get("run").is_some();
        if entries.iter().any(|(_, v)| stage_like(v)) {
            return Some(Self::Dockercise);
        }
        entries
            .iter()
            .any(|(_, v)| v.get("steps").is_some())
            .then_some(Self::Wercker)
    }
}

impl std::fmt::Display for Dialect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The pipeline file of a project folder when none is named: the first of
/// every dialect's usual names that exists, Sentinel's first.
pub fn find_pipeline(dir: &Path) -> Option<(std::path::PathBuf, Dialect)> {
    DIALECTS.iter().find_map(|d| {
        d.file_names()
            .iter()
            .map(|n| dir.join(n))
            .find(|p| p.is_file())
            .map(|p| (p, *d))
    })
}

/// Every name [`find_pipeline`] looks for, in order (for its error message).
pub fn usual_names() -> Vec<&'static str> {
    DIALECTS
        .iter()
        .flat_map(|d| d.file_names())
        .copied()
        .collect()
}

/// Reads `src` into a draft. The dialect is `dialect` when given, else the
/// one the file's content says (Sentinel's when it says nothing).
pub fn read(src: &str, file: &str, dialect: Option<Dialect>) -> Result<Draft, Diagnostics> {
    read_selected(src, file, dialect, &Select::default())
}

/// Like [`read`], choosing the pipeline (and deploy target) of a file that
/// holds several (wercker's); a dialect of one pipeline refuses a choice.
pub fn read_selected(
    src: &str,
    file: &str,
    dialect: Option<Dialect>,
    select: &Select,
) -> Result<Draft, Diagnostics> {
    let root = yaml::parse(src, Caps::default()).map_err(|e| one(file, e.pos, e.message, None))?;
    let dialect = dialect
        .or_else(|| Dialect::from_content(&root))
        .unwrap_or(Dialect::Sentinel);
    if dialect != Dialect::Wercker && *select != Select::default() {
        return Err(one(
            file,
            root.pos,
            format!(
                "a {dialect} file holds one pipeline: there is no pipeline or deploy target to choose"
            ),
            None,
        ));
    }
    match dialect {
        Dialect::Sentinel => v1::read(root, file),
        Dialect::Dockercise => dockercise::read(root, file),
        Dialect::Wercker => wercker::read(root, file, select),
        Dialect::Cion => cion::read(root, file),
    }
}

/// One diagnostic.
pub(crate) fn one(file: &str, pos: Pos, message: String, hint: Option<String>) -> Diagnostics {
    Diagnostics(vec![Diagnostic {
        file: file.to_string(),
        pos,
        message,
        hint,
    }])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection() {
        for (name, want) in [
            ("sentinel.yml", Some(Dialect::Sentinel)),
            ("ci/dockercise.yml", Some(Dialect::Dockercise)),
            (".dockercise.yml", Some(Dialect::Dockercise)),
            ("test.dockercise.yaml", Some(Dialect::Dockercise)),
            ("deploy.graphci.yaml", Some(Dialect::Dockercise)),
            ("wercker.yml", Some(Dialect::Wercker)),
            (".wercker.yml", Some(Dialect::Wercker)),
            ("ci.yml", None),
        ] {
            assert_eq!(Dialect::from_file_name(Path::new(name)), want, "{name}");
        }
        let doc = |s: &str| yaml::parse(s, Caps::default()).unwrap();
        assert_eq!(
            Dialect::from_content(&doc("version: 1\nstages: {}\n")),
            Some(Dialect::Sentinel)
        );
        assert_eq!(
            Dialect::from_content(&doc("a:\n  img: x\n  run: y\nb:\n  run: z\n")),
            Some(Dialect::Dockercise)
        );
        assert_eq!(
            Dialect::from_content(&doc("box: alpine\nbuild:\n  steps: [x]\n")),
            Some(Dialect::Wercker)
        );
        assert_eq!(Dialect::from_content(&doc("a: 1\n")), None);
    }
}
