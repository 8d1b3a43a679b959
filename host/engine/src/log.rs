//! A stage's log pipeline: raw chunks from the executor are masked (one
//! stream masker per stream), capped (the head and the tail are kept, the
//! middle is cut with a marker saying how much), written to the stage's log
//! file, and the raw stdout is kept (capped) to become the stage's output.
//! It runs on a blocking thread so masking and file writes never stall the
//! async runtime.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::exec::{Chunk, Stream};
use crate::masker::{SecretSet, StreamMasker};

/// The most stdout kept as a stage's output.
pub const OUTPUT_LIMIT: usize = 1 << 20;

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
}

struct Capped {
    file: BufWriter<File>,
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

    fn finish(mut self, limit: u64) -> std::io::Result<(u64, u64)> {
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
            write!(
                self.file,
                "\n[sentinel: {} bytes cut from the middle of this log; log_limit is {} bytes]\n",
                self.cut, limit
            )?;
        }
        let (a, b) = self.tail.as_slices();
        self.file.write_all(a)?;
        self.file.write_all(b)?;
        self.file.flush()?;
        Ok((self.bytes, self.cut))
    }
}

/// Starts the log pipeline; it ends when every sender of `rx` is dropped.
pub fn spawn_log_writer(
    mut cfg: LogConfig,
    mut rx: mpsc::Receiver<Chunk>,
) -> JoinHandle<LogSummary> {
    tokio::task::spawn_blocking(move || {
        let mut summary = LogSummary::default();
        let file = match File::create(&cfg.path) {
            Ok(f) => f,
            Err(e) => {
                summary.error = Some(format!("cannot create {}: {e}", cfg.path.display()));
                while let Some(chunk) = rx.blocking_recv() {
                    capture(&mut summary, &chunk);
                }
                return summary;
            }
        };
        let head = cfg.limit / 2;
        let mut capped = Capped {
            file: BufWriter::new(file),
            head_left: head,
            tail: VecDeque::new(),
            tail_cap: (cfg.limit - head) as usize,
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
        while let Some(chunk) = rx.blocking_recv() {
            capture(&mut summary, &chunk);
            if cfg.sensitive && chunk.stream == Stream::Stdout {
                continue;
            }
            let i = usize::from(chunk.stream == Stream::Stderr);
            out.clear();
            maskers[i].push(&chunk.bytes, &mut out);
            if let Some(live) = cfg.live.as_mut() {
                live(&out);
            }
            if result.is_ok() {
                result = capped.write(&out);
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
        let finished = result.and_then(|()| capped.finish(cfg.limit));
        match finished {
            Ok((bytes, cut)) => {
                summary.bytes = bytes;
                summary.cut = cut;
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
        (std::fs::read_to_string(&path).unwrap(), summary)
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
