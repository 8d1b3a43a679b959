//! The step catalog with registries: a reference that is a path, or a name
//! the local step folders hold, resolves as before; anything else goes to a
//! registry — the one it names, the full OCI repository it gives, or the
//! default — through the lock file and the content-addressed cache. A
//! locked reference whose package is cached needs no network.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use semver::Version;

use sentinel_pipeline::{DirCatalog, ResolvedStep, StepCatalog, StepError};

use crate::cache::{self, Cache, Entry};
use crate::lock::{Lock, Pin};
use crate::oci::{Auth, Oci};
use crate::package::Package;
use crate::reference::{Origin, StepRef, Want, newest};
use crate::registry::{Registry, RegistryError};
use crate::sign::Trust;

/// A registry by name, with the keys its steps must be signed by.
#[derive(Debug, Clone)]
pub struct Named {
    pub registry: Arc<dyn Registry>,
    pub trust: Trust,
}

/// What the lock file is to a resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockMode {
    /// Use it, and write what changed (`sentinel run`).
    Write,
    /// Use it; refuse to change it (`sentinel run --locked`).
    Locked,
    /// Use it; never write it (the server: a committed lock file).
    ReadOnly,
    /// Resolve these step names afresh (all when empty) and write it
    /// (`sentinel step update [NAME]`).
    Update(BTreeSet<String>),
}

#[derive(Debug)]
struct LockState {
    path: PathBuf,
    mode: LockMode,
    old: Lock,
    used: Lock,
}

/// The catalog of local folders and registries.
#[derive(Debug)]
pub struct Catalog {
    pub local: DirCatalog,
    pub registries: BTreeMap<String, Named>,
    /// The registry a name the local folders lack is looked for in.
    pub default: Option<String>,
    /// Keys every registry step must be signed by (besides its
    /// registry's); empty: only the registries' own rules.
    pub trust: Trust,
    /// Credentials for `oci://` references, by `host[:port]`.
    pub hosts: BTreeMap<String, Auth>,
    pub cache: Cache,
    lock: Option<Mutex<LockState>>,
    rt: Calls,
}

/// The runtime registry calls run on: resolution is called from synchronous
/// validation, itself often inside an async task, so each call is driven
/// from a thread of its own on a runtime the catalog keeps (its clients'
/// connections live as long as it does). Made at the first call.
#[derive(Debug, Default)]
struct Calls(std::sync::OnceLock<Option<tokio::runtime::Runtime>>);

impl Calls {
    fn block<T: Send>(&self, f: impl std::future::Future<Output = T> + Send) -> T {
        let rt = self.0.get_or_init(|| {
            Some(
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("sentinel-registry")
                    .enable_all()
                    .build()
                    .expect("a runtime for registry calls"),
            )
        });
        let rt = rt
            .as_ref()
            .expect("the registry runtime is there until drop");
        std::thread::scope(|s| {
            s.spawn(|| rt.block_on(f))
                .join()
                .expect("a registry call panicked")
        })
    }
}

impl Drop for Calls {
    fn drop(&mut self) {
        // Dropped from async code too: never wait for the runtime there.
        if let Some(rt) = self.0.take().flatten() {
            rt.shutdown_background();
        }
    }
}

fn err(message: impl Into<String>) -> StepError {
    StepError::Registry {
        message: message.into(),
        transient: false,
    }
}

fn from_registry(reference: &str, e: RegistryError) -> StepError {
    StepError::Registry {
        message: format!("step `{reference}`: {}", e.message),
        transient: e.transient,
    }
}

impl Catalog {
    /// A catalog of local folders only, with a cache (for `step show` of
    /// cached steps) and no registries.
    pub fn new(local: DirCatalog, cache: Cache) -> Self {
        Self {
            local,
            registries: BTreeMap::new(),
            default: None,
            trust: Trust::default(),
            hosts: BTreeMap::new(),
            cache,
            lock: None,
            rt: Calls::default(),
        }
    }

    /// Runs a registry call to completion (see [`Calls`]); for the CLI's
    /// own publish and pull, on the same clients.
    pub fn block<T: Send>(&self, f: impl std::future::Future<Output = T> + Send) -> T {
        self.rt.block(f)
    }

    /// Uses the lock file at `path` as `mode` says.
    pub fn with_lock(mut self, path: PathBuf, mode: LockMode) -> Result<Self, String> {
        let old = Lock::read(&path)?;
        self.lock = Some(Mutex::new(LockState {
            path,
            mode,
            old,
            used: Lock::default(),
        }));
        Ok(self)
    }

    /// After a pipeline resolved and validated: writes the lock file when
    /// its mode says to and something changed (the message says what), or
    /// refuses a change under `--locked`.
    pub fn finish(&self) -> Result<Option<String>, String> {
        let Some(state) = &self.lock else {
            return Ok(None);
        };
        let st = state.lock().map_err(|e| e.to_string())?;
        let changes = st.old.changes(&st.used);
        if changes.is_empty() {
            return Ok(None);
        }
        match st.mode {
            LockMode::ReadOnly => Ok(None),
            LockMode::Locked => Err(format!(
                "{} would change, and --locked forbids it (run without --locked, or `sentinel step update`):\n  {}",
                st.path.display(),
                changes.join("\n  ")
            )),
            LockMode::Write | LockMode::Update(_) => {
                st.used.write(&st.path)?;
                Ok(Some(format!(
                    "{} {}:\n  {}",
                    if st.old.pins.is_empty() {
                        "wrote"
                    } else {
                        "updated"
                    },
                    st.path.display(),
                    changes.join("\n  ")
                )))
            }
        }
    }

    /// The credentials for an OCI address (`host[:port]/…`): those given
    /// for its host, else none.
    pub fn auth_for(&self, address: &str) -> Auth {
        self.hosts
            .get(crate::oci::host_of(address))
            .cloned()
            .unwrap_or_default()
    }

    /// The pin the lock holds for `reference`, unless it is being updated.
    fn pin(&self, reference: &str, name: &str) -> Option<Pin> {
        let st = self.lock.as_ref()?.lock().ok()?;
        if let LockMode::Update(names) = &st.mode
            && (names.is_empty() || names.contains(name))
        {
            return None;
        }
        st.old.pins.get(reference).cloned()
    }

    fn record(&self, pin: Pin) {
        if let Some(state) = &self.lock
            && let Ok(mut st) = state.lock()
        {
            st.used.pins.insert(pin.reference.clone(), pin);
        }
    }

    fn locked(&self) -> bool {
        self.lock
            .as_ref()
            .and_then(|s| s.lock().ok().map(|s| s.mode == LockMode::Locked))
            .unwrap_or(false)
    }

    /// The registry a reference goes to, its trust, and the path in it.
    fn registry_for(&self, r: &StepRef) -> Result<(Named, String), StepError> {
        let trust_with = |t: &Trust| Trust {
            keys: t.keys.iter().chain(&self.trust.keys).cloned().collect(),
        };
        match &r.origin {
            Origin::Oci(repo) => {
                let (base, name) = repo.rsplit_once('/').unwrap_or(("", repo));
                let oci = Oci::new(base, self.auth_for(base)).map_err(err)?;
                Ok((
                    Named {
                        registry: Arc::new(oci),
                        trust: trust_with(&Trust::default()),
                    },
                    name.to_string(),
                ))
            }
            Origin::Named(n) => match self.registries.get(n) {
                Some(named) => Ok((
                    Named {
                        registry: named.registry.clone(),
                        trust: trust_with(&named.trust),
                    },
                    r.path(),
                )),
                None => Err(err(format!(
                    "unknown registry `{n}` (known: {}); registries are `[registries.NAME]` tables with `steps = \"…\"` in the user's or the server's configuration",
                    if self.registries.is_empty() {
                        "none".to_string()
                    } else {
                        self.registries
                            .keys()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                ))),
            },
            Origin::Anywhere => {
                let name = self
                    .default
                    .as_ref()
                    .ok_or_else(|| err("no default registry"))?;
                self.registry_for(&StepRef {
                    origin: Origin::Named(name.clone()),
                    ..r.clone()
                })
            }
        }
    }

    /// The keys a step from `source` must be signed by: the global ones and
    /// those of the registries it lies in.
    fn trust_of(&self, source: &str) -> Trust {
        let keys = self
            .registries
            .values()
            .filter(|n| source.starts_with(&format!("{}/", n.registry.address())))
            .flat_map(|n| n.trust.keys.iter())
            .chain(&self.trust.keys)
            .cloned()
            .collect();
        Trust { keys }
    }

    /// Checks a package against its trust and what it is meant to be, puts
    /// it in the cache, records its pin.
    fn accept(
        &self,
        reference: &str,
        r: &StepRef,
        named: &Named,
        source: String,
        pkg: &Package,
        version: &Version,
    ) -> Result<ResolvedStep, StepError> {
        let v = version.to_string();
        // A refused package never enters the cache. The manifest must say
        // it is `r.name` `v` (checked below), so the signature is checked
        // against those.
        let signer = named
            .trust
            .check(pkg.signature.as_ref(), &pkg.message(&r.name, &v))
            .map_err(|e| err(format!("step `{reference}` ({source}) is refused: {e}")))?;
        let entry = self
            .cache
            .put(
                pkg,
                cache::Origin {
                    name: r.name.clone(),
                    version: v.clone(),
                    source: source.clone(),
                    kind: pkg.kind,
                    manifest_digest: pkg.manifest_digest(),
                    signature: pkg.signature.clone(),
                },
            )
            .map_err(err)?;
        let step = entry
            .resolved()
            .map_err(|e| err(format!("step `{reference}` ({source}): {e}")))?;
        let manifest = &step.manifest;
        if manifest.name != r.name || manifest.version != v {
            return Err(err(format!(
                "step `{reference}`: {source} holds {} {}, not {} {v}",
                manifest.name, manifest.version, r.name
            )));
        }
        self.record(Pin {
            reference: reference.to_string(),
            name: manifest.name.clone(),
            version: v,
            source,
            digest: entry.digest.clone(),
            manifest: entry.origin.manifest_digest.clone(),
            signer,
        });
        Ok(step)
    }

    /// A pinned reference from the cache, checked against its trust again
    /// (the trusted keys may have changed since it was pinned).
    fn cached(
        &self,
        reference: &str,
        pin: &Pin,
        entry: &Entry,
        named: &Named,
    ) -> Result<ResolvedStep, StepError> {
        entry
            .check(&named.trust, &pin.name, &pin.version)
            .map_err(|e| {
                err(format!(
                    "step `{reference}` ({}) is refused: {e}",
                    pin.source
                ))
            })?;
        self.record(pin.clone());
        entry.resolved().map_err(err)
    }

    /// The newest version of every step of every registry that can list
    /// its steps (a folder, a bucket), by registry name; a registry that
    /// fails to answer is left out, said in the log.
    pub fn published(&self) -> Vec<(String, crate::registry::Newest)> {
        let mut out = Vec::new();
        for (name, named) in &self.registries {
            match self.block(named.registry.newest()) {
                Ok(list) => out.extend(list.into_iter().map(|n| (name.clone(), n))),
                Err(e) => tracing::warn!(registry = %name, "cannot list its steps: {e}"),
            }
        }
        out
    }

    /// The versions the registry of a reference holds (newest first), its
    /// address, and the version the reference would resolve to now.
    pub fn versions(
        &self,
        reference: &str,
    ) -> Result<(String, Vec<crate::registry::Listed>, Option<Version>), StepError> {
        let r = match StepRef::parse(reference) {
            None => {
                return Err(err(format!(
                    "`{reference}` is a local path, not a registry step"
                )));
            }
            Some(r) => r.map_err(|e| err(format!("step `{reference}`: {e}")))?,
        };
        let (named, path) = self.registry_for(&r)?;
        let mut listed = self
            .block(named.registry.versions(&path))
            .map_err(|e| from_registry(reference, e))?;
        listed.sort_by(|a, b| b.version.cmp(&a.version));
        let chosen = newest(&r.want, listed.iter().map(|l| &l.version)).cloned();
        Ok((
            format!("{}/{path}", named.registry.address()),
            listed,
            chosen,
        ))
    }

    /// Resolves a registry reference.
    fn remote(&self, reference: &str, r: &StepRef) -> Result<ResolvedStep, StepError> {
        let (named, path) = self.registry_for(r)?;
        let registry = named.registry.clone();
        if let Some(pin) = self.pin(reference, &r.name) {
            if let Some(entry) = self.cache.get(&pin.digest, &pin.manifest).map_err(err)? {
                return self.cached(reference, &pin, &entry, &named);
            }
            let version = Version::parse(&pin.version).map_err(|e| {
                err(format!(
                    "sentinel.lock: `{reference}`: version {}: {e}",
                    pin.version
                ))
            })?;
            let pkg = self
                .block(registry.pull(&path, &version))
                .map_err(|e| from_registry(reference, e))?;
            if pkg.digest() != pin.digest || pkg.manifest_digest() != pin.manifest {
                return Err(err(format!(
                    "step `{reference}`: {} now holds {} (manifest {}), but sentinel.lock pins {} (manifest {}): the published bytes changed under the same version; refusing them (if the change is intended: sentinel step update {})",
                    pin.source,
                    pkg.digest(),
                    pkg.manifest_digest(),
                    pin.digest,
                    pin.manifest,
                    r.name
                )));
            }
            return self.accept(reference, r, &named, pin.source.clone(), &pkg, &version);
        }
        if self.locked() {
            return Err(err(format!(
                "step `{reference}` is not in sentinel.lock, and --locked forbids adding it (run without --locked, or `sentinel step update`)"
            )));
        }
        if let (Origin::Oci(repo), Want::Digest(d)) = (&r.origin, &r.want) {
            // The OCI form's digest is the registry's manifest digest.
            let (pkg, version) = self
                .block(registry.pull_digest(&path, d))
                .map_err(|e| from_registry(reference, e))?;
            let version = match version {
                Some(v) => v,
                None => Version::parse(
                    &pkg.manifest(&r.name, "0.0.0", "step.toml")
                        .map_err(err)?
                        .version,
                )
                .map_err(|e| err(e.to_string()))?,
            };
            let source = format!("oci://{repo}@{d}");
            return self.accept(reference, r, &named, source, &pkg, &version);
        }
        let listed = self
            .block(registry.versions(&path))
            .map_err(|e| from_registry(reference, e))?;
        let chosen = match &r.want {
            Want::Digest(d) => listed
                .iter()
                .find(|l| l.digest.as_deref() == Some(d.as_str())),
            want => newest(want, listed.iter().map(|l| &l.version))
                .and_then(|v| listed.iter().find(|l| &l.version == v)),
        };
        let Some(chosen) = chosen else {
            let mut have: Vec<&Version> = listed.iter().map(|l| &l.version).collect();
            have.sort();
            return Err(err(format!(
                "step `{reference}`: {} has {}",
                registry.address(),
                if have.is_empty() {
                    "no such step".to_string()
                } else {
                    format!(
                        "no matching version (it has {})",
                        have.iter()
                            .map(|v| v.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            )));
        };
        let version = chosen.version.clone();
        let source = registry.location(&path, &version);
        let pkg = self
            .block(registry.pull(&path, &version))
            .map_err(|e| from_registry(reference, e))?;
        if let Some(d) = &chosen.digest
            && *d != pkg.digest()
        {
            return Err(err(format!(
                "step `{reference}`: {source} lists digest {d} but its component is {}: refusing it",
                pkg.digest()
            )));
        }
        self.accept(reference, r, &named, source, &pkg, &version)
    }
}

impl StepCatalog for Catalog {
    fn resolve(&self, reference: &str, base: &Path) -> Result<ResolvedStep, StepError> {
        let r = match StepRef::parse(reference) {
            None => return self.local.resolve(reference, base),
            Some(Err(e)) => return Err(err(format!("step `{reference}`: {e}"))),
            Some(Ok(r)) => r,
        };
        if r.origin == Origin::Anywhere {
            // A content digest the cache holds needs no registry at all.
            if let Want::Digest(d) = &r.want
                && let Some(entry) = self
                    .cache
                    .of_component(d)
                    .into_iter()
                    .find(|e| e.origin.name == r.name)
            {
                // Whatever registry it came from, its keys and the global
                // ones apply now too.
                let trust = self.trust_of(&entry.origin.source);
                entry
                    .check(&trust, &entry.origin.name, &entry.origin.version)
                    .map_err(|e| {
                        err(format!(
                            "step `{reference}` ({}) is refused: {e}",
                            entry.origin.source
                        ))
                    })?;
                return entry.resolved().map_err(err);
            }
            match self.local.resolve(reference, base) {
                Ok(step) => return Ok(step),
                Err(e @ (StepError::Unknown { .. } | StepError::Version { .. }))
                    if self.default.is_some() =>
                {
                    return self.remote(reference, &r).map_err(|re| match re {
                        StepError::Registry { message, transient } => StepError::Registry {
                            message: format!("{message} (the local step folders: {e})"),
                            transient,
                        },
                        other => other,
                    });
                }
                Err(e) => return Err(e),
            }
        }
        self.remote(reference, &r)
    }

    fn names(&self) -> Vec<String> {
        let mut names = self.local.names();
        names.extend(self.cache.entries().into_iter().map(|e| e.origin.name));
        names.sort();
        names.dedup();
        names
    }
}
