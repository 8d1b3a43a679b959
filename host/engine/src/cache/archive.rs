//! A cache entry's files: packed from the workspace and the stage's cache
//! folder into one tar (`ws/…`, `cache/…`; links kept as links, never
//! followed), put back through a staging folder so that nothing is written
//! through a link, and the `${hash(…)}` of workspace files.

use std::fs::File;
use std::io::{self, BufWriter, Read};
use std::path::Path;

use sentinel_pipeline::CachePath;
use sha2::{Digest, Sha256};

/// The top folder of workspace paths in an entry.
const WS: &str = "ws";
/// The top folder of the stage's cache folder in an entry.
const CACHE: &str = "cache";

/// Packs `paths` into the tar file `to`; returns its size. Paths that do
/// not exist are left out (a first run may not have made them yet).
pub fn pack(ws: &Path, stage_cache: &Path, paths: &[CachePath], to: &Path) -> io::Result<u64> {
    let file = BufWriter::with_capacity(1 << 20, File::create(to)?);
    let mut tar = tar::Builder::new(file);
    tar.follow_symlinks(false);
    tar.mode(tar::HeaderMode::Complete);
    for p in paths {
        let (src, name) = match p {
            CachePath::Workspace(rel) => (ws.join(rel), format!("{WS}/{rel}")),
            CachePath::StageCache => (stage_cache.to_path_buf(), CACHE.to_string()),
        };
        let Ok(meta) = std::fs::symlink_metadata(&src) else {
            continue;
        };
        if meta.is_dir() {
            tar.append_dir_all(&name, &src)?;
        } else {
            tar.append_path_with_name(&src, &name)?;
        }
    }
    let file = tar.into_inner()?;
    file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(std::fs::metadata(to)?.len())
}

/// Puts an entry back: unpacked into `staging` (the tar crate refuses
/// paths leaving it and writes through no link), given to its owner by
/// `own`, then moved into the workspace and the stage's cache folder,
/// replacing what is there. Returns the number of files and folders placed.
pub fn unpack(
    archive: &Path,
    staging: &Path,
    ws: &Path,
    stage_cache: &Path,
    own: &dyn Fn(&Path) -> io::Result<()>,
) -> io::Result<u64> {
    let _ = std::fs::remove_dir_all(staging);
    std::fs::create_dir_all(staging)?;
    let mut tar = tar::Archive::new(io::BufReader::with_capacity(1 << 20, File::open(archive)?));
    tar.set_preserve_permissions(true);
    tar.set_preserve_mtime(true);
    tar.set_overwrite(true);
    tar.unpack(staging)?;
    own(staging)?;
    let mut placed = 0;
    for (top, dst) in [(WS, ws), (CACHE, stage_cache)] {
        let src = staging.join(top);
        if src.exists() {
            std::fs::create_dir_all(dst)?;
            placed += merge(&src, dst)?;
        }
    }
    let _ = std::fs::remove_dir_all(staging);
    Ok(placed)
}

/// Moves everything of `src` into `dst`: folders that exist in both are
/// merged (only when `dst`'s is a real folder, never a link), anything
/// else replaces what `dst` holds.
fn merge(src: &Path, dst: &Path) -> io::Result<u64> {
    let mut placed = 0;
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let to = dst.join(entry.file_name());
        let is_dir = entry.file_type()?.is_dir();
        match std::fs::symlink_metadata(&to) {
            Ok(m) if is_dir && m.is_dir() => {
                placed += merge(&entry.path(), &to)?;
                continue;
            }
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&to)?,
            Ok(_) => std::fs::remove_file(&to)?,
            Err(_) => {}
        }
        std::fs::rename(entry.path(), &to)?;
        placed += 1;
    }
    Ok(placed)
}

/// The SHA-256 (its first 128 bits, in hex) of the workspace files matching any of `patterns`
/// (globs relative to the workspace; `**` crosses folders), in path order,
/// names included. An error names a pattern that matched nothing.
pub fn hash_files(ws: &Path, patterns: &[String]) -> Result<String, String> {
    let mut matched = vec![false; patterns.len()];
    let globs: Vec<globset::GlobMatcher> = patterns
        .iter()
        .map(|p| {
            globset::GlobBuilder::new(p)
                .literal_separator(true)
                .build()
                .map(|g| g.compile_matcher())
                .map_err(|e| format!("`{p}` is not a glob: {e}"))
        })
        .collect::<Result<_, _>>()?;
    let mut files = Vec::new();
    let walk = walkdir::WalkDir::new(ws)
        .follow_links(false)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| e.depth() == 0 || e.file_name() != ".git");
    for entry in walk {
        let entry = entry.map_err(|e| format!("cannot read the workspace: {e}"))?;
        if !entry.file_type().is_file() {
            continue;
        }
        let Ok(rel) = entry.path().strip_prefix(ws) else {
            continue;
        };
        let mut any = false;
        for (i, g) in globs.iter().enumerate() {
            if g.is_match(rel) {
                matched[i] = true;
                any = true;
            }
        }
        if any {
            files.push(rel.to_path_buf());
        }
    }
    if let Some(i) = matched.iter().position(|m| !m) {
        return Err(format!(
            "`${{hash({})}}`: no file of the workspace matches `{}`",
            patterns.join(", "),
            patterns[i]
        ));
    }
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    for rel in &files {
        h.update(rel.to_string_lossy().as_bytes());
        h.update([0]);
        let mut f =
            File::open(ws.join(rel)).map_err(|e| format!("cannot read {}: {e}", rel.display()))?;
        loop {
            let n = f
                .read(&mut buf)
                .map_err(|e| format!("cannot read {}: {e}", rel.display()))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        h.update([0]);
    }
    Ok(hex::encode(&h.finalize()[..16]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(p: &Path, s: &str) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, s).unwrap();
    }

    #[test]
    fn an_entry_round_trips_into_another_workspace() {
        let a = tempfile::tempdir().unwrap();
        let (ws, cache) = (a.path().join("ws"), a.path().join("cache"));
        write(&ws.join("target/debug/app"), "bin");
        write(&ws.join("target/x/y"), "deep");
        std::os::unix::fs::symlink("debug/app", ws.join("target/link")).unwrap();
        write(&cache.join("npm/pkg"), "pkg");
        write(&ws.join("src/main.rs"), "not cached");
        let tar = a.path().join("e.tar");
        let paths = [
            CachePath::Workspace("target".into()),
            CachePath::Workspace("missing".into()),
            CachePath::StageCache,
        ];
        let size = pack(&ws, &cache, &paths, &tar).unwrap();
        assert!(size > 0);

        let b = tempfile::tempdir().unwrap();
        let (ws2, cache2) = (b.path().join("ws"), b.path().join("cache"));
        write(&ws2.join("target/x/y"), "old");
        write(&ws2.join("target/keep"), "kept");
        unpack(&tar, &b.path().join("staging"), &ws2, &cache2, &|_| Ok(())).unwrap();
        assert_eq!(
            std::fs::read_to_string(ws2.join("target/debug/app")).unwrap(),
            "bin"
        );
        assert_eq!(
            std::fs::read_to_string(ws2.join("target/x/y")).unwrap(),
            "deep"
        );
        assert_eq!(
            std::fs::read_to_string(ws2.join("target/keep")).unwrap(),
            "kept"
        );
        assert_eq!(
            std::fs::read_link(ws2.join("target/link")).unwrap(),
            Path::new("debug/app")
        );
        assert_eq!(
            std::fs::read_to_string(cache2.join("npm/pkg")).unwrap(),
            "pkg"
        );
        assert!(!ws2.join("src").exists());
        assert!(!b.path().join("staging").exists());
    }

    #[test]
    fn nothing_is_written_through_a_link_of_the_workspace() {
        let a = tempfile::tempdir().unwrap();
        let (ws, cache) = (a.path().join("ws"), a.path().join("cache"));
        write(&ws.join("target/f"), "cached");
        let tar = a.path().join("e.tar");
        pack(&ws, &cache, &[CachePath::Workspace("target".into())], &tar).unwrap();

        let b = tempfile::tempdir().unwrap();
        let outside = b.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        let ws2 = b.path().join("ws");
        std::fs::create_dir_all(&ws2).unwrap();
        std::os::unix::fs::symlink(&outside, ws2.join("target")).unwrap();
        unpack(
            &tar,
            &b.path().join("staging"),
            &ws2,
            &b.path().join("cache"),
            &|_| Ok(()),
        )
        .unwrap();
        assert!(!outside.join("f").exists(), "wrote through the link");
        assert_eq!(
            std::fs::read_to_string(ws2.join("target/f")).unwrap(),
            "cached"
        );
    }

    #[test]
    fn hashes_follow_contents_and_name_what_is_missing() {
        let a = tempfile::tempdir().unwrap();
        write(&a.path().join("Cargo.lock"), "v1");
        write(&a.path().join("crates/a/Cargo.toml"), "a");
        let pats = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let h1 = hash_files(a.path(), &pats(&["Cargo.lock", "crates/*/Cargo.toml"])).unwrap();
        assert_eq!(
            h1,
            hash_files(a.path(), &pats(&["Cargo.lock", "crates/*/Cargo.toml"])).unwrap()
        );
        write(&a.path().join("Cargo.lock"), "v2");
        assert_ne!(
            h1,
            hash_files(a.path(), &pats(&["Cargo.lock", "crates/*/Cargo.toml"])).unwrap()
        );
        let e = hash_files(a.path(), &pats(&["Cargo.lock", "go.sum"])).unwrap_err();
        assert!(e.contains("matches `go.sum`"), "{e}");
    }
}
