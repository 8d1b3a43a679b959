//! Where the results come from. Detected at start: `?results=URL` wins;
//! else `config.json` beside the app says (`sentinel serve` answers it with
//! its `/results/` and `/api/v1`; `sentinel web publish` writes a static
//! one); else the results are relative to the app (it sits in the bucket
//! next to `runs/` and `run/`).

use serde::Deserialize;

use crate::fetch::{self, FetchError};

/// Static files (a snapshot) or the server (live).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Static,
    Live,
}

/// The results source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub mode: Mode,
    /// The results layout's base URL, absolute, ending in `/`.
    pub results: String,
    /// The API's base URL (live mode), absolute, without a trailing `/`.
    pub api: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Config {
    mode: Mode,
    #[serde(default)]
    results: Option<String>,
    #[serde(default)]
    api: Option<String>,
}

/// `rel` made absolute against the page's address.
pub fn absolute(rel: &str) -> String {
    let base = web_sys::window()
        .and_then(|w| w.document())
        .and_then(|d| d.base_uri().ok().flatten())
        .unwrap_or_default();
    web_sys::Url::new_with_base(rel, &base)
        .map(|u| u.href())
        .unwrap_or_else(|_| rel.to_string())
}

fn with_slash(mut s: String) -> String {
    if !s.ends_with('/') {
        s.push('/');
    }
    s
}

fn query(name: &str) -> Option<String> {
    let search = web_sys::window()?.location().search().ok()?;
    web_sys::UrlSearchParams::new_with_str(&search)
        .ok()?
        .get(name)
        .filter(|v| !v.is_empty())
}

impl Source {
    /// Detects the source (see the module's notes).
    pub async fn detect() -> Result<Source, FetchError> {
        let forced = query("results").map(|r| with_slash(absolute(&r)));
        let config = match fetch::json_opt::<Config>(&absolute("config.json")).await? {
            Some(c) => c,
            None => Config {
                mode: Mode::Static,
                results: None,
                api: None,
            },
        };
        let results = forced
            .or(config.results.map(|r| with_slash(absolute(&r))))
            .unwrap_or_else(|| with_slash(absolute("./")));
        let api = match config.mode {
            Mode::Live => Some(
                absolute(config.api.as_deref().unwrap_or("/api/v1"))
                    .trim_end_matches('/')
                    .to_string(),
            ),
            Mode::Static => None,
        };
        Ok(Source {
            mode: config.mode,
            results,
            api,
        })
    }

    /// The URL of a key of the results layout.
    pub fn url(&self, key: &str) -> String {
        format!("{}{key}", self.results)
    }
}
