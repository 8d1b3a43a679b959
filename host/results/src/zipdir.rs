//! Zips a folder of artifacts. Symlinks are skipped, never followed, so an
//! artifact cannot smuggle in a file from outside the folder.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

use zip::write::SimpleFileOptions;

/// Zips the files under `dir` into `out`; returns how many files went in.
pub fn zip_dir(dir: &Path, out: &Path) -> io::Result<usize> {
    let file = File::create(out)?;
    let mut zip = zip::ZipWriter::new(file);
    let options = SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .large_file(true);
    let mut count = 0;
    let mut entries: Vec<_> = walkdir::WalkDir::new(dir)
        .follow_links(false)
        .into_iter()
        .collect::<Result<_, _>>()
        .map_err(io::Error::other)?;
    entries.sort_by(|a, b| a.path().cmp(b.path()));
    for entry in entries {
        let rel = entry.path().strip_prefix(dir).map_err(io::Error::other)?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        let name = rel.to_string_lossy().replace('\\', "/");
        if entry.file_type().is_dir() {
            zip.add_directory(name, options).map_err(io::Error::other)?;
        } else if entry.file_type().is_file() {
            zip.start_file(name, options).map_err(io::Error::other)?;
            let mut src = File::open(entry.path())?;
            io::copy(&mut src, &mut zip)?;
            count += 1;
        }
    }
    zip.finish().map_err(io::Error::other)?.flush()?;
    Ok(count)
}
