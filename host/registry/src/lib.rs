//! Step registries: where WebAssembly and script steps are published and
//! pulled — a folder, an S3 bucket prefix (through [`Blobs`], implemented
//! by the S3 crate) or an OCI registry — and how a pipeline's references
//! become exact, verified bytes: versions resolved, pinned in
//! `sentinel.lock`, kept content-addressed in the state folder, checked
//! against trusted signing keys.

pub mod cache;
pub mod catalog;
pub mod lock;
pub mod oci;
pub mod package;
pub mod reference;
pub mod registry;
pub mod sign;

pub use cache::Cache;
pub use catalog::{Catalog, LockMode, Named};
pub use lock::{Lock, Pin};
pub use oci::{Auth, Oci};
pub use package::{Kind, Package};
pub use reference::{Origin, StepRef, Want};
pub use registry::{Blobs, Folder, Layout, Listed, Registry, RegistryError};
pub use semver;
pub use sign::{SecretKey, Signature, Trust};
