//! The Sentinel step SDK: typed settings from the namespaced environment,
//! outputs, the workspace, and logging — for steps that are WASI 0.2
//! command components (`cargo build --target wasm32-wasip2`).
//!
//! ```no_run
//! use serde::Deserialize;
//!
//! #[derive(Deserialize)]
//! struct Settings {
//!     greeting: String,
//!     #[serde(default)]
//!     loud: bool,
//! }
//!
//! fn main() {
//!     sentinel_step::run(|step| {
//!         let s: Settings = step.settings()?;
//!         let text = if s.loud { s.greeting.to_uppercase() } else { s.greeting };
//!         step.set_output("greeting", &text)?;
//!         println!("{text}");
//!         Ok(())
//!     })
//! }
//! ```

mod settings;

use std::fmt;
use std::io::Write;
use std::path::PathBuf;

pub use settings::SettingsError;

/// Where the run's workspace is, when the manifest grants it.
pub const WORKSPACE: &str = "/workspace";

/// A step's failure: printed to stderr, and the step exits with code 1.
#[derive(Debug)]
pub struct Error(String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<E: std::error::Error> From<E> for Error {
    fn from(e: E) -> Self {
        Self(e.to_string())
    }
}

/// Builds an [`Error`] from a message.
pub fn fail(message: impl Into<String>) -> Error {
    Error(message.into())
}

/// The error of a step that does not follow redirects (the sandbox would
/// refuse another host or port anyway): who answered what, and where it
/// pointed (`location`, the answer's `Location` header).
pub fn redirect_refused(who: &str, status: impl fmt::Display, location: Option<&str>) -> Error {
    fail(format!(
        "{who} answered {status} to {}; redirects are not followed",
        location.unwrap_or("?")
    ))
}

/// The running step: its name and context.
#[derive(Debug, Clone)]
pub struct Step {
    name: String,
}

impl Step {
    /// The step as started by Sentinel (its name is the program's first argument).
    pub fn current() -> Self {
        let name = std::env::args().next().unwrap_or_default();
        Self { name }
    }

    /// The step's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Typed settings from `SENTINEL_<STEP>_<KEY>`; a missing setting names itself.
    pub fn settings<T: serde::de::DeserializeOwned>(&self) -> Result<T, SettingsError> {
        settings::from_env(&self.name, std::env::vars())
    }

    /// A context variable: `context("RUN_ID")` reads `SENTINEL_RUN_ID`.
    pub fn context(&self, key: &str) -> Option<String> {
        std::env::var(format!("SENTINEL_{key}")).ok()
    }

    /// Sets a named output (`${stages.X.outputs.KEY}`).
    pub fn set_output(&self, key: &str, value: &str) -> Result<(), Error> {
        let path =
            std::env::var("SENTINEL_OUTPUT").map_err(|_| fail("SENTINEL_OUTPUT is not set"))?;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)?;
        if value.contains('\n') {
            let delim = "SENTINEL_EOF_7f3a";
            writeln!(f, "{key}<<{delim}\n{value}\n{delim}")?;
        } else {
            writeln!(f, "{key}={value}")?;
        }
        Ok(())
    }

    /// A path inside the workspace (relative paths only; `..` is refused by the sandbox).
    pub fn workspace_path(&self, relative: &str) -> PathBuf {
        PathBuf::from(WORKSPACE).join(relative.trim_start_matches('/'))
    }

    /// The folder whose files become the stage's artifacts.
    pub fn artifacts_dir(&self) -> PathBuf {
        PathBuf::from(
            self.context("ARTIFACTS")
                .unwrap_or_else(|| "/sentinel/artifacts".into()),
        )
    }

    /// Logs a line to the stage log (stderr).
    pub fn log(&self, message: impl fmt::Display) {
        eprintln!("{message}");
    }
}

/// Runs a step body; an error is printed and the step exits with code 1.
pub fn run(body: impl FnOnce(&Step) -> Result<(), Error>) {
    let step = Step::current();
    if let Err(e) = body(&step) {
        eprintln!("{}: {e}", step.name());
        std::process::exit(1);
    }
}
