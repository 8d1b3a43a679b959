//! The engine: runs a [`sentinel_pipeline::Plan`] as a DAG of stages.
pub mod masker;
pub mod transition;
