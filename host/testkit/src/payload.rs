//! Deploy payloads for tests: `.tar.gz` archives written entry by entry,
//! raw enough to hold what a checker must refuse (`../x`, links, devices),
//! and a decompression bomb that is small on the wire.

use std::io::Write;

use flate2::Compression;
use flate2::write::GzEncoder;

/// A plain file entry.
pub const FILE: tar::EntryType = tar::EntryType::Regular;

/// An entry: its path as written, its kind and its bytes.
pub type Entry = (String, tar::EntryType, Vec<u8>);

/// A raw tar header for `path` of `kind` and `size` (names the tar crate's
/// builder would refuse, like `../x`, go in as they are; a link points at
/// `/etc/passwd`).
pub fn header(path: &str, kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    let name = &mut h.as_old_mut().name;
    name[..path.len()].copy_from_slice(path.as_bytes());
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(0o644);
    if kind == tar::EntryType::Symlink {
        h.set_link_name("/etc/passwd").unwrap();
    }
    h.set_cksum();
    h
}

/// Gzip of `bytes`, one member.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::best());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// A `.tar.gz` of `entries`.
pub fn tar_gz(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, kind, body) in entries {
        let h = header(path, *kind, body.len() as u64);
        b.append(&h, body.as_slice()).unwrap();
    }
    gzip(&b.into_inner().unwrap())
}

/// The metadata file's text.
pub fn metadata(app: &str, version: &str, image: &str, instances: u64) -> String {
    format!(
        r#"{{"name":"{app}","version":"{version}","imageVersion":"{image}","numInstance":{instances}}}"#
    )
}

/// A good payload's entries for `app` at `version`: the metadata, a unit
/// file, keys and a README, in `folder/` when given.
pub fn good(folder: Option<&str>, app: &str, version: &str, meta: &str) -> Vec<Entry> {
    let p = folder.map(|f| format!("{f}/")).unwrap_or_default();
    vec![
        (
            format!("{p}{app}.metadata.json"),
            FILE,
            meta.as_bytes().to_vec(),
        ),
        (
            format!("{p}{app}-{version}@.service"),
            FILE,
            b"[Unit]\n".to_vec(),
        ),
        (
            format!("{p}{app}.etcd2"),
            FILE,
            b"/app/key value\n".to_vec(),
        ),
        (format!("{p}README.md"), FILE, b"notes\n".to_vec()),
    ]
}

/// A header declaring a 2 GiB `name`, then 2 GiB of zeros as 2,048 gzip
/// members of 1 MiB each: about 2 MiB compressed.
pub fn bomb(name: &str) -> Vec<u8> {
    let mut out = gzip(header(name, FILE, 2 << 30).as_bytes());
    let zeros = gzip(&vec![0u8; 1 << 20]);
    for _ in 0..2048 {
        out.extend_from_slice(&zeros);
    }
    out
}
