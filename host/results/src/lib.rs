//! Results sinks. [`LocalSink`] writes the results layout into a folder (the
//! embedded default); the S3 sink (its own crate) implements the same
//! interface and shares the runs index ([`index`]) and artifact zipping here.
//!
//! Every file is written atomically (a temporary file, then a rename), so a
//! reader never sees half a document; the index is changed under a file
//! lock, so several processes may share one results folder.

pub mod index;
mod local;
mod mirror;
mod pages;
mod zipdir;

pub use local::LocalSink;
pub use mirror::Mirrored;
pub use pages::index_pages;
pub use zipdir::{unzip_into, zip_dir};
