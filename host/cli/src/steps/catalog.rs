//! The step catalog the commands use: the local step folders (bundled,
//! `SENTINEL_STEPS_PATH`), the step registries of the user's or the
//! server's configuration and of the pipeline, the content-addressed cache in the state folder
//! (`<state>/steps`), and the lock file beside the pipeline.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use sentinel_pipeline::{Diagnostic, Diagnostics, LoadError};
use sentinel_registry::{Auth, Cache, Catalog, Folder, Layout, Named, Oci, Registry, Trust};

use crate::registries::{RegistryConfig, StepAddress, StepsSection, step_address};

/// The step cache of a state folder.
pub fn cache(state: &Path) -> Cache {
    Cache::new(state.join("steps"))
}

/// How a registry entry signs in to an OCI registry.
fn auth_of(
    name: &str,
    r: &RegistryConfig,
    secret: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<Auth> {
    let var = |v: &str| {
        std::env::var(v).map_err(|_| {
            anyhow::anyhow!(
                "registry `{name}`: the variable `{v}` holding its credentials is not set"
            )
        })
    };
    let stored = |s: &str| {
        secret(s).ok_or_else(|| {
            anyhow::anyhow!("registry `{name}`: secret `{s}` is not set on this server (sentinel secret set {s})")
        })
    };
    if let Some(v) = &r.token_env {
        return Ok(Auth::Bearer(var(v)?));
    }
    if let Some(s) = &r.token_secret {
        return Ok(Auth::Bearer(stored(s)?));
    }
    let password = match (&r.password_env, &r.password_secret) {
        (Some(v), _) => var(v)?,
        (None, Some(s)) => stored(s)?,
        (None, None) => return Ok(Auth::Anonymous),
    };
    Ok(match &r.username {
        Some(u) => Auth::Basic(u.clone(), password),
        None => Auth::Anonymous,
    })
}

/// One registry of an address.
pub fn open(
    url: &str,
    r: Option<&RegistryConfig>,
    auth: Auth,
) -> anyhow::Result<Arc<dyn Registry>> {
    Ok(match step_address(url).map_err(anyhow::Error::msg)? {
        StepAddress::Folder(root) => Arc::new(Layout(Folder { root })),
        StepAddress::S3(url) => {
            let endpoint = r.and_then(|r| r.endpoint.clone());
            let path_style = endpoint.is_some();
            let cfg = sentinel_s3::S3Config::at(
                &url,
                endpoint,
                r.and_then(|r| r.region.clone()),
                path_style,
            )?;
            Arc::new(Layout(sentinel_s3::S3Steps::new(cfg)))
        }
        StepAddress::Oci(base) => Arc::new(Oci::new(&base, auth).map_err(anyhow::Error::msg)?),
    })
}

/// A registry by its address, with the catalog's credentials for its host.
pub fn open_with(c: &Catalog, url: &str) -> anyhow::Result<Arc<dyn Registry>> {
    let auth = match step_address(url) {
        Ok(StepAddress::Oci(base)) => c.auth_for(&base),
        _ => Auth::Anonymous,
    };
    open(url, None, auth)
}

/// The catalog of `registries` and `[steps]`; `secret` opens a server's
/// stored secrets.
pub fn build(
    state: &Path,
    list: &BTreeMap<String, RegistryConfig>,
    steps: &StepsSection,
    secret: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<Catalog> {
    let mut c = Catalog::new(crate::context::step_catalog(), cache(state));
    for (name, r) in list {
        let auth = auth_of(name, r, secret)?;
        if let Some(host) = &r.host {
            c.hosts.insert(host.clone(), auth.clone());
        }
        let Some(url) = &r.steps else {
            continue;
        };
        if let Ok(StepAddress::Oci(base)) = step_address(url) {
            c.hosts
                .entry(sentinel_registry::oci::host_of(&base).to_string())
                .or_insert_with(|| auth.clone());
        }
        c.registries.insert(
            name.clone(),
            Named {
                registry: open(url, Some(r), auth)?,
                trust: Trust {
                    keys: r.trusted_keys.clone(),
                },
            },
        );
    }
    c.default = steps.default.clone();
    c.trust = Trust {
        keys: steps.trusted_keys.clone(),
    };
    Ok(c)
}

/// The catalog of `sentinel run` and the step commands: the user's config.
pub fn user(state: &Path) -> anyhow::Result<Catalog> {
    let cfg = crate::registries::user_config()?;
    build(state, &cfg.registries, &cfg.steps, &|_| None)
}

/// The user's catalog with the state folder of the command's paths (`-C`,
/// `--state`), for the step commands.
pub fn of_paths(paths: &crate::Paths) -> anyhow::Result<Catalog> {
    let dir = paths.dir.clone().unwrap_or_else(|| ".".into());
    user(&crate::context::Dirs::of(paths, &dir)?.state)
}

/// Adds the step registries a pipeline names (`registries: {NAME: {steps:
/// …}}`), with the credentials the machine's configuration gives their
/// hosts. A name the machine's configuration already gives another address
/// is an error at that name (its trusted keys must not be sidestepped).
fn add_pipeline(
    c: &mut Catalog,
    draft: &sentinel_pipeline::draft::Draft,
    file: &str,
) -> Vec<Diagnostic> {
    let mut issues = Vec::new();
    for r in &draft.registries {
        let Some(url) = &r.steps else {
            continue;
        };
        let name = &r.name.value;
        let url = url.value.trim();
        let issue = |message: String, hint: Option<String>| Diagnostic {
            file: file.to_string(),
            pos: r.name.pos,
            message,
            hint,
        };
        if let Some(known) = c.registries.get(name) {
            let same = open(url, None, Auth::Anonymous)
                .is_ok_and(|o| o.address() == known.registry.address());
            if !same {
                issues.push(issue(
                    format!(
                        "step registry `{name}` is configured on this machine with another address"
                    ),
                    Some("rename the pipeline's registry, or give the same address".into()),
                ));
            }
            continue;
        }
        match open_with(c, url) {
            Ok(registry) => {
                c.registries.insert(
                    name.clone(),
                    Named {
                        registry,
                        trust: Trust::default(),
                    },
                );
            }
            Err(e) => issues.push(issue(format!("step registry `{name}`: {e:#}"), None)),
        }
    }
    issues
}

/// Reads a pipeline file, adds the step registries it names to `catalog`,
/// resolves its steps and validates it.
pub fn plan(
    path: &Path,
    select: &sentinel_pipeline::Select,
    catalog: &mut Catalog,
) -> Result<sentinel_pipeline::Plan, LoadError> {
    let read = sentinel_pipeline::read_draft(path, select)?;
    let issues = add_pipeline(catalog, &read.draft, &read.file);
    if !issues.is_empty() {
        return Err(LoadError::Invalid(Diagnostics(issues)));
    }
    read.plan(catalog)
}
