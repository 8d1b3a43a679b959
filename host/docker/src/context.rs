//! A build context as the tar Docker reads: the files of a workspace folder
//! that `.dockerignore` keeps, with Docker's own matching rules (patterns
//! anchored at the context's root, `**` across folders, `!` exceptions, the
//! last matching pattern deciding, a folder's pattern covering what is in
//! it). Excluded folders are not entered; symbolic links are sent as links,
//! never followed; special files (FIFOs, sockets, devices) are sent as
//! their headers and never opened. Owners are 0:0, as `docker build` sends
//! them.

use std::io::Write;
use std::path::{Path, PathBuf};

use globset::{GlobBuilder, GlobMatcher};

/// One `.dockerignore` line.
struct Pattern {
    text: String,
    glob: GlobMatcher,
    /// `!pattern`: keeps what earlier patterns excluded.
    exception: bool,
}

/// The patterns of a `.dockerignore`, in order.
pub(crate) struct Ignore {
    patterns: Vec<Pattern>,
}

impl Ignore {
    /// Reads `.dockerignore` as Docker does: `#` comments and blank lines
    /// skipped, each pattern trimmed and cleaned, a leading `/` dropped.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let mut patterns = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (exception, p) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            let cleaned = clean(p);
            if cleaned.is_empty() {
                continue;
            }
            let glob = GlobBuilder::new(&cleaned)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|e| format!(".dockerignore line {}: `{line}`: {e}", n + 1))?
                .compile_matcher();
            patterns.push(Pattern {
                text: cleaned,
                glob,
                exception,
            });
        }
        Ok(Self { patterns })
    }

    /// True when `rel` (a `/`-separated path in the context) is left out:
    /// the last pattern matching it or one of its parent folders decides.
    pub(crate) fn excludes(&self, rel: &str) -> bool {
        let mut excluded = false;
        for p in &self.patterns {
            // An exclusion only matters once excluded, and the reverse.
            if p.exception != excluded {
                continue;
            }
            let mut hit = p.glob.is_match(rel);
            if !hit {
                let mut prefix = String::new();
                let parts: Vec<&str> = rel.split('/').collect();
                for part in &parts[..parts.len().saturating_sub(1)] {
                    if !prefix.is_empty() {
                        prefix.push('/');
                    }
                    prefix.push_str(part);
                    if p.glob.is_match(&prefix) {
                        hit = true;
                        break;
                    }
                }
            }
            if hit {
                excluded = !p.exception;
            }
        }
        excluded
    }

    /// True when an excluded folder may still hold something an exception
    /// brings back (so it must be walked).
    fn may_keep_inside(&self, dir: &str) -> bool {
        self.patterns.iter().any(|p| {
            p.exception
                && (p.text.starts_with(&format!("{dir}/")) || p.text.starts_with(['*', '?', '[']))
        })
    }
}

/// Go's `filepath.Clean` for a pattern, without a leading `/`.
fn clean(p: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out.join("/")
}

/// What was sent.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Sent {
    pub files: u64,
    pub bytes: u64,
}

/// Writes the context `dir` as a tar to `out`; `keep` are paths always sent
/// (the Dockerfile and `.dockerignore`: Docker needs them even when the
/// file leaves them out).
pub(crate) fn write_tar<W: Write>(dir: &Path, keep: &[String], out: W) -> Result<Sent, String> {
    let ignore = match std::fs::read_to_string(dir.join(".dockerignore")) {
        Ok(text) => Ignore::parse(&text)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ignore::parse("")?,
        Err(e) => return Err(format!("cannot read .dockerignore: {e}")),
    };
    let mut tar = tar::Builder::new(out);
    tar.follow_symlinks(false);
    let mut sent = Sent::default();
    let mut walk = walkdir::WalkDir::new(dir)
        .follow_links(false)
        .sort_by_file_name()
        .min_depth(1)
        .into_iter();
    while let Some(entry) = walk.next() {
        let entry = entry.map_err(|e| format!("cannot read the context: {e}"))?;
        let rel = rel_path(dir, entry.path())?;
        let is_dir = entry.file_type().is_dir();
        if ignore.excludes(&rel) && !keep.contains(&rel) {
            if is_dir && !ignore.may_keep_inside(&rel) {
                walk.skip_current_dir();
            }
            continue;
        }
        let meta = entry
            .path()
            .symlink_metadata()
            .map_err(|e| format!("cannot read `{rel}`: {e}"))?;
        let mut header = tar::Header::new_gnu();
        header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
        header.set_uid(0);
        header.set_gid(0);
        let _ = header.set_username("");
        let _ = header.set_groupname("");
        let ft = meta.file_type();
        let write =
            |tar: &mut tar::Builder<W>, header: &mut tar::Header, data: &mut dyn std::io::Read| {
                tar.append_data(header, &rel, data)
                    .map_err(|e| format!("cannot send `{rel}`: {e}"))
            };
        if ft.is_file() {
            let mut f = std::fs::File::open(entry.path())
                .map_err(|e| format!("cannot read `{rel}`: {e}"))?;
            header.set_size(meta.len());
            write(&mut tar, &mut header, &mut f)?;
            sent.bytes += meta.len();
        } else if ft.is_symlink() {
            let target = std::fs::read_link(entry.path())
                .map_err(|e| format!("cannot read the link `{rel}`: {e}"))?;
            header.set_size(0);
            tar.append_link(&mut header, &rel, &target)
                .map_err(|e| format!("cannot send `{rel}`: {e}"))?;
        } else {
            // Folders and special files: the header alone; never opened.
            header.set_size(0);
            write(&mut tar, &mut header, &mut std::io::empty())?;
        }
        sent.files += 1;
    }
    tar.finish()
        .map_err(|e| format!("cannot finish the context: {e}"))?;
    Ok(sent)
}

fn rel_path(dir: &Path, p: &Path) -> Result<String, String> {
    let rel: PathBuf = p
        .strip_prefix(dir)
        .map_err(|_| format!("`{}` is outside the context", p.display()))?
        .to_path_buf();
    rel.to_str()
        .map(str::to_string)
        .ok_or_else(|| format!("`{}` is not a UTF-8 path", rel.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ignore(text: &str) -> Ignore {
        Ignore::parse(text).unwrap()
    }

    #[test]
    fn patterns_follow_docker_rules() {
        let i = ignore("# comment\n\n*.log\n/tmp\nbig/\n!big/keep.txt\n**/*.o\n");
        // Anchored at the root: `*.log` is top-level only.
        assert!(i.excludes("a.log"));
        assert!(!i.excludes("src/a.log"));
        // A folder's pattern covers what is in it; cleaning drops `/`.
        assert!(i.excludes("tmp"));
        assert!(i.excludes("tmp/x/y"));
        assert!(i.excludes("big/data.bin"));
        // An exception brings a file back.
        assert!(!i.excludes("big/keep.txt"));
        // `**` crosses folders.
        assert!(i.excludes("x.o"));
        assert!(i.excludes("a/b/c.o"));
        assert!(!i.excludes("src/main.rs"));
    }

    #[test]
    fn the_last_matching_pattern_decides() {
        let i = ignore("!keep.txt\n*.txt\n");
        assert!(i.excludes("keep.txt"));
        let i = ignore("*.txt\n!keep.txt\n");
        assert!(!i.excludes("keep.txt"));
        assert!(i.excludes("other.txt"));
    }

    #[test]
    fn excluded_folders_are_not_entered_and_links_are_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let ctx = d.path();
        std::fs::write(ctx.join("Dockerfile"), "FROM scratch\n").unwrap();
        std::fs::write(ctx.join(".dockerignore"), "ignored\nDockerfile\n").unwrap();
        std::fs::create_dir(ctx.join("ignored")).unwrap();
        // A FIFO in an excluded folder: opening it would block forever.
        let fifo = ctx.join("ignored/pipe");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        std::os::unix::fs::symlink("/etc/passwd", ctx.join("link")).unwrap();
        let mut out = Vec::new();
        let sent = write_tar(
            ctx,
            &["Dockerfile".into(), ".dockerignore".into()],
            &mut out,
        )
        .unwrap();
        let mut names = Vec::new();
        let mut archive = tar::Archive::new(&out[..]);
        for e in archive.entries().unwrap() {
            let e = e.unwrap();
            let name = e.path().unwrap().display().to_string();
            if name == "link" {
                assert_eq!(e.header().entry_type(), tar::EntryType::Symlink);
                assert_eq!(
                    e.link_name().unwrap().unwrap().display().to_string(),
                    "/etc/passwd"
                );
                assert_eq!(e.header().size().unwrap(), 0);
            }
            assert_eq!(e.header().uid().unwrap(), 0);
            names.push(name);
        }
        // The Dockerfile is sent although the file excludes it.
        assert_eq!(names, vec![".dockerignore", "Dockerfile", "link"]);
        assert_eq!(sent.files, 3);
    }
}
