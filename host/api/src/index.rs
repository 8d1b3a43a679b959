//! The runs index (`runs/index.json`): which runs exist, newest first.
//!
//! Layout 2 (`"schema": 2`): the root holds the newest runs (its *head*,
//! at most [`HEAD_MAX`]) and how many *chunks* hold the older ones; the
//! chunk list (`runs/index/chunks.json`) names them, newest first; a chunk
//! (`runs/index/<runId>.json`) holds the summaries of the runs whose ids lie
//! from its `from` up to the next newer chunk's `from` (the oldest chunk
//! takes everything older too), newest first. A new run, or a change to one
//! of the newest, rewrites the small root only; every [`HEAD_MAX`]/2 runs the
//! oldest of the head move into the newest chunk; a change to an older run
//! rewrites its chunk. So publishing the ten-thousandth run costs what the
//! first did; removing a run is as cheap.
//!
//! Layout 1 (`"schema": 1`, written before): pages of 100 summaries,
//! `runs/index.json`, `runs/index-1.json`, …, each naming the next. Readers
//! still read it; the first write converts it.

use serde::{Deserialize, Serialize};

use crate::RunId;
use crate::docs::{IndexPage, RunSummary};

/// The root's key.
pub const ROOT: &str = "runs/index.json";

/// The chunk list's key.
pub const CHUNKS: &str = "runs/index/chunks.json";

/// The most runs the root holds itself; past it, the oldest half move into
/// the chunks.
pub const HEAD_MAX: usize = 16;

/// The schema of the chunked layout.
pub const INDEX_SCHEMA: u32 = 2;

/// A chunk splits in two once it holds more than this many runs.
pub const CHUNK_MAX: usize = 200;

/// `runs/index.json`, layout 2.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexRoot {
    pub schema: u32,
    /// The newest runs, newest first.
    pub head: Vec<RunSummary>,
    /// How many chunks hold older runs (0: the chunk list is not needed).
    pub chunks: u32,
    /// The newest run the chunks hold: every newer one belongs in the head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floor: Option<RunId>,
}

/// `runs/index/chunks.json`: the chunks, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkList {
    pub schema: u32,
    pub chunks: Vec<ChunkRef>,
}

/// One chunk named by the root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// The lowest run id it holds (the oldest chunk holds older ones too).
    pub from: RunId,
    /// Its key, relative to the prefix.
    pub key: String,
}

/// `runs/index/<runId>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexChunk {
    pub schema: u32,
    /// Newest first.
    pub runs: Vec<RunSummary>,
}

impl Default for IndexChunk {
    fn default() -> Self {
        Self {
            schema: INDEX_SCHEMA,
            runs: Vec::new(),
        }
    }
}

impl Default for IndexRoot {
    fn default() -> Self {
        Self::new()
    }
}

impl Default for ChunkList {
    fn default() -> Self {
        Self::new()
    }
}

/// The key of a new chunk starting at `from`.
pub fn chunk_key(from: &RunId) -> String {
    format!("runs/index/{from}.json")
}

impl IndexRoot {
    /// An empty index.
    pub fn new() -> Self {
        Self {
            schema: INDEX_SCHEMA,
            head: Vec::new(),
            chunks: 0,
            floor: None,
        }
    }

    /// True when `id` belongs in the head: it is newer than every run the
    /// chunks hold (or there are none).
    pub fn in_head(&self, id: &RunId) -> bool {
        self.chunks == 0 || self.floor.as_ref().is_none_or(|f| id > f)
    }
}

impl ChunkList {
    /// No chunks.
    pub fn new() -> Self {
        Self {
            schema: INDEX_SCHEMA,
            chunks: Vec::new(),
        }
    }

    /// The position of the chunk that holds (or would hold) `id`.
    pub fn chunk_for(&self, id: &RunId) -> Option<usize> {
        if self.chunks.is_empty() {
            return None;
        }
        Some(
            self.chunks
                .iter()
                .position(|c| *id >= c.from)
                .unwrap_or(self.chunks.len() - 1),
        )
    }
}

/// What `runs/index.json` holds: a root of layout 2, or page 0 of layout 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexDoc {
    Chunks(IndexRoot),
    Pages(IndexPage),
}

/// A document whose schema this version does not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    #[error(
        "{what} has schema {found}; this Sentinel reads {reads} (a newer Sentinel wrote it: upgrade to read it)"
    )]
    Unknown {
        what: String,
        found: u64,
        reads: String,
    },
    #[error("{what} is not a Sentinel document: {message}")]
    Invalid { what: String, message: String },
}

/// The `schema` of a JSON document, read before anything else.
pub fn schema_of(bytes: &[u8], what: &str) -> Result<u64, SchemaError> {
    #[derive(Deserialize)]
    struct Head {
        schema: Option<u64>,
    }
    let head: Head = serde_json::from_slice(bytes).map_err(|e| SchemaError::Invalid {
        what: what.to_string(),
        message: e.to_string(),
    })?;
    head.schema.ok_or_else(|| SchemaError::Invalid {
        what: what.to_string(),
        message: "it has no `schema`".into(),
    })
}

/// Parses a document after checking its schema is one of `reads`.
pub fn decode<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    what: &str,
    reads: &[u64],
) -> Result<T, SchemaError> {
    let found = schema_of(bytes, what)?;
    if !reads.contains(&found) {
        return Err(SchemaError::Unknown {
            what: what.to_string(),
            found,
            reads: reads
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(" or "),
        });
    }
    serde_json::from_slice(bytes).map_err(|e| SchemaError::Invalid {
        what: what.to_string(),
        message: e.to_string(),
    })
}

/// Parses `runs/index.json` of either layout.
pub fn decode_root(bytes: &[u8]) -> Result<IndexDoc, SchemaError> {
    let what = ROOT;
    match schema_of(bytes, what)? {
        1 => decode(bytes, what, &[1]).map(IndexDoc::Pages),
        2 => decode(bytes, what, &[2]).map(IndexDoc::Chunks),
        found => Err(SchemaError::Unknown {
            what: what.to_string(),
            found,
            reads: "1 or 2".into(),
        }),
    }
}

/// Adds runs to `out` (newest first), skipping any already there: a chunk
/// being split may briefly hold runs its new neighbour holds too.
pub fn extend_unique(out: &mut Vec<RunSummary>, runs: Vec<RunSummary>) {
    for r in runs {
        if !out.iter().rev().take(2 * CHUNK_MAX).any(|o| o.id == r.id) {
            out.push(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> RunId {
        format!("01JDX3K6Q2T8W9V5M4N3P{n:05}").parse().unwrap()
    }

    #[test]
    fn runs_go_to_the_chunk_of_their_range() {
        let root = ChunkList {
            schema: 2,
            chunks: vec![
                ChunkRef {
                    from: id(200),
                    key: chunk_key(&id(200)),
                },
                ChunkRef {
                    from: id(100),
                    key: chunk_key(&id(100)),
                },
            ],
        };
        assert_eq!(root.chunk_for(&id(250)), Some(0));
        assert_eq!(root.chunk_for(&id(200)), Some(0));
        assert_eq!(root.chunk_for(&id(150)), Some(1));
        assert_eq!(
            root.chunk_for(&id(5)),
            Some(1),
            "the oldest takes older runs"
        );
        assert_eq!(ChunkList::new().chunk_for(&id(1)), None);
    }

    #[test]
    fn schemas_are_checked_first() {
        let e = decode_root(br#"{"schema": 3, "whatever": true}"#).unwrap_err();
        assert!(e.to_string().contains("schema 3"), "{e}");
        assert!(matches!(
            decode_root(br#"{"schema":2,"head":[],"chunks":0}"#).unwrap(),
            IndexDoc::Chunks(_)
        ));
        assert!(matches!(
            decode_root(br#"{"schema":1,"page":0,"pages":1,"runs":[]}"#).unwrap(),
            IndexDoc::Pages(_)
        ));
        let e = decode::<crate::RunDoc>(br#"{"schema": 9}"#, "run.json", &[1]).unwrap_err();
        assert!(e.to_string().contains("run.json has schema 9"), "{e}");
    }
}
