//! The workspace across nodes: the server keeps the run's workspace (a
//! folder of its machine) and hands each Swarm stage a copy through an
//! archive server of its own. Every stage gets a slot: a random token that
//! is the whole authority of its URL (`/t/<token>/in` serves the tar of the
//! workspace and the stage's private folder; `/t/<token>/out` takes the tar
//! the stage left), given to the helper tasks in a Swarm secret, never in a
//! service's configuration. What comes back is applied file by file: a file
//! changed on the node (its content differs from what was sent) replaces
//! the server's, a file the stage deleted is deleted, others are left as
//! they are (a stage running at the same time may have changed them).

use std::collections::HashMap;
use std::convert::Infallible;
use std::hash::Hasher;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper::{Method, Request, Response, StatusCode};
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// The archive server of a Swarm executor.
#[derive(Debug)]
pub(crate) struct Transfer {
    /// Where it listens, as the nodes reach it.
    addr: SocketAddr,
    slots: Arc<Mutex<HashMap<String, Slot>>>,
    stop: CancellationToken,
}

/// One stage attempt's slot: its token and its two archives.
#[derive(Debug, Clone)]
pub(crate) struct Slot {
    pub token: String,
    /// The tar the stage starts from.
    pub fill: PathBuf,
    /// Where the tar it left is written.
    pub drained: PathBuf,
}

impl Drop for Transfer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

type Body = BoxBody<Bytes, io::Error>;

impl Transfer {
    /// Listens on `listen` (port 0: any free port); the nodes reach it at
    /// the same address.
    pub(crate) async fn start(listen: SocketAddr) -> io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let slots: Arc<Mutex<HashMap<String, Slot>>> = Arc::default();
        let stop = CancellationToken::new();
        let (s2, stop2) = (slots.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    () = stop2.cancelled() => return,
                    a = listener.accept() => match a {
                        Ok((s, _)) => s,
                        Err(_) => continue,
                    },
                };
                let slots = s2.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let slots = slots.clone();
                        async move { Ok::<_, Infallible>(handle(slots, req).await) }
                    });
                    // `nc` closes its side once it sent the archive.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .half_close(true)
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self { addr, slots, stop })
    }

    /// The server's URL, as the nodes reach it.
    pub(crate) fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Opens a slot whose files live in `dir`.
    pub(crate) async fn open(&self, dir: &Path) -> Slot {
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw).expect("the system's random source");
        let slot = Slot {
            token: hex::encode(raw),
            fill: dir.join("in.tar"),
            drained: dir.join("out.tar"),
        };
        self.slots
            .lock()
            .await
            .insert(slot.token.clone(), slot.clone());
        slot
    }

    /// Where a slot is, as shell assignments (`host`, `port`, `path`):
    /// what its helpers are given, secretly.
    pub(crate) fn shell_vars(&self, token: &str) -> String {
        let (host, port) = (self.addr.ip(), self.addr.port());
        format!("host='{host}'\nport='{port}'\npath='/t/{token}'\n")
    }

    /// Closes a slot: its URL answers 404 from now on.
    pub(crate) async fn close(&self, token: &str) {
        self.slots.lock().await.remove(token);
    }
}

fn status(code: StatusCode, text: &str) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(format!("{text}\n")))
            .map_err(|e: Infallible| match e {})
            .boxed(),
    );
    *r.status_mut() = code;
    r
}

async fn handle(
    slots: Arc<Mutex<HashMap<String, Slot>>>,
    req: Request<hyper::body::Incoming>,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    let Some((token, what)) = path
        .strip_prefix("/t/")
        .and_then(|rest| rest.split_once('/'))
    else {
        return status(StatusCode::NOT_FOUND, "not found");
    };
    let Some(slot) = slots.lock().await.get(token).cloned() else {
        return status(StatusCode::NOT_FOUND, "not found");
    };
    match (req.method(), what) {
        (&Method::GET, "in") => match tokio::fs::File::open(&slot.fill).await {
            Ok(f) => {
                let frames = tokio_util::io::ReaderStream::new(f).map_ok(Frame::data);
                Response::new(BodyExt::boxed(StreamBody::new(frames)))
            }
            Err(e) => status(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        },
        (&Method::POST, "out") => match receive(req.into_body(), &slot.drained).await {
            Ok(()) => status(StatusCode::OK, "ok"),
            Err(e) => status(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        },
        _ => status(StatusCode::METHOD_NOT_ALLOWED, "not allowed"),
    }
}

use futures_util::TryStreamExt;

/// Writes a request's body to `to` (a new file: a second upload is refused).
async fn receive(mut body: hyper::body::Incoming, to: &Path) -> io::Result<()> {
    let part = to.with_extension("part");
    let mut f = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&part)
        .await?;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(io::Error::other)?;
        if let Some(data) = frame.data_ref() {
            f.write_all(data).await?;
        }
    }
    f.flush().await?;
    drop(f);
    tokio::fs::rename(&part, to).await
}

/// What was sent to a stage: each workspace file's size and content hash.
#[derive(Debug, Default)]
pub(crate) struct Manifest(HashMap<PathBuf, (u64, u64)>);

/// A hasher over what a reader gives.
struct Hashing<R> {
    inner: R,
    hash: std::collections::hash_map::DefaultHasher,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.write(&buf[..n]);
        Ok(n)
    }
}

fn hash_file(path: &Path) -> io::Result<u64> {
    let mut r = Hashing {
        inner: std::fs::File::open(path)?,
        hash: Default::default(),
    };
    io::copy(&mut r, &mut io::sink())?;
    Ok(r.hash.finish())
}

/// Packs the workspace `ws` as `w/` and the private folder `private` as
/// `p/` into the tar `to`, every entry owned by `uid:gid`; returns what
/// was sent of the workspace.
pub(crate) fn pack(
    ws: &Path,
    private: &Path,
    uid: u32,
    gid: u32,
    to: &Path,
) -> io::Result<Manifest> {
    let mut manifest = Manifest::default();
    let mut b = tar::Builder::new(io::BufWriter::new(std::fs::File::create(to)?));
    for (root, prefix) in [(ws, "w"), (private, "p")] {
        for entry in walkdir::WalkDir::new(root).follow_links(false) {
            let entry = entry.map_err(io::Error::other)?;
            let rel = entry.path().strip_prefix(root).map_err(io::Error::other)?;
            let name = Path::new(prefix).join(rel);
            let meta = entry.path().symlink_metadata()?;
            let mut h = tar::Header::new_gnu();
            h.set_metadata(&meta);
            h.set_uid(u64::from(uid));
            h.set_gid(u64::from(gid));
            let ft = meta.file_type();
            if ft.is_symlink() {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                let target = std::fs::read_link(entry.path())?;
                b.append_link(&mut h, &name, target)?;
            } else if ft.is_dir() {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                b.append_data(&mut h, &name, io::empty())?;
            } else if ft.is_file() {
                let mut r = Hashing {
                    inner: std::fs::File::open(entry.path())?,
                    hash: Default::default(),
                };
                b.append_data(&mut h, &name, &mut r)?;
                if prefix == "w" {
                    manifest
                        .0
                        .insert(rel.to_path_buf(), (meta.len(), r.hash.finish()));
                }
            }
        }
    }
    b.into_inner()?.into_inner().map_err(|e| e.into_error())?;
    Ok(manifest)
}

/// Whether `ws/rel`'s parents are all real folders (no link among them).
fn inside(ws: &Path, rel: &Path) -> bool {
    let mut at = ws.to_path_buf();
    let parts: Vec<_> = rel.components().collect();
    for c in &parts[..parts.len().saturating_sub(1)] {
        at.push(c);
        match at.symlink_metadata() {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(_) => return false,
            // Not there yet: made as a folder when its entry comes.
            Err(_) => return true,
        }
    }
    true
}

/// Applies the tar a stage left (`from`, unpacked under `staging`): its
/// changes to the workspace `ws` and its private folder to `private`.
pub(crate) fn apply(
    from: &Path,
    staging: &Path,
    ws: &Path,
    private: &Path,
    sent: &Manifest,
) -> io::Result<()> {
    let _ = std::fs::remove_dir_all(staging);
    std::fs::create_dir_all(staging)?;
    let mut a = tar::Archive::new(io::BufReader::new(std::fs::File::open(from)?));
    a.set_preserve_permissions(true);
    a.set_preserve_mtime(true);
    a.set_preserve_ownerships(sentinel_engine::workspace::current_uid() == 0);
    a.set_overwrite(true);
    a.unpack(staging)?;
    let back = staging.join("w");
    let mut seen = std::collections::HashSet::new();
    if back.is_dir() {
        for entry in walkdir::WalkDir::new(&back).min_depth(1) {
            let entry = entry.map_err(io::Error::other)?;
            let rel = entry
                .path()
                .strip_prefix(&back)
                .map_err(io::Error::other)?
                .to_path_buf();
            let dest = ws.join(&rel);
            let ft = entry.file_type();
            // Nothing is ever written through a link of the workspace: a
            // folder that came back where a link is replaces the link
            // (parents come before their contents).
            if !inside(ws, &rel) {
                return Err(io::Error::other(format!(
                    "`{}` lies behind a link of the workspace",
                    rel.display()
                )));
            }
            if ft.is_dir() {
                let is_dir = dest
                    .symlink_metadata()
                    .is_ok_and(|m| m.file_type().is_dir());
                if !is_dir {
                    let _ = std::fs::remove_file(&dest);
                    std::fs::create_dir_all(&dest)?;
                }
                continue;
            }
            seen.insert(rel.clone());
            let same = match sent.0.get(&rel) {
                Some((len, hash)) if ft.is_file() => {
                    entry.metadata().map_err(io::Error::other)?.len() == *len
                        && hash_file(entry.path())? == *hash
                }
                _ => false,
            };
            if same {
                continue;
            }
            if dest.is_dir() && !dest.is_symlink() {
                std::fs::remove_dir_all(&dest)?;
            }
            std::fs::rename(entry.path(), &dest)?;
        }
    }
    // Deleted on the node: deleted here (unless changed here meanwhile).
    for (rel, (len, hash)) in &sent.0 {
        if seen.contains(rel) {
            continue;
        }
        let dest = ws.join(rel);
        let unchanged = inside(ws, rel)
            && dest
                .symlink_metadata()
                .is_ok_and(|m| m.is_file() && m.len() == *len)
            && hash_file(&dest).is_ok_and(|h| h == *hash);
        if unchanged {
            std::fs::remove_file(&dest)?;
        }
    }
    let p = staging.join("p");
    if p.is_dir() {
        let _ = std::fs::remove_dir_all(private);
        std::fs::rename(&p, private)?;
    }
    let _ = std::fs::remove_dir_all(staging);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a node's drain sends: its `w/` and `p/` as a tar at `out`.
    fn node_tar(node: &Path, out: &Path) -> PathBuf {
        let mut b = tar::Builder::new(std::fs::File::create(out).unwrap());
        b.append_dir_all("w", node.join("w")).unwrap();
        b.append_dir_all("p", node.join("p")).unwrap();
        b.finish().unwrap();
        out.to_path_buf()
    }

    #[test]
    fn changes_come_back_and_unchanged_files_stay() {
        let t = tempfile::tempdir().unwrap();
        let (ws, private) = (t.path().join("ws"), t.path().join("private"));
        std::fs::create_dir_all(ws.join("sub")).unwrap();
        std::fs::create_dir_all(private.join("artifacts")).unwrap();
        std::fs::write(ws.join("keep.txt"), "same").unwrap();
        std::fs::write(ws.join("edit.txt"), "old1").unwrap();
        std::fs::write(ws.join("sub/gone.txt"), "bye").unwrap();
        let sent = pack(&ws, &private, 1000, 1000, &t.path().join("in.tar")).unwrap();
        // What a node does: unpack, change, pack again (as its tar would).
        let node = t.path().join("node");
        tar::Archive::new(std::fs::File::open(t.path().join("in.tar")).unwrap())
            .unpack(&node)
            .unwrap();
        std::fs::write(node.join("w/edit.txt"), "new1").unwrap();
        std::fs::write(node.join("w/made.txt"), "made").unwrap();
        std::fs::remove_file(node.join("w/sub/gone.txt")).unwrap();
        std::fs::write(node.join("p/output"), "k=v\n").unwrap();
        // Changed here meanwhile (another stage): a stale copy never wins.
        std::fs::write(ws.join("keep.txt"), "changed here").unwrap();
        let out = node_tar(&node, &t.path().join("out.tar"));
        apply(&out, &t.path().join("staging"), &ws, &private, &sent).unwrap();
        let read = |p: &str| std::fs::read_to_string(ws.join(p)).unwrap();
        assert_eq!(read("edit.txt"), "new1");
        assert_eq!(read("made.txt"), "made");
        assert_eq!(read("keep.txt"), "changed here");
        assert!(!ws.join("sub/gone.txt").exists());
        assert_eq!(
            std::fs::read_to_string(private.join("output")).unwrap(),
            "k=v\n"
        );
    }

    #[test]
    fn a_link_of_the_workspace_is_never_written_through() {
        let t = tempfile::tempdir().unwrap();
        let (ws, private, outside) = (
            t.path().join("ws"),
            t.path().join("private"),
            t.path().join("outside"),
        );
        std::fs::create_dir_all(&ws).unwrap();
        std::fs::create_dir_all(&private).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, ws.join("link")).unwrap();
        let sent = pack(&ws, &private, 1000, 1000, &t.path().join("in.tar")).unwrap();
        // The node swapped the link for a folder holding a file.
        let node = t.path().join("node");
        std::fs::create_dir_all(node.join("w/link")).unwrap();
        std::fs::create_dir_all(node.join("p")).unwrap();
        std::fs::write(node.join("w/link/planted"), "x").unwrap();
        let out = node_tar(&node, &t.path().join("out.tar"));
        apply(&out, &t.path().join("staging"), &ws, &private, &sent).unwrap();
        assert!(
            !outside.join("planted").exists(),
            "written through the link"
        );
        assert!(ws.join("link").symlink_metadata().unwrap().is_dir());
        assert_eq!(
            std::fs::read_to_string(ws.join("link/planted")).unwrap(),
            "x"
        );
    }
}

#[cfg(test)]
mod server_tests {
    use super::*;

    /// What the helpers do, with the machine's busybox (the helper image's
    /// tools): fetch the slot's tar with wget, send one back through nc.
    #[tokio::test]
    async fn busybox_fetches_and_sends_a_slot() {
        let t = tempfile::tempdir().unwrap();
        let server = Transfer::start("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let slot = server.open(t.path()).await;
        let token = slot.token.clone();
        std::fs::write(&slot.fill, b"\0binary\0tar\0").unwrap();
        std::fs::write(t.path().join("vars"), server.shell_vars(&token)).unwrap();
        std::fs::write(t.path().join("back.tar"), b"\0sent\0back\0").unwrap();
        let script = format!(
            ". {vars}\nwget -q -O {got} \"http://$host:$port$path/in\"\n{upload}",
            vars = t.path().join("vars").display(),
            got = t.path().join("got").display(),
            upload = super::super::spec::DRAIN
                .lines()
                .skip_while(|l| !l.starts_with("n="))
                .collect::<Vec<_>>()
                .join("\n")
                .replace(
                    "/mnt/out.tar",
                    &t.path().join("back.tar").display().to_string()
                ),
        );
        let out = tokio::process::Command::new("busybox")
            .args(["sh", "-c", &script])
            .output()
            .await
            .expect("busybox (apt-get install busybox-static, or scripts/setup.sh)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            std::fs::read(t.path().join("got")).unwrap(),
            b"\0binary\0tar\0"
        );
        assert_eq!(std::fs::read(&slot.drained).unwrap(), b"\0sent\0back\0");
        server.close(&token).await;
    }
}
