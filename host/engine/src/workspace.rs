//! Run folders on this machine. [`RunDirs`] is the engine's own part (live
//! logs, kept files of stages); [`LocalWorkspace`] is the workspace handle of
//! executors that run stages on this machine: a copy of the project made
//! for the run (what `.gitignore` and `.sentinelignore` exclude left out,
//! never the checkout itself), each stage's private folder with its output
//! file and artifacts, `out/<stage>` files, and the capture of the files a
//! stage created or changed. Also the parser of named outputs (`key=value`
//! lines in `$SENTINEL_OUTPUT`).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use sentinel_api::{RunId, StageName};

use crate::error::ExecError;
use crate::exec::{RunContext, Workspace};

/// The engine's folders of one run under the state folder.
#[derive(Debug, Clone)]
pub struct RunDirs {
    pub root: PathBuf,
    pub logs: PathBuf,
}

impl RunDirs {
    /// The folders of `run` under `state_dir` (nothing is created).
    pub fn new(state_dir: &Path, run: &RunId) -> Self {
        let root = runs_dir(state_dir).join(run.as_str());
        Self {
            logs: root.join("logs"),
            root,
        }
    }

    /// The live log file of a stage.
    pub fn log(&self, stage: &StageName) -> PathBuf {
        self.logs.join(format!("{stage}.log"))
    }
}

/// Where run folders live under a state folder.
pub fn runs_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("runs")
}

/// What a run's workspace is made from.
#[derive(Debug, Clone)]
pub struct Source {
    /// The project folder on this machine.
    pub dir: PathBuf,
    /// Top-level names left out (the state and results folders).
    pub skip: Vec<String>,
    /// Copy the project's `.git` folder.
    pub git: bool,
    /// Files kept from earlier stages (a re-run), laid over the copy in order.
    pub restore: Vec<PathBuf>,
    /// `uid:gid` that owns the workspace's files (the stages' user).
    pub user: String,
}

/// Files of the workspace a stage created or changed, kept in a folder of
/// this machine laid out as in the workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSet {
    pub dir: PathBuf,
    pub files: u64,
    pub bytes: u64,
}

/// A folder of this machine showing the workspace to a step in this process.
#[derive(Debug, Clone)]
pub struct View {
    pub dir: PathBuf,
    pub write: bool,
}

/// What copying the project into the workspace did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyStats {
    pub files: u64,
    pub bytes: u64,
}

/// The most bytes of files kept for one stage; a stage that creates more
/// has none kept (a re-run runs it again, and says so).
pub const CAPTURE_LIMIT: u64 = 1 << 30;

/// A workspace that is a folder of this machine.
#[derive(Debug)]
pub struct LocalWorkspace {
    /// The run's folder (`<state>/runs/<run>`).
    pub root: PathBuf,
    /// The workspace itself.
    pub dir: PathBuf,
    /// Stages' private folders.
    pub stages: PathBuf,
    /// `out/<stage>` files already written.
    outs: Mutex<BTreeSet<StageName>>,
    /// Empty private folders of finished steps, for the run's next steps.
    spare: Arc<Mutex<Vec<PathBuf>>>,
}

impl LocalWorkspace {
    /// A handle on the folders of a run (nothing is created).
    pub fn at(root: PathBuf) -> Self {
        Self {
            dir: root.join("workspace"),
            stages: root.join("stages"),
            root,
            outs: Mutex::default(),
            spare: Arc::default(),
        }
    }

    /// Makes the workspace of a run: a copy of the source.
    pub async fn prepare(ctx: &RunContext, source: &Source) -> Result<Self, ExecError> {
        let ws = Self::at(ctx.runs_dir.join(ctx.run_id.as_str()));
        let (dir, source) = (ws.dir.clone(), source.clone());
        tokio::task::spawn_blocking(move || -> io::Result<()> {
            copy_source(&source, &dir)?;
            for kept in &source.restore {
                copy_tree(kept, &dir, &source.user)?;
            }
            std::fs::create_dir_all(dir.join("out"))?;
            hand_over_one(&dir.join("out"), &source.user)
        })
        .await
        .map_err(|e| ExecError::permanent("prepare the workspace", e))?
        .map_err(|e| ExecError::io("prepare the workspace", e))?;
        Ok(ws)
    }

    /// Writes `out/<stage>` for every output not written yet.
    pub fn write_outputs(&self, outputs: &[(StageName, Arc<Vec<u8>>)]) -> io::Result<()> {
        let mut done = self.outs.lock().map_err(|_| io::Error::other("poisoned"))?;
        for (stage, bytes) in outputs {
            if done.contains(stage) {
                continue;
            }
            std::fs::write(self.dir.join("out").join(stage.as_str()), bytes.as_slice())?;
            done.insert(stage.clone());
        }
        Ok(())
    }

    /// A container stage's private folder: an empty `output` file and
    /// `artifacts/`, owned by `user`.
    pub fn container_private(&self, stage: &StageName, user: &str) -> io::Result<PathBuf> {
        let dir = self.stages.join(stage.as_str());
        std::fs::create_dir_all(dir.join("artifacts"))?;
        std::fs::write(dir.join("output"), b"")?;
        hand_over(&dir, user)?;
        Ok(dir)
    }

    /// A step's private folder: one an earlier step of the run left empty,
    /// or a new one holding an empty `artifacts/` (the step creates
    /// `output` when it sets one).
    pub fn step_private(&self, stage: &StageName) -> io::Result<PathBuf> {
        if let Some(dir) = self.spare.lock().ok().and_then(|mut s| s.pop()) {
            return Ok(dir);
        }
        let dir = self.stages.join(stage.as_str());
        std::fs::create_dir_all(dir.join("artifacts"))?;
        Ok(dir)
    }

    /// Takes what a stage left in its private folder: the named outputs
    /// text and the artifacts folder (when it holds files). A step's folder
    /// left clean serves the run's next step.
    pub fn take_private(&self, dir: &Path, step: bool) -> (Option<String>, Option<PathBuf>) {
        let outputs = std::fs::read_to_string(dir.join("output"))
            .ok()
            .filter(|t| !t.trim().is_empty());
        let artifacts = dir.join("artifacts");
        let artifacts = holds_files(&artifacts).then_some(artifacts);
        if step
            && artifacts.is_none()
            && left_clean(dir)
            && let Ok(mut spare) = self.spare.lock()
        {
            spare.push(dir.to_path_buf());
        }
        (outputs, artifacts)
    }

    /// Marks now as the start of a stage, in the file system's own clock (the
    /// one file times are written with).
    pub fn mark(&self, stage: &StageName) -> io::Result<SystemTime> {
        std::fs::create_dir_all(&self.stages)?;
        let marker = self.stages.join(format!(".start-{stage}"));
        std::fs::write(&marker, b"")?;
        let t = std::fs::metadata(&marker)?.modified()?;
        let _ = std::fs::remove_file(&marker);
        Ok(t)
    }

    /// Copies the workspace's files changed since `since` (but `out/`) into
    /// `to`; `None` when there are more than [`CAPTURE_LIMIT`] bytes of them.
    pub fn capture(&self, since: SystemTime, to: &Path) -> io::Result<Option<FileSet>> {
        capture_dir(&self.dir, since, to)
    }
}

#[async_trait]
impl Workspace for LocalWorkspace {
    fn describe(&self) -> String {
        self.dir.display().to_string()
    }

    fn local(&self) -> Option<&LocalWorkspace> {
        Some(self)
    }

    async fn open_view(&self, write: bool) -> Result<View, ExecError> {
        Ok(View {
            dir: self.dir.clone(),
            write,
        })
    }

    async fn close_view(&self, _view: View) -> Result<(), ExecError> {
        Ok(())
    }

    async fn remove(&self) {
        let (dir, stages) = (self.dir.clone(), self.stages.clone());
        let _ = tokio::task::spawn_blocking(move || {
            let _ = std::fs::remove_dir_all(dir);
            let _ = std::fs::remove_dir_all(stages);
        })
        .await;
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

/// The owner files must get, when this process may give them away (it is
/// root) and needs to (the user is another).
fn owner_for(user: &str) -> Option<(u32, u32)> {
    let (uid, gid) = parse_user(user);
    (!user.is_empty() && current_uid() == 0 && uid != 0).then_some((uid, gid))
}

fn hand_over_one(path: &Path, user: &str) -> io::Result<()> {
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

/// A `$SENTINEL_OUTPUT` line that is not `key=value` or `key<<DELIM`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct OutputsError {
    pub line: usize,
    pub message: String,
}

/// Parses `$SENTINEL_OUTPUT`: `key=value` lines, and `key<<DELIM` … `DELIM`
/// for multi-line values. Returns the outputs or what is wrong, and where.
pub fn parse_outputs(text: &str) -> Result<BTreeMap<String, String>, OutputsError> {
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
                return Err(OutputsError {
                    line: n + 1,
                    message: format!("`{key}<<{delim}` is never closed by `{delim}`"),
                });
            }
            out.insert(key.to_string(), value.join("\n"));
            continue;
        }
        match line.split_once('=') {
            Some((key, value)) if valid_key(key) => {
                out.insert(key.to_string(), value.to_string());
            }
            _ => {
                return Err(OutputsError {
                    line: n + 1,
                    message: "expected `key=value` or `key<<DELIMITER`".into(),
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws(dir: &Path) -> LocalWorkspace {
        LocalWorkspace::at(dir.to_path_buf())
    }

    #[test]
    fn step_folders_are_reused_only_when_left_clean() {
        let tmp = tempfile::tempdir().unwrap();
        let w = ws(tmp.path());
        let a = w.step_private(&"a".parse().unwrap()).unwrap();
        assert!(a.join("artifacts").is_dir());
        assert!(
            !a.join("output").exists(),
            "a step creates its output itself"
        );
        // Its output, once read, is removed: the folder is clean again.
        std::fs::write(a.join("output"), "k=v\n").unwrap();
        let (outputs, artifacts) = w.take_private(&a, true);
        assert_eq!(outputs.as_deref(), Some("k=v\n"));
        assert!(artifacts.is_none());
        assert!(!a.join("output").exists());
        let b = w.step_private(&"b".parse().unwrap()).unwrap();
        assert_eq!(b, a, "the clean folder serves the next step");
        let c = w.step_private(&"c".parse().unwrap()).unwrap();
        assert_ne!(c, a, "a folder in use is never handed out twice");

        // Anything left behind keeps a folder from being reused.
        std::fs::write(b.join("note"), "x").unwrap();
        assert!(!left_clean(&b));
        std::fs::write(c.join("artifacts/report.txt"), "x").unwrap();
        let (_, artifacts) = w.take_private(&c, true);
        assert_eq!(artifacts, Some(c.join("artifacts")));
        let d = w.step_private(&"d".parse().unwrap()).unwrap();
        assert_ne!(d, c, "a folder with artifacts is not reused");
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
        assert!(
            parse_outputs("oops")
                .unwrap_err()
                .to_string()
                .contains("line 1")
        );
        assert!(
            parse_outputs("m<<X\nnever")
                .unwrap_err()
                .to_string()
                .contains("never closed")
        );
    }

    fn source(dir: &Path) -> Source {
        Source {
            dir: dir.to_path_buf(),
            skip: vec![".sentinel".into()],
            git: true,
            restore: vec![],
            user: String::new(),
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

    #[test]
    fn captures_what_changed_since_a_mark() {
        let tmp = tempfile::tempdir().unwrap();
        let w = ws(tmp.path());
        std::fs::create_dir_all(w.dir.join("out")).unwrap();
        std::fs::write(w.dir.join("old.txt"), "old").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let since = w.mark(&"s".parse().unwrap()).unwrap();
        std::fs::create_dir_all(w.dir.join("new")).unwrap();
        std::fs::write(w.dir.join("new/made.txt"), "made").unwrap();
        std::fs::write(w.dir.join("out/s"), "output").unwrap();
        let set = w.capture(since, &tmp.path().join("kept")).unwrap().unwrap();
        assert_eq!((set.files, set.bytes), (1, 4));
        assert!(tmp.path().join("kept/new/made.txt").is_file());
        assert!(!tmp.path().join("kept/old.txt").exists());
        assert!(!tmp.path().join("kept/out").exists());
    }
}
