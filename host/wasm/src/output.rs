//! A guest's stdout and stderr: streamed live into the stage's log channel,
//! capped (past the cap bytes are counted and dropped, never buffered), with
//! backpressure from the log pipeline.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use sentinel_engine::exec::{Chunk, Stream};
use tokio::io::AsyncWrite;
use tokio::sync::mpsc;
use tokio_util::sync::PollSender;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// Counts shared by every handle of one stream.
#[derive(Debug, Default)]
pub struct Counters {
    /// Bytes still allowed.
    pub left: AtomicU64,
    /// Bytes dropped past the cap.
    pub dropped: AtomicU64,
}

/// A guest output stream that forwards to the log channel.
#[derive(Debug, Clone)]
pub struct LogStream {
    tx: mpsc::Sender<Chunk>,
    stream: Stream,
    pub counters: Arc<Counters>,
}

impl LogStream {
    pub fn new(tx: mpsc::Sender<Chunk>, stream: Stream, cap: u64) -> Self {
        let counters = Arc::new(Counters {
            left: AtomicU64::new(cap),
            dropped: AtomicU64::new(0),
        });
        Self {
            tx,
            stream,
            counters,
        }
    }
}

impl IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogStream {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(Writer {
            tx: PollSender::new(self.tx.clone()),
            stream: self.stream,
            counters: self.counters.clone(),
        })
    }
}

struct Writer {
    tx: PollSender<Chunk>,
    stream: Stream,
    counters: Arc<Counters>,
}

/// Largest chunk forwarded at once.
const MAX_CHUNK: usize = 64 * 1024;

impl AsyncWrite for Writer {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let left = self.counters.left.load(Ordering::Relaxed);
        if left == 0 {
            // Past the cap: the guest goes on, the bytes are only counted.
            self.counters
                .dropped
                .fetch_add(buf.len() as u64, Ordering::Relaxed);
            return Poll::Ready(Ok(buf.len()));
        }
        match self.tx.poll_reserve(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(_)) => {
                // The log pipeline is gone (the stage is ending): discard.
                return Poll::Ready(Ok(buf.len()));
            }
            Poll::Ready(Ok(())) => {}
        }
        let n = buf.len().min(MAX_CHUNK).min(left as usize);
        let stream = self.stream;
        let _ = self.tx.send_item(Chunk {
            stream,
            bytes: buf[..n].to_vec(),
        });
        self.counters.left.fetch_sub(n as u64, Ordering::Relaxed);
        if n as u64 == left && n < buf.len() {
            self.counters
                .dropped
                .fetch_add((buf.len() - n) as u64, Ordering::Relaxed);
            return Poll::Ready(Ok(buf.len()));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
