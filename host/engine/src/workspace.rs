//! The run's folders on the host: a copy of the source as the workspace
//! (never the user's checkout itself), each stage's private folder with its
//! output file and artifacts folder, and the live logs. Also the parser of
//! named outputs (`key=value` lines in `$SENTINEL_OUTPUT`).

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sentinel_api::{RunId, StageName};

/// The folders of one run under the state folder.
#[derive(Debug, Clone)]
pub struct RunDirs {
    pub root: PathBuf,
    pub workspace: PathBuf,
    pub logs: PathBuf,
    pub stages: PathBuf,
}

impl RunDirs {
    /// The folders of `run` under `state_dir` (nothing is created).
    pub fn new(state_dir: &Path, run: &RunId) -> Self {
        let root = state_dir.join("runs").join(run.as_str());
        Self {
            workspace: root.join("workspace"),
            logs: root.join("logs"),
            stages: root.join("stages"),
            root,
        }
    }

    /// The live log file of a stage.
    pub fn log(&self, stage: &StageName) -> PathBuf {
        self.logs.join(format!("{stage}.log"))
    }

    /// A stage's private folder (mounted at `/sentinel`).
    pub fn private(&self, stage: &StageName) -> PathBuf {
        self.stages.join(stage.as_str())
    }
}

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

fn parse_user(user: &str) -> (u32, u32) {
    let mut it = user.split(':');
    let uid = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let gid = it.next().and_then(|s| s.parse().ok()).unwrap_or(uid);
    (uid, gid)
}

/// Copies `src` into `dst`, skipping the names in `skip` at the top level.
/// Symlinks are copied as links, never followed.
pub fn copy_source(src: &Path, dst: &Path, skip: &[&str]) -> io::Result<u64> {
    std::fs::create_dir_all(dst)?;
    let mut files = 0;
    let walker = walkdir::WalkDir::new(src).follow_links(false).into_iter();
    for entry in
        walker.filter_entry(|e| e.depth() != 1 || !skip.iter().any(|s| e.file_name() == *s))
    {
        let entry = entry.map_err(io::Error::other)?;
        let rel = entry.path().strip_prefix(src).map_err(io::Error::other)?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        let target = dst.join(rel);
        let ft = entry.file_type();
        if ft.is_dir() {
            std::fs::create_dir_all(&target)?;
        } else if ft.is_symlink() {
            let link = std::fs::read_link(entry.path())?;
            std::os::unix::fs::symlink(link, &target)?;
        } else if ft.is_file() {
            std::fs::copy(entry.path(), &target)?;
            files += 1;
        }
    }
    Ok(files)
}

/// Gives `path` and everything below it to `user` (`uid:gid`), when this
/// process may (it is root) and needs to (the user differs).
pub fn hand_over(path: &Path, user: &str) -> io::Result<()> {
    let (uid, gid) = parse_user(user);
    if user.is_empty() || current_uid() != 0 || uid == 0 {
        return Ok(());
    }
    for entry in walkdir::WalkDir::new(path).follow_links(false) {
        let entry = entry.map_err(io::Error::other)?;
        std::os::unix::fs::lchown(entry.path(), Some(uid), Some(gid))?;
    }
    Ok(())
}

/// Creates a stage's private folder: an empty `output` file and `artifacts/`.
pub fn prepare_private(dir: &Path, user: &str) -> io::Result<()> {
    std::fs::create_dir_all(dir.join("artifacts"))?;
    std::fs::write(dir.join("output"), b"")?;
    hand_over(dir, user)
}

/// Parses `$SENTINEL_OUTPUT`: `key=value` lines, and `key<<DELIM` … `DELIM`
/// for multi-line values. Returns the outputs or a message naming the line.
pub fn parse_outputs(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    let mut lines = text.lines().enumerate();
    while let Some((n, line)) = lines.next() {
        if line.trim().is_empty() {
            continue;
        }
        let valid_key = |k: &str| {
            !k.is_empty()
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        if let Some((key, delim)) = line.split_once("<<")
            && valid_key(key)
            && !delim.is_empty()
            && !line.contains('=')
        {
            let mut value = Vec::new();
            let mut closed = false;
            for (_, l) in lines.by_ref() {
                if l == delim {
                    closed = true;
                    break;
                }
                value.push(l);
            }
            if !closed {
                return Err(format!(
                    "line {}: `{key}<<{delim}` is never closed by `{delim}`",
                    n + 1
                ));
            }
            out.insert(key.to_string(), value.join("\n"));
            continue;
        }
        match line.split_once('=') {
            Some((key, value)) if valid_key(key) => {
                out.insert(key.to_string(), value.to_string());
            }
            _ => {
                return Err(format!(
                    "line {}: expected `key=value` or `key<<DELIMITER`",
                    n + 1
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs() {
        let o = parse_outputs("a=1\nurl=http://x?y=z\n\nmulti<<EOF\nl1\nl2\nEOF\n").unwrap();
        assert_eq!(o["a"], "1");
        assert_eq!(o["url"], "http://x?y=z");
        assert_eq!(o["multi"], "l1\nl2");
        assert!(parse_outputs("oops").unwrap_err().contains("line 1"));
        assert!(
            parse_outputs("m<<X\nnever")
                .unwrap_err()
                .contains("never closed")
        );
    }

    #[test]
    fn copies_without_skipped_and_keeps_links() {
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(src.path().join("a/b")).unwrap();
        std::fs::write(src.path().join("a/b/f.txt"), "x").unwrap();
        std::fs::create_dir_all(src.path().join(".sentinel/db")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", src.path().join("link")).unwrap();
        let dst = tempfile::tempdir().unwrap();
        let n = copy_source(src.path(), &dst.path().join("ws"), &[".sentinel"]).unwrap();
        assert_eq!(n, 1);
        assert!(dst.path().join("ws/a/b/f.txt").exists());
        assert!(!dst.path().join("ws/.sentinel").exists());
        assert!(
            dst.path()
                .join("ws/link")
                .symlink_metadata()
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }
}
