//! A stage's log pipeline: raw chunks from the executor are masked (one
//! stream masker per stream), capped (the head and the tail are kept, the
//! middle is cut with a marker saying how much), written to the stage's log
//! file, and the raw stdout is kept (capped) to become the stage's output.
//! A log lives in memory until it is worth a file (past [`SPILL_BYTES`], or
//! still being written after [`SPILL_AFTER`]): most short steps never create
//! one, and an empty log never exists. It runs on a blocking thread so
//! masking and file writes never stall the async runtime.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::exec::{Chunk, Stream};
use crate::masker::{SecretSet, StreamMasker};

/// The most stdout kept as a stage's output.
pub const OUTPUT_LIMIT: usize = 1 << 20;

/// A log this long moves from memory to its file.
pub const SPILL_BYTES: usize = 64 << 10;
/// A log still being written this long after its first byte moves to its
/// file, so `sentinel logs` can read a running stage's log.
pub const SPILL_AFTER: Duration = Duration::from_millis(250);

/// A callback that sees masked log bytes as they are written (live view).
pub type LiveLog = Box<dyn FnMut(&[u8]) + Send>;

/// How to write one stage's log.
pub struct LogConfig {
    pub path: PathBuf,
    /// Bytes kept; the rest is cut from the middle.
    pub limit: u64,
    /// Keep stdout out of the log (it is still captured as the output).
    pub sensitive: bool,
    pub secrets: Arc<SecretSet>,
    pub live: Option<LiveLog>,
}

impl std::fmt::Debug for LogConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogConfig")
            .field("path", &self.path)
            .field("limit", &self.limit)
            .field("sensitive", &self.sensitive)
            .finish()
    }
}

/// What the log pipeline saw.
#[derive(Debug, Default)]
pub struct LogSummary {
    /// Masked bytes produced, before any cut.
    pub bytes: u64,
    /// Bytes cut from the middle.
    pub cut: u64,
    /// Raw stdout, up to [`OUTPUT_LIMIT`].
    pub stdout: Vec<u8>,
    /// True when stdout was longer than [`OUTPUT_LIMIT`].
    pub stdout_truncated: bool,
    /// A write error, if the log could not be written.
    pub error: Option<String>,
    /// Where the finished log is: its file, or memory when it stayed small;
    /// `None` when the stage logged nothing.
    pub body: Option<LogBody>,
}

/// A finished log, in its file or in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogBody {
    File(PathBuf),
    Memory(Vec<u8>),
}

/// Where log bytes go: memory until the log is worth a file.
enum Dest {
    Memory {
        buf: Vec<u8>,
        since: Option<Instant>,
    },
    File(BufWriter<File>),
}

impl Dest {
    fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Dest::Memory { buf, since } => {
                if since.is_none() && !data.is_empty() {
                    *since = Some(Instant::now());
                }
                buf.extend_from_slice(data);
                Ok(())
            }
            Dest::File(f) => f.write_all(data),
        }
    }

    /// When a log in memory must move to its file.
    fn deadline(&self) -> Option<Instant> {
        match self {
            Dest::Memory { since, .. } => since.map(|t| t + SPILL_AFTER),
            Dest::File(_) => None,
        }
    }

    /// Moves a log in memory to `path` when it is due (or `now`).
    fn spill_if_due(&mut self, path: &std::path::Path, now: bool) -> std::io::Result<()> {
        let due = match self {
            Dest::Memory { buf, since } => {
                now || buf.len() >= SPILL_BYTES || since.is_some_and(|t| t.elapsed() >= SPILL_AFTER)
            }
            Dest::File(_) => false,
        };
        if due && let Dest::Memory { buf, .. } = self {
            let mut file = BufWriter::new(File::create(path)?);
            file.write_all(buf)?;
            file.flush()?;
            *self = Dest::File(file);
        }
        Ok(())
    }
}

struct Capped {
    file: Dest,
    head_left: u64,
    tail: VecDeque<u8>,
    tail_cap: usize,
    bytes: u64,
    cut: u64,
}

impl Capped {
    fn write(&mut self, mut data: &[u8]) -> std::io::Result<()> {
        self.bytes += data.len() as u64;
        if self.head_left > 0 {
            let n = (self.head_left as usize).min(data.len());
            self.file.write_all(&data[..n])?;
            self.head_left -= n as u64;
            data = &data[n..];
        }
        if data.is_empty() {
            return Ok(());
        }
        self.tail.extend(data);
        if self.tail.len() > self.tail_cap {
            let extra = self.tail.len() - self.tail_cap;
            self.tail.drain(..extra);
            self.cut += extra as u64;
        }
        Ok(())
    }

    /// Writes the kept tail; returns the bytes seen, the bytes cut and where
    /// the log is.
    fn finish(mut self, limit: u64) -> std::io::Result<(u64, u64, Dest)> {
        if self.cut > 0 {
            // Resume at a line start so the tail reads cleanly.
            let skip = self
                .tail
                .iter()
                .position(|b| *b == b'\n')
                .map_or(0, |i| i + 1)
                .min(self.tail.len());
            self.tail.drain(..skip);
            self.cut += skip as u64;
            let marker = format!(
                "\n[sentinel: {} bytes cut from the middle of this log; log_limit is {} bytes]\n",
                self.cut, limit
            );
            self.file.write_all(marker.as_bytes())?;
        }
        let (a, b) = self.tail.as_slices();
        self.file.write_all(a)?;
        self.file.write_all(b)?;
        if let Dest::File(f) = &mut self.file {
            f.flush()?;
        }
        Ok((self.bytes, self.cut, self.file))
    }
}

/// Waits for the next chunk, at most until `deadline`.
enum Next {
    Chunk(Chunk),
    Due,
    Closed,
}

fn next(rx: &mut mpsc::Receiver<Chunk>, deadline: Option<Instant>) -> Next {
    let got = match deadline {
        None => rx.blocking_recv(),
        Some(at) => {
            let wait = tokio::time::timeout_at(at.into(), rx.recv());
            match tokio::runtime::Handle::current().block_on(wait) {
                Ok(got) => got,
                Err(_) => return Next::Due,
            }
        }
    };
    got.map_or(Next::Closed, Next::Chunk)
}

/// The most of a cut log's end kept (in memory until the stage ends).
pub const TAIL_MAX: u64 = 8 << 20;

/// Starts the log pipeline; it ends when every sender of `rx` is dropped.
pub fn spawn_log_writer(
    mut cfg: LogConfig,
    mut rx: mpsc::Receiver<Chunk>,
) -> JoinHandle<LogSummary> {
    tokio::task::spawn_blocking(move || {
        let mut summary = LogSummary::default();
        // Past the limit, the newest bytes are kept in memory until the end:
        // at most TAIL_MAX of them, so memory stays flat for any limit.
        let tail = (cfg.limit / 2).min(TAIL_MAX);
        let head = cfg.limit - tail;
        let mut capped = Capped {
            file: Dest::Memory {
                buf: Vec::new(),
                since: None,
            },
            head_left: head,
            tail: VecDeque::new(),
            tail_cap: tail as usize,
            bytes: 0,
            cut: 0,
        };
        let mut maskers = [
            StreamMasker::new(cfg.secrets.clone()),
            StreamMasker::new(cfg.secrets.clone()),
        ];
        let mut out = Vec::new();
        let mut result = Ok(());
        if cfg.sensitive {
            result =
                capped.write(b"[sentinel: this stage is sensitive; its stdout is not logged]\n");
        }
        loop {
            let chunk = match next(&mut rx, capped.file.deadline()) {
                Next::Chunk(c) => c,
                Next::Due => {
                    if result.is_ok() {
                        result = capped.file.spill_if_due(&cfg.path, true);
                    }
                    continue;
                }
                Next::Closed => break,
            };
            capture(&mut summary, &chunk);
            if cfg.sensitive && chunk.stream == Stream::Stdout {
                continue;
            }
            let i = usize::from(chunk.stream == Stream::Stderr);
            out.clear();
            // The other stream's finished lines first: they came before.
            maskers[1 - i].flush_at_line_end(&mut out);
            maskers[i].push(&chunk.bytes, &mut out);
            if let Some(live) = cfg.live.as_mut() {
                live(&out);
            }
            if result.is_ok() {
                result = capped
                    .write(&out)
                    .and_then(|()| capped.file.spill_if_due(&cfg.path, false));
            }
        }
        for m in &mut maskers {
            out.clear();
            m.finish(&mut out);
            if let Some(live) = cfg.live.as_mut() {
                live(&out);
            }
            if result.is_ok() {
                result = capped.write(&out);
            }
        }
        match result.and_then(|()| capped.finish(cfg.limit)) {
            Ok((bytes, cut, dest)) => {
                summary.bytes = bytes;
                summary.cut = cut;
                summary.body = match dest {
                    Dest::Memory { buf, .. } if buf.is_empty() => None,
                    Dest::Memory { buf, .. } => Some(LogBody::Memory(buf)),
                    Dest::File(_) => Some(LogBody::File(cfg.path.clone())),
                };
            }
            Err(e) => summary.error = Some(format!("cannot write {}: {e}", cfg.path.display())),
        }
        summary
    })
}

fn capture(summary: &mut LogSummary, chunk: &Chunk) {
    if chunk.stream != Stream::Stdout {
        return;
    }
    let room = OUTPUT_LIMIT.saturating_sub(summary.stdout.len());
    let n = room.min(chunk.bytes.len());
    summary.stdout.extend_from_slice(&chunk.bytes[..n]);
    summary.stdout_truncated |= n < chunk.bytes.len();
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(limit: u64, sensitive: bool, chunks: Vec<Chunk>) -> (String, LogSummary) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        let secrets = Arc::new(SecretSet::new().with([b"s3cr3t-value".as_slice()]).unwrap());
        let (tx, rx) = mpsc::channel(4);
        let h = spawn_log_writer(
            LogConfig {
                path: path.clone(),
                limit,
                sensitive,
                secrets,
                live: None,
            },
            rx,
        );
        for c in chunks {
            tx.send(c).await.unwrap();
        }
        drop(tx);
        let summary = h.await.unwrap();
        let log = match &summary.body {
            Some(LogBody::File(p)) => std::fs::read(p).unwrap(),
            Some(LogBody::Memory(b)) => b.clone(),
            None => Vec::new(),
        };
        (String::from_utf8(log).unwrap(), summary)
    }

    fn out(s: &str) -> Chunk {
        Chunk {
            stream: Stream::Stdout,
            bytes: s.as_bytes().to_vec(),
        }
    }

    #[tokio::test]
    async fn masks_and_captures() {
        let (log, s) = run(1 << 20, false, vec![out("key: s3cr"), out("3t-value\n")]).await;
        assert_eq!(log, "key: ***\n");
        assert_eq!(
            s.stdout, b"key: s3cr3t-value\n",
            "the output keeps the raw value, in memory only"
        );
    }

    #[tokio::test]
    async fn lines_of_the_two_streams_keep_their_order() {
        let err = |s: &str| Chunk {
            stream: Stream::Stderr,
            bytes: s.as_bytes().to_vec(),
        };
        let chunks = vec![
            err("-- step one\n"),
            out("first\n"),
            err("warning: s3cr"),
            out("second\n"),
            err("3t-value\n"),
            out("third\n"),
        ];
        let (log, _) = run(1 << 20, false, chunks).await;
        // A finished line is not held back when the other stream speaks;
        // an unfinished one is (it may hold the start of a secret).
        assert_eq!(log, "-- step one\nfirst\nsecond\nwarning: ***\nthird\n");
    }

    #[tokio::test]
    async fn keeps_head_and_tail() {
        let lines: Vec<Chunk> = (0..1000).map(|i| out(&format!("line {i:04}\n"))).collect();
        let (log, s) = run(200, false, lines).await;
        assert!(log.starts_with("line 0000\n"), "{log}");
        assert!(log.ends_with("line 0999\n"), "{log}");
        assert!(log.contains("bytes cut from the middle"), "{log}");
        assert_eq!(s.bytes, 10_000);
        assert!(s.cut >= 10_000 - 200);
    }

    #[tokio::test]
    async fn short_logs_stay_in_memory_and_empty_ones_do_not_exist() {
        let (log, s) = run(1 << 20, false, vec![out("hello\n")]).await;
        assert_eq!(log, "hello\n");
        assert_eq!(s.body, Some(LogBody::Memory(b"hello\n".to_vec())));
        let (_, s) = run(1 << 20, false, vec![]).await;
        assert_eq!(s.body, None, "a stage that printed nothing has no log");
    }

    #[tokio::test]
    async fn long_logs_go_to_their_file() {
        let big = "x".repeat(SPILL_BYTES + 100);
        let (log, s) = run(1 << 20, false, vec![out(&big), out("end\n")]).await;
        assert!(matches!(s.body, Some(LogBody::File(_))));
        assert_eq!(log.len(), big.len() + 4);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_log_still_written_after_a_while_is_readable_from_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("slow.log");
        let (tx, rx) = mpsc::channel(4);
        let h = spawn_log_writer(
            LogConfig {
                path: path.clone(),
                limit: 1 << 20,
                sensitive: false,
                secrets: Arc::new(SecretSet::new()),
                live: None,
            },
            rx,
        );
        tx.send(out("waiting for the deploy\n")).await.unwrap();
        // The stage says nothing more for a while: the log reaches its file anyway.
        tokio::time::sleep(SPILL_AFTER * 4).await;
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "waiting for the deploy\n"
        );
        tx.send(out("done\n")).await.unwrap();
        drop(tx);
        let s = h.await.unwrap();
        assert_eq!(s.body, Some(LogBody::File(path.clone())));
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "waiting for the deploy\ndone\n"
        );
    }

    #[tokio::test]
    async fn sensitive_stdout_is_not_logged() {
        let err = Chunk {
            stream: Stream::Stderr,
            bytes: b"warning\n".to_vec(),
        };
        let (log, s) = run(1 << 20, true, vec![out("{\"token\":\"abc\"}"), err]).await;
        assert!(!log.contains("token"), "{log}");
        assert!(log.contains("warning"));
        assert_eq!(s.stdout, b"{\"token\":\"abc\"}");
    }
}
