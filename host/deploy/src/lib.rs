//! Deploy requests as the artifactory monitor made them: a marker
//! `<deploy-prefix>/<app>/<version>.deploy` says a version is ready; its
//! payload `<payload-prefix>/<app>/<domain>-<environment>-<app>-<version>.tar.gz`
//! holds the metadata, the unit file and the keys. This crate decides
//! which marker is newer ([`Version`]), names both keys ([`Marker`]), and
//! checks a payload completely before anything runs ([`payload::check`]).

pub mod marker;
pub mod payload;
pub mod source;
pub mod version;

pub use marker::Marker;
pub use payload::{Metadata, Payload, PayloadError};
pub use source::{Folder, Location, SourceError};
pub use version::Version;
