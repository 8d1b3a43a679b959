//! A loopback HTTP/1.1 proxy in front of the S3 server that counts every
//! request it forwards (by method and path) and can be taken down and
//! brought back on the same port: while down it refuses connections, and a
//! kept-alive connection is closed before its next request is forwarded —
//! so a request either reached the server and was answered, or never left.
//! It can also keep the PUT requests it forwards (head and body) and flip a
//! byte of their bodies on the way, to check what the sink sends and that
//! the server refuses bytes that do not match their checksum.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// PUT requests as received: (head, body).
pub type Puts = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

#[derive(Debug, Clone)]
pub struct Proxy {
    pub addr: SocketAddr,
    upstream: SocketAddr,
    up: Arc<AtomicBool>,
    /// `"PUT /bucket/key"` → times forwarded.
    pub counts: Arc<Mutex<BTreeMap<String, usize>>>,
    listener: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
    /// Keep PUTs (their head and body).
    pub keep: Arc<AtomicBool>,
    /// Flip the last byte of PUT bodies.
    pub corrupt: Arc<AtomicBool>,
    /// The PUTs kept: (head, body as received).
    pub puts: Puts,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let p = Self {
            addr: listener.local_addr().unwrap(),
            upstream,
            up: Arc::new(AtomicBool::new(true)),
            counts: Arc::default(),
            listener: Arc::default(),
            keep: Arc::default(),
            corrupt: Arc::default(),
            puts: Arc::default(),
        };
        p.serve(listener);
        p
    }

    fn serve(&self, listener: TcpListener) {
        let me = self.clone();
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let me = me.clone();
                tokio::spawn(async move {
                    let _ = me.relay(conn).await;
                });
            }
        });
        *self.listener.lock().unwrap() = Some(task);
    }

    /// Takes the server away: new connections are refused.
    pub fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        if let Some(t) = self.listener.lock().unwrap().take() {
            t.abort();
        }
    }

    /// Brings it back on the same port.
    pub async fn up(&self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.up.store(true, Ordering::SeqCst);
        self.serve(listener);
    }

    /// Forwarded requests by `METHOD path` (query left out).
    pub fn counts(&self) -> BTreeMap<String, usize> {
        self.counts.lock().unwrap().clone()
    }

    async fn relay(&self, conn: TcpStream) -> std::io::Result<()> {
        let mut client = BufReader::new(conn);
        let mut server = BufReader::new(TcpStream::connect(self.upstream).await?);
        loop {
            let Some((head, len, _)) = read_head(&mut client).await? else {
                return Ok(());
            };
            if !self.up.load(Ordering::SeqCst) {
                return Ok(()); // closed before the request is forwarded
            }
            let line = head.lines().next().unwrap_or_default().to_string();
            let mut parts = line.split(' ');
            let method = parts.next().unwrap_or_default().to_string();
            let path = parts.next().unwrap_or_default();
            let path = path.split('?').next().unwrap_or_default();
            *self
                .counts
                .lock()
                .unwrap()
                .entry(format!("{method} {path}"))
                .or_default() += 1;
            server.get_mut().write_all(head.as_bytes()).await?;
            let touch = method == "PUT"
                && (self.keep.load(Ordering::SeqCst) || self.corrupt.load(Ordering::SeqCst));
            if touch {
                let mut body = vec![0u8; len as usize];
                client.read_exact(&mut body).await?;
                if self.keep.load(Ordering::SeqCst) {
                    self.puts.lock().unwrap().push((head.clone(), body.clone()));
                }
                if self.corrupt.load(Ordering::SeqCst)
                    && let Some(last) = body.last_mut()
                {
                    *last ^= 0x01;
                }
                server.get_mut().write_all(&body).await?;
            } else {
                copy_body(&mut client, server.get_mut(), len).await?;
            }
            let Some((rhead, rlen, chunked)) = read_head(&mut server).await? else {
                return Ok(());
            };
            client.get_mut().write_all(rhead.as_bytes()).await?;
            if method == "HEAD" {
                continue;
            }
            if chunked {
                copy_chunked(&mut server, client.get_mut()).await?;
            } else {
                copy_body(&mut server, client.get_mut(), rlen).await?;
            }
        }
    }
}

/// Reads a message head: (the head, Content-Length, chunked?); `None` at EOF.
async fn read_head<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
) -> std::io::Result<Option<(String, u64, bool)>> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            return Ok(None);
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let mut len = 0;
    let mut chunked = false;
    for l in head.lines() {
        let lower = l.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
        if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        }
    }
    Ok(Some((head, len, chunked)))
}

async fn copy_body<R: tokio::io::AsyncRead + Unpin, W: tokio::io::AsyncWrite + Unpin>(
    r: &mut R,
    w: &mut W,
    len: u64,
) -> std::io::Result<()> {
    let mut taken = r.take(len);
    tokio::io::copy(&mut taken, w).await?;
    Ok(())
}

async fn copy_chunked<R: tokio::io::AsyncBufRead + Unpin, W: tokio::io::AsyncWrite + Unpin>(
    r: &mut R,
    w: &mut W,
) -> std::io::Result<()> {
    loop {
        let mut size_line = String::new();
        r.read_line(&mut size_line).await?;
        w.write_all(size_line.as_bytes()).await?;
        let size =
            u64::from_str_radix(size_line.trim().split(';').next().unwrap_or("0"), 16).unwrap_or(0);
        if size == 0 {
            // Trailers, then the empty line.
            loop {
                let mut l = String::new();
                r.read_line(&mut l).await?;
                w.write_all(l.as_bytes()).await?;
                if l == "\r\n" || l.is_empty() {
                    return Ok(());
                }
            }
        }
        copy_body(r, w, size + 2).await?;
    }
}
