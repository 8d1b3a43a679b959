//! Files of a run on this machine: who owns them (the stages' user), the
//! project copied into the workspace under its ignore rules, trees copied
//! over one another, the capture of what a stage changed, and the checks
//! of a stage's private folder.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::SystemTime;

use super::{CAPTURE_LIMIT, CopyStats, FileSet, Source};

/// The uid of this process.
pub fn current_uid() -> u32 {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(0)
}

/// The gid of this process.
pub fn current_gid() -> u32 {
    std::fs::metadata("/proc/self")
        .map(|m| m.gid())
        .unwrap_or(0)
}

/// The user stages run as when the pipeline sets none: the user running
/// Sentinel, or 1000:1000 when that is root (stages are never root by default).
pub fn default_user() -> String {
    match current_uid() {
        0 => "1000:1000".to_string(),
        uid => format!("{uid}:{}", current_gid()),
    }
}

/// The `uid` and `gid` of a `uid[:gid]` user (the gid defaults to the uid).
pub fn parse_user(user: &str) -> (u32, u32) {
    let mut it = user.split(':');
    let uid = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let gid = it.next().and_then(|s| s.parse().ok()).unwrap_or(uid);
    (uid, gid)
}

/// The owner files must get, when this process may give them away (it is
/// root) and needs to (the user is another).
fn owner_for(user: &str) -> Option<(u32, u32)> {
    let (uid, gid) = parse_user(user);
    (!user.is_empty() && current_uid() == 0 && uid != 0).then_some((uid, gid))
}

pub(super) fn hand_over_one(path: &Path, user: &str) -> io::Result<()> {
    if let Some((uid, gid)) = owner_for(user) {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    }
    Ok(())
}

/// Copies the project into `dst`: what `.gitignore`, `.git/info/exclude`
/// and `.sentinelignore` exclude is left out (ignored folders are never
/// entered), so are the names in `skip` at the top level and, unless
/// `git`, the `.git` folder. Symlinks are copied as links, never followed;
/// anything but files, folders and links (a FIFO, a socket) is skipped.
/// Every entry is given to the stages' user as it is made.
pub fn copy_source(source: &Source, dst: &Path) -> io::Result<CopyStats> {
    std::fs::create_dir_all(dst)?;
    hand_over_one(dst, &source.user)?;
    let owner = owner_for(&source.user);
    let root = source.dir.clone();
    let skip = source.skip.clone();
    let git = source.git;
    let walker = ignore::WalkBuilder::new(&source.dir)
        .standard_filters(false)
        .git_ignore(true)
        .git_exclude(true)
        .require_git(false)
        .parents(false)
        .ignore(false)
        .add_custom_ignore_filename(".sentinelignore")
        .follow_links(false)
        .filter_entry(move |e| {
            if e.depth() != 1 {
                return true;
            }
            let name = e.file_name();
            if !git && name == ".git" {
                return false;
            }
            !skip.iter().any(|s| name == s.as_str())
        })
        .build();
    let mut stats = CopyStats::default();
    for entry in walker {
        let entry = entry.map_err(io::Error::other)?;
        let rel = entry.path().strip_prefix(&root).map_err(io::Error::other)?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        let Some(ft) = entry.file_type() else {
            continue;
        };
        let target = dst.join(rel);
        if ft.is_dir() {
            std::fs::create_dir_all(&target)?;
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path())?, &target)?;
        } else if ft.is_file() {
            stats.bytes += std::fs::copy(entry.path(), &target)?;
            stats.files += 1;
        } else {
            continue;
        }
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::lchown(&target, Some(uid), Some(gid))?;
        }
    }
    Ok(stats)
}

/// Copies every entry of `src` over `dst` (links as links), owned by `user`.
pub fn copy_tree(src: &Path, dst: &Path, user: &str) -> io::Result<()> {
    let owner = owner_for(user);
    for entry in walkdir::WalkDir::new(src).follow_links(false) {
        let entry = entry.map_err(io::Error::other)?;
        let rel = entry.path().strip_prefix(src).map_err(io::Error::other)?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        let target = dst.join(rel);
        let ft = entry.file_type();
        if ft.is_dir() {
            std::fs::create_dir_all(&target)?;
        } else {
            let _ = std::fs::remove_file(&target);
            if ft.is_symlink() {
                std::os::unix::fs::symlink(std::fs::read_link(entry.path())?, &target)?;
            } else {
                std::fs::copy(entry.path(), &target)?;
            }
        }
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::lchown(&target, Some(uid), Some(gid))?;
        }
    }
    Ok(())
}

/// The files under `dir` whose status changed at or after `since` (but
/// `out/`), copied into `to`; `None` past [`CAPTURE_LIMIT`] bytes.
pub fn capture_dir(dir: &Path, since: SystemTime, to: &Path) -> io::Result<Option<FileSet>> {
    let since = since
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(io::Error::other)?;
    let mut set = FileSet {
        dir: to.to_path_buf(),
        files: 0,
        bytes: 0,
    };
    std::fs::create_dir_all(to)?;
    let walker = walkdir::WalkDir::new(dir)
        .follow_links(false)
        .into_iter()
        .filter_entry(|e| !(e.depth() == 1 && e.file_name() == "out"));
    for entry in walker {
        let entry = entry.map_err(io::Error::other)?;
        let ft = entry.file_type();
        if ft.is_dir() || !(ft.is_file() || ft.is_symlink()) {
            continue;
        }
        let meta = entry.metadata().map_err(io::Error::other)?;
        let changed =
            std::time::Duration::new(meta.ctime().max(0) as u64, meta.ctime_nsec() as u32);
        if changed < since {
            continue;
        }
        let rel = entry.path().strip_prefix(dir).map_err(io::Error::other)?;
        let target = to.join(rel);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path())?, &target)?;
        } else {
            set.bytes += meta.len();
            if set.bytes > CAPTURE_LIMIT {
                let _ = std::fs::remove_dir_all(to);
                return Ok(None);
            }
            std::fs::copy(entry.path(), &target)?;
        }
        set.files += 1;
    }
    Ok(Some(set))
}

/// True when `dir` holds at least one regular file, at any depth (symlinks
/// are not followed): an artifacts folder worth publishing.
pub fn holds_files(dir: &Path) -> bool {
    walkdir::WalkDir::new(dir)
        .follow_links(false)
        .into_iter()
        .flatten()
        .any(|e| e.file_type().is_file())
}

/// Gives `path` and everything below it to `user` (`uid:gid`), when this
/// process may (it is root) and needs to (the user differs).
pub fn hand_over(path: &Path, user: &str) -> io::Result<()> {
    let Some((uid, gid)) = owner_for(user) else {
        return Ok(());
    };
    for entry in walkdir::WalkDir::new(path).follow_links(false) {
        let entry = entry.map_err(io::Error::other)?;
        std::os::unix::fs::lchown(entry.path(), Some(uid), Some(gid))?;
    }
    Ok(())
}

/// True when a finished step left its private folder as it got it, but for
/// the `output` file (already read, removed here): nothing else but an empty
/// `artifacts/` folder, so the next step sees nothing of this one.
pub fn left_clean(dir: &Path) -> bool {
    let output = dir.join("output");
    if std::fs::symlink_metadata(&output).is_ok_and(|m| m.is_file())
        && std::fs::remove_file(&output).is_err()
    {
        return false;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    let names: Vec<_> = entries.flatten().map(|e| e.file_name()).collect();
    let artifacts = dir.join("artifacts");
    names.len() == 1
        && names[0] == "artifacts"
        && std::fs::symlink_metadata(&artifacts).is_ok_and(|m| m.is_dir())
        && std::fs::read_dir(&artifacts).is_ok_and(|mut e| e.next().is_none())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(dir: &Path) -> Source {
        Source {
            dir: dir.to_path_buf(),
            skip: vec![".sentinel".into()],
            git: true,
            restore: vec![],
            user: String::new(),
            dirs: vec![],
        }
    }

    #[test]
    fn copies_without_skipped_and_ignored_and_keeps_links() {
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(src.path().join("a/b")).unwrap();
        std::fs::write(src.path().join("a/b/f.txt"), "x").unwrap();
        std::fs::create_dir_all(src.path().join(".sentinel/db")).unwrap();
        std::fs::create_dir_all(src.path().join("target/debug")).unwrap();
        std::fs::write(src.path().join("target/debug/big"), "y".repeat(4096)).unwrap();
        // Reading a FIFO blocks: a copy that entered `target/` would hang here.
        let fifo = std::process::Command::new("mkfifo")
            .arg(src.path().join("target/debug/fifo"))
            .status()
            .unwrap();
        assert!(fifo.success());
        std::fs::create_dir_all(src.path().join("cache")).unwrap();
        std::fs::write(src.path().join("cache/c"), "z").unwrap();
        std::fs::create_dir_all(src.path().join(".git")).unwrap();
        std::fs::write(src.path().join(".git/HEAD"), "ref").unwrap();
        std::fs::write(src.path().join(".gitignore"), "/target\n").unwrap();
        std::fs::write(src.path().join(".sentinelignore"), "cache/\n").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", src.path().join("link")).unwrap();
        let dst = tempfile::tempdir().unwrap();
        let stats = copy_source(&source(src.path()), &dst.path().join("ws")).unwrap();
        assert_eq!(
            stats.files, 4,
            "f.txt, .gitignore, .sentinelignore, .git/HEAD"
        );
        assert!(dst.path().join("ws/a/b/f.txt").exists());
        assert!(dst.path().join("ws/.git/HEAD").exists());
        assert!(!dst.path().join("ws/.sentinel").exists());
        assert!(!dst.path().join("ws/target").exists());
        assert!(!dst.path().join("ws/cache").exists());
        assert!(
            dst.path()
                .join("ws/link")
                .symlink_metadata()
                .unwrap()
                .file_type()
                .is_symlink()
        );
        let no_git = Source {
            git: false,
            ..source(src.path())
        };
        copy_source(&no_git, &dst.path().join("ws2")).unwrap();
        assert!(!dst.path().join("ws2/.git").exists());
    }
}
