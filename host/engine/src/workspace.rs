//! The run's folders on the host: a copy of the source as the workspace
//! (never the user's checkout itself), each stage's private folder with its
//! output file and artifacts folder, and the live logs. A step's private
//! folder that the step left as it got it is handed to the run's next step
//! (creating folders is the costliest part of a short step). Also the parser
//! of named outputs (`key=value` lines in `$SENTINEL_OUTPUT`).

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sentinel_api::{RunId, StageName};

/// The folders of one run under the state folder.
#[derive(Debug, Clone)]
pub struct RunDirs {
    pub root: PathBuf,
    pub workspace: PathBuf,
    pub logs: PathBuf,
    pub stages: PathBuf,
    /// Empty private folders of finished steps, for the run's next steps.
    spare: Arc<Mutex<Vec<PathBuf>>>,
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
            spare: Arc::default(),
        }
    }

    /// A private folder for a step: one an earlier step of the run left
    /// empty, or a new one holding an empty `artifacts/` (the step creates
    /// `output` when it sets one).
    pub fn step_private(&self, stage: &StageName) -> io::Result<PathBuf> {
        if let Some(dir) = self.spare.lock().ok().and_then(|mut s| s.pop()) {
            return Ok(dir);
        }
        let dir = self.private(stage);
        std::fs::create_dir_all(dir.join("artifacts"))?;
        Ok(dir)
    }

    /// Offers a finished step's private folder to the run's next steps; call
    /// it only after the folder's output and artifacts were taken, and only
    /// when [`left_clean`] said so.
    pub fn reuse_step_private(&self, dir: PathBuf) {
        if let Ok(mut spare) = self.spare.lock() {
            spare.push(dir);
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
    fn step_folders_are_reused_only_when_left_clean() {
        let tmp = tempfile::tempdir().unwrap();
        let run: RunId = "01JDX3K6Q2T8W9V5M4N3P2R1S0".parse().unwrap();
        let dirs = RunDirs::new(tmp.path(), &run);
        let a = dirs.step_private(&"a".parse().unwrap()).unwrap();
        assert!(a.join("artifacts").is_dir());
        assert!(
            !a.join("output").exists(),
            "a step creates its output itself"
        );
        // Its output, once read, is removed: the folder is clean again.
        std::fs::write(a.join("output"), "k=v\n").unwrap();
        assert!(left_clean(&a));
        assert!(!a.join("output").exists());
        dirs.reuse_step_private(a.clone());
        let b = dirs.step_private(&"b".parse().unwrap()).unwrap();
        assert_eq!(b, a, "the clean folder serves the next step");
        let c = dirs.step_private(&"c".parse().unwrap()).unwrap();
        assert_ne!(c, a, "a folder in use is never handed out twice");

        // Anything left behind keeps a folder from being reused.
        std::fs::write(b.join("note"), "x").unwrap();
        assert!(!left_clean(&b));
        std::fs::write(c.join("artifacts/report.txt"), "x").unwrap();
        assert!(!left_clean(&c));
        let d = dirs.step_private(&"d".parse().unwrap()).unwrap();
        std::fs::remove_dir(d.join("artifacts")).unwrap();
        std::os::unix::fs::symlink("/etc", d.join("artifacts")).unwrap();
        assert!(!left_clean(&d), "a symlink is not the artifacts folder");
    }

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
