//! Run folders on this machine. [`RunDirs`] is the engine's own part (live
//! logs, kept files of stages); [`LocalWorkspace`] is the workspace handle of
//! executors that run stages on this machine: a copy of the project made
//! for the run (what `.gitignore` and `.sentinelignore` exclude left out,
//! never the checkout itself), each stage's private folder with its output
//! file and artifacts, `out/<stage>` files, and the capture of the files a
//! stage created or changed. Also the parser of named outputs (`key=value`
//! lines in `$SENTINEL_OUTPUT`).

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use sentinel_api::{RunId, StageName};

use crate::error::ExecError;
use crate::exec::{RunContext, Workspace};

mod files;
mod outputs;

use files::hand_over_one;
pub use files::{
    capture_dir, copy_source, copy_tree, current_gid, current_uid, default_user, hand_over,
    holds_files, left_clean, parse_user,
};
pub use outputs::{OutputsError, parse_outputs};

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
    /// Folders made in the workspace (relative, checked by the pipeline's
    /// validation), owned by `user`.
    pub dirs: Vec<String>,
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
    /// The file [`LocalWorkspace::mark`] writes to read the clock of.
    marker: Mutex<Option<std::fs::File>>,
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
            marker: Mutex::default(),
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
            for d in &source.dirs {
                let mut at = dir.clone();
                for part in d.split('/') {
                    at.push(part);
                    if !at.exists() {
                        std::fs::create_dir(&at)?;
                        hand_over_one(&at, &source.user)?;
                    }
                }
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
        // Scratch folders a job's steps share (wercker's cache and report dirs).
        std::fs::create_dir_all(dir.join("cache"))?;
        std::fs::create_dir_all(dir.join("report"))?;
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
    /// one file times are written with): a write to the run's marker file
    /// (one file, made once: creating a file per stage cost more than a
    /// short step) and its modification time.
    pub fn mark(&self) -> io::Result<SystemTime> {
        use std::os::unix::fs::FileExt;
        let mut marker = self
            .marker
            .lock()
            .map_err(|_| io::Error::other("the marker's lock is poisoned"))?;
        if marker.is_none() {
            std::fs::create_dir_all(&self.stages)?;
            *marker = Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(self.stages.join(".start"))?,
            );
        }
        let file = marker.as_ref().expect("opened above");
        file.write_all_at(b"x", 0)?;
        file.metadata()?.modified()
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

    async fn hash_files(&self, patterns: &[String]) -> Result<String, ExecError> {
        let (dir, patterns) = (self.dir.clone(), patterns.to_vec());
        tokio::task::spawn_blocking(move || crate::cache::archive::hash_files(&dir, &patterns))
            .await
            .map_err(|e| ExecError::permanent("hash files", e))?
            .map_err(|e| ExecError::said(crate::error::ErrorKind::Permanent, e))
    }

    async fn restore_cache(
        &self,
        stage: &StageName,
        archive: &Path,
        staging: &Path,
        user: &str,
    ) -> Result<(), ExecError> {
        let (dir, cache) = (
            self.dir.clone(),
            self.stages.join(stage.as_str()).join("cache"),
        );
        let (archive, staging, user) = (
            archive.to_path_buf(),
            staging.to_path_buf(),
            user.to_string(),
        );
        tokio::task::spawn_blocking(move || -> io::Result<()> {
            // Restored files belong to the stage's user.
            let own = |p: &Path| hand_over(p, &user);
            crate::cache::archive::unpack(&archive, &staging, &dir, &cache, &own).map(|_| ())
        })
        .await
        .map_err(|e| ExecError::permanent("restore the cache", e))?
        .map_err(|e| ExecError::io("restore the cache", e))
    }

    async fn pack_cache(
        &self,
        stage: &StageName,
        paths: &[sentinel_pipeline::CachePath],
        to: &Path,
    ) -> Result<u64, ExecError> {
        let (dir, cache) = (
            self.dir.clone(),
            self.stages.join(stage.as_str()).join("cache"),
        );
        let (paths, to) = (paths.to_vec(), to.to_path_buf());
        tokio::task::spawn_blocking(move || crate::cache::archive::pack(&dir, &cache, &paths, &to))
            .await
            .map_err(|e| ExecError::permanent("save the cache", e))?
            .map_err(|e| ExecError::io("save the cache", e))
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
    fn captures_what_changed_since_a_mark() {
        let tmp = tempfile::tempdir().unwrap();
        let w = ws(tmp.path());
        std::fs::create_dir_all(w.dir.join("out")).unwrap();
        std::fs::write(w.dir.join("old.txt"), "old").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let since = w.mark().unwrap();
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
