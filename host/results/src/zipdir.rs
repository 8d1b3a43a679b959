//! Zips a folder of artifacts, and unzips one. Symlinks are skipped, never
//! followed, so an artifact cannot smuggle in a file from outside the
//! folder; unzipping writes only inside its folder.

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

/// Unzips `zip` (bytes of an artifacts zip) into `dir`; returns how many
/// files came out. An entry whose name would leave `dir` (`..`, an
/// absolute path) is refused.
pub fn unzip_into(zip: &[u8], dir: &Path) -> io::Result<usize> {
    let mut archive = zip::ZipArchive::new(io::Cursor::new(zip)).map_err(io::Error::other)?;
    let mut count = 0;
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(io::Error::other)?;
        let Some(rel) = entry.enclosed_name() else {
            let name = entry.name().map(|n| n.into_owned()).unwrap_or_default();
            return Err(io::Error::other(format!(
                "the zip names a path outside its folder: {name}"
            )));
        };
        let to = dir.join(rel);
        if entry.is_dir() {
            std::fs::create_dir_all(&to)?;
        } else if entry.is_file() {
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let mut out = File::create(&to)?;
            io::copy(&mut entry, &mut out)?;
            count += 1;
        }
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_round_trips() {
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(src.path().join("a/b")).unwrap();
        std::fs::write(src.path().join("a/b/c.txt"), b"deep").unwrap();
        std::fs::write(src.path().join("top.txt"), b"top").unwrap();
        let zip = tempfile::NamedTempFile::new().unwrap();
        assert_eq!(zip_dir(src.path(), zip.path()).unwrap(), 2);
        let out = tempfile::tempdir().unwrap();
        let bytes = std::fs::read(zip.path()).unwrap();
        assert_eq!(unzip_into(&bytes, out.path()).unwrap(), 2);
        assert_eq!(
            std::fs::read(out.path().join("a/b/c.txt")).unwrap(),
            b"deep"
        );
        assert_eq!(std::fs::read(out.path().join("top.txt")).unwrap(), b"top");
    }
}
