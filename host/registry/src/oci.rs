//! An OCI registry (`oci://host[:port]/namespace`): a WebAssembly step is
//! the CNCF Wasm OCI artifact as `oci-wasm` and `wkg` write it (one
//! `application/wasm` layer, an `application/vnd.wasm.config.v0+json`
//! config), so other tools pull what Sentinel pushes and the reverse. What
//! is Sentinel's own rides in manifest annotations: the step's manifest
//! (`dev.sentinel.step.manifest`, base64: manifests are canonical JSON,
//! which leaves the newlines of a TOML text unescaped) and its signature
//! (`dev.sentinel.step.signature`). A script step is one layer of
//! [`SCRIPT_MEDIA_TYPE`]. Loopback registries speak plain HTTP; any other,
//! HTTPS.

use std::collections::BTreeMap;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::OciImageManifest;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use oci_wasm::{WASM_LAYER_MEDIA_TYPE, WASM_MANIFEST_MEDIA_TYPE, WasmConfig};
use semver::Version;

use crate::package::{Kind, Package, SCRIPT_MEDIA_TYPE};
use crate::registry::{Listed, Registry, RegistryError};
use crate::sign::Signature;

/// The annotation holding the step's `step.toml`.
pub const MANIFEST_ANNOTATION: &str = "dev.sentinel.step.manifest";
/// The annotation holding the signature (JSON).
pub const SIGNATURE_ANNOTATION: &str = "dev.sentinel.step.signature";
/// A script step's config media type.
pub const SCRIPT_CONFIG_MEDIA_TYPE: &str = "application/vnd.sentinel.step.config.v1+json";

/// How to sign in to a registry.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Auth {
    #[default]
    Anonymous,
    /// User and password; the client trades them for a bearer token where
    /// the registry asks for one (the distribution token flow).
    Basic(String, String),
    /// A bearer token given as is.
    Bearer(String),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Anonymous => "Anonymous",
            Self::Basic(..) => "Basic(…)",
            Self::Bearer(_) => "Bearer(…)",
        })
    }
}

/// An OCI registry's namespace.
pub struct Oci {
    /// `host[:port]`.
    host: String,
    /// The namespace under the host (may be empty).
    namespace: String,
    auth: RegistryAuth,
    client: Client,
}

impl std::fmt::Debug for Oci {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Oci({}/{})", self.host, self.namespace)
    }
}

/// The `host[:port]` of an address `host[:port]/namespace/…`.
pub fn host_of(address: &str) -> &str {
    address.split('/').next().unwrap_or(address)
}

/// True for a host on loopback (plain HTTP).
pub fn is_loopback(host: &str) -> bool {
    let name = host.rsplit_once(':').map_or(host, |(h, _)| h);
    matches!(name, "127.0.0.1" | "localhost" | "[::1]")
}

impl Oci {
    /// `host[:port]/namespace` (no scheme).
    pub fn new(base: &str, auth: Auth) -> Result<Self, String> {
        let base = base.trim_end_matches('/');
        let (host, namespace) = base.split_once('/').unwrap_or((base, ""));
        if host.is_empty() {
            return Err(format!("`oci://{base}` names no registry host"));
        }
        let loopback = if is_loopback(host) {
            vec![host.to_string()]
        } else {
            Vec::new()
        };
        let client = Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(loopback),
            ..Default::default()
        });
        Ok(Self {
            host: host.to_string(),
            namespace: namespace.to_string(),
            auth: match auth {
                Auth::Anonymous => RegistryAuth::Anonymous,
                Auth::Basic(u, p) => RegistryAuth::Basic(u, p),
                Auth::Bearer(t) => RegistryAuth::Bearer(t),
            },
            client,
        })
    }

    fn repository(&self, path: &str) -> String {
        if self.namespace.is_empty() {
            path.to_string()
        } else {
            format!("{}/{path}", self.namespace)
        }
    }

    fn tag(&self, path: &str, version: &Version) -> Reference {
        Reference::with_tag(
            self.host.clone(),
            self.repository(path),
            version.to_string(),
        )
    }

    async fn pull_ref(&self, r: &Reference) -> Result<(Package, Option<Version>), RegistryError> {
        let data = self
            .client
            .pull(
                r,
                &self.auth,
                vec![WASM_LAYER_MEDIA_TYPE, SCRIPT_MEDIA_TYPE],
            )
            .await
            .map_err(|e| classify(&format!("oci://{r}"), &e.to_string()))?;
        let [layer] = <[ImageLayer; 1]>::try_from(data.layers).map_err(|l| {
            RegistryError::permanent(format!("oci://{r} has {} layers; a step has one", l.len()))
        })?;
        let kind = if layer.media_type == SCRIPT_MEDIA_TYPE {
            Kind::Script
        } else {
            Kind::Wasm
        };
        let notes = data
            .manifest
            .and_then(|m| m.annotations)
            .unwrap_or_default();
        let signature = match notes.get(SIGNATURE_ANNOTATION) {
            None => None,
            Some(s) => Some(serde_json::from_str::<Signature>(s).map_err(|e| {
                RegistryError::permanent(format!(
                    "oci://{r}: annotation {SIGNATURE_ANNOTATION}: {e}"
                ))
            })?),
        };
        let version = notes
            .get("org.opencontainers.image.version")
            .and_then(|v| Version::parse(v).ok());
        Ok((
            Package {
                kind,
                manifest_text: match notes.get(MANIFEST_ANNOTATION) {
                    None => String::new(),
                    Some(b64) => B64
                        .decode(b64)
                        .ok()
                        .and_then(|b| String::from_utf8(b).ok())
                        .ok_or_else(|| {
                            RegistryError::permanent(format!(
                                "oci://{r}: annotation {MANIFEST_ANNOTATION} is not base64 of UTF-8 text"
                            ))
                        })?,
                },
                body: layer.data.to_vec(),
                signature,
            },
            version,
        ))
    }

    /// The layer digest a tag holds now, if the tag exists.
    async fn current(&self, r: &Reference) -> Result<Option<String>, RegistryError> {
        match self.client.pull_image_manifest(r, &self.auth).await {
            Ok((m, _)) => Ok(m.layers.first().map(|l| l.digest.clone())),
            Err(e) if absent(&e.to_string()) => Ok(None),
            Err(e) => Err(classify(&format!("oci://{r}"), &e.to_string())),
        }
    }
}

/// True when the registry said the repository or tag does not exist.
fn absent(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    [
        "manifest unknown",
        "name unknown",
        "manifest_unknown",
        "name_unknown",
        "not found",
        "404",
    ]
    .iter()
    .any(|w| t.contains(w))
}

/// A registry error, transient when the registry did not answer.
fn classify(at: &str, text: &str) -> RegistryError {
    let transient = [
        "connect",
        "timed out",
        "timeout",
        "503",
        "502",
        "504",
        "connection",
    ]
    .iter()
    .any(|w| text.to_ascii_lowercase().contains(w));
    let lower = text.to_ascii_lowercase();
    let hint = if ["401", "unauthorized", "not authorized"]
        .iter()
        .any(|w| lower.contains(w))
    {
        " (unauthorised: check the registry's user and password or token)"
    } else {
        ""
    };
    let e = format!("{at}: {text}{hint}");
    if transient {
        RegistryError::transient(e)
    } else {
        RegistryError::permanent(e)
    }
}

#[async_trait]
impl Registry for Oci {
    fn address(&self) -> String {
        format!("oci://{}/{}", self.host, self.namespace)
            .trim_end_matches('/')
            .to_string()
    }

    fn location(&self, path: &str, version: &Version) -> String {
        format!("oci://{}/{}:{version}", self.host, self.repository(path))
    }

    async fn versions(&self, path: &str) -> Result<Vec<Listed>, RegistryError> {
        let r = Reference::with_tag(self.host.clone(), self.repository(path), "latest".into());
        match self.client.list_tags(&r, &self.auth, None, None).await {
            Ok(t) => Ok(t
                .tags
                .iter()
                .filter_map(|t| Version::parse(t).ok())
                .map(|version| Listed {
                    version,
                    digest: None,
                })
                .collect()),
            Err(e) if absent(&e.to_string()) => Ok(Vec::new()),
            Err(e) => Err(classify(
                &format!("oci://{}/{}", self.host, self.repository(path)),
                &e.to_string(),
            )),
        }
    }

    async fn pull(&self, path: &str, version: &Version) -> Result<Package, RegistryError> {
        Ok(self.pull_ref(&self.tag(path, version)).await?.0)
    }

    /// By its manifest's digest (`oci://…@sha256:…`), with the version its
    /// annotations say.
    async fn pull_digest(
        &self,
        path: &str,
        digest: &str,
    ) -> Result<(Package, Option<Version>), RegistryError> {
        let r =
            Reference::with_digest(self.host.clone(), self.repository(path), digest.to_string());
        self.pull_ref(&r).await
    }

    async fn publish(
        &self,
        path: &str,
        version: &Version,
        pkg: &Package,
        force: bool,
    ) -> Result<String, RegistryError> {
        let r = self.tag(path, version);
        let at = self.location(path, version);
        if !force
            && let Some(old) = self.current(&r).await?
            && old != pkg.digest()
        {
            return Err(RegistryError::permanent(format!(
                "{at} is already published with other content ({old}); publish a new version (or --force to replace it: runs that pinned it will refuse the new bytes)"
            )));
        }
        let mut notes = BTreeMap::new();
        notes.insert(
            "org.opencontainers.image.version".to_string(),
            version.to_string(),
        );
        notes.insert(
            "org.opencontainers.image.created".to_string(),
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        );
        if !pkg.manifest_text.is_empty() {
            notes.insert(
                MANIFEST_ANNOTATION.to_string(),
                B64.encode(&pkg.manifest_text),
            );
        }
        if let Some(sig) = &pkg.signature {
            notes.insert(
                SIGNATURE_ANNOTATION.to_string(),
                serde_json::to_string(sig).unwrap_or_default(),
            );
        }
        let (layer, config) = match pkg.kind {
            Kind::Wasm => {
                let (config, layer) = WasmConfig::from_raw_component(pkg.body.clone(), None)
                    .map_err(|e| RegistryError::permanent(format!("{at}: not a component: {e}")))?;
                let config = oci_wasm::ToConfig::to_config(&config)
                    .map_err(|e| RegistryError::permanent(format!("{at}: {e}")))?;
                (layer, config)
            }
            Kind::Script => (
                ImageLayer::new(pkg.body.clone(), SCRIPT_MEDIA_TYPE.to_string(), None),
                Config::new(b"{}".to_vec(), SCRIPT_CONFIG_MEDIA_TYPE.to_string(), None),
            ),
        };
        let layers = vec![layer];
        let mut manifest = OciImageManifest::build(&layers, &config, Some(notes));
        manifest.media_type = Some(WASM_MANIFEST_MEDIA_TYPE.to_string());
        self.client
            .push(&r, &layers, config, &self.auth, Some(manifest))
            .await
            .map_err(|e| classify(&at, &e.to_string()))?;
        Ok(at)
    }
}
