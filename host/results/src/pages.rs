//! Layout 1 of the runs index — pages of [`INDEX_PAGE_SIZE`] runs, each
//! naming the next — as older Sentinels wrote it. Nothing writes it any
//! more; tests build it to check that it is still read and converted.

use sentinel_api::keys::{self, INDEX_PAGE_SIZE};
use sentinel_api::{IndexPage, RunSummary, SCHEMA_VERSION};

/// The pages of `runs` (newest first, as [`RunSummary::upsert`] keeps them),
/// in page order; there is always at least page 0. Writers write them in
/// reverse, so page 0 never points at a page not yet written.
pub fn index_pages(runs: &[RunSummary]) -> Vec<IndexPage> {
    let chunks: Vec<&[RunSummary]> = if runs.is_empty() {
        vec![&[]]
    } else {
        runs.chunks(INDEX_PAGE_SIZE).collect()
    };
    let pages = chunks.len() as u32;
    chunks
        .iter()
        .enumerate()
        .map(|(i, chunk)| IndexPage {
            schema: SCHEMA_VERSION,
            page: i as u32,
            pages,
            next: (i as u32 + 1 < pages).then(|| keys::index_page(i as u32 + 1)),
            runs: chunk.to_vec(),
        })
        .collect()
}
