//! Good and bad payloads, each bad one refused with its reason.

use std::io::Write;

use flate2::Compression;
use flate2::write::GzEncoder;

use super::*;

const FOLDER: &str = "example.com-development-video-mobile-1.0.1-22";
const META: &str =
    r#"{"name":"video-mobile","version":"1.0.1-22","imageVersion":"1.0.1-22","numInstance":2}"#;

fn marker() -> Marker {
    Marker::from_key("d", "d/video-mobile/1.0.1-22.deploy").unwrap()
}

/// A raw tar header for `path` of `kind` and `size` (names the tar crate's
/// builder would refuse, like `../x`, go in as they are).
fn header(path: &str, kind: tar::EntryType, size: u64) -> tar::Header {
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

fn gz(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, kind, body) in entries {
        let h = header(path, *kind, body.len() as u64);
        b.append(&h, *body).unwrap();
    }
    let tar = b.into_inner().unwrap();
    let mut e = GzEncoder::new(Vec::new(), Compression::fast());
    e.write_all(&tar).unwrap();
    e.finish().unwrap()
}

const F: tar::EntryType = tar::EntryType::Regular;

fn good(prefix: &str, meta: &str) -> Vec<(String, tar::EntryType, Vec<u8>)> {
    vec![
        (
            format!("{prefix}example.com-development-video-mobile.metadata.json"),
            F,
            meta.as_bytes().to_vec(),
        ),
        (
            format!("{prefix}video-mobile-1.0.1-22@.service"),
            F,
            b"[Unit]\n".to_vec(),
        ),
        (
            format!("{prefix}{FOLDER}.etcd2"),
            F,
            b"/app/key value\n".to_vec(),
        ),
        (format!("{prefix}README.md"), F, b"notes\n".to_vec()),
    ]
}

fn check_entries(entries: &[(String, tar::EntryType, Vec<u8>)]) -> Result<Payload, PayloadError> {
    let refs: Vec<(&str, tar::EntryType, &[u8])> = entries
        .iter()
        .map(|(p, k, b)| (p.as_str(), *k, b.as_slice()))
        .collect();
    check(gz(&refs).as_slice(), &marker(), FOLDER, MAX_BYTES)
}

fn refused(entries: &[(String, tar::EntryType, Vec<u8>)]) -> String {
    check_entries(entries).unwrap_err().to_string()
}

#[test]
fn a_good_payload_in_its_folder_or_flat() {
    let mut in_folder = vec![(format!("{FOLDER}/"), tar::EntryType::Directory, Vec::new())];
    in_folder.extend(good(&format!("{FOLDER}/"), META));
    for entries in [in_folder, good("", META)] {
        let p = check_entries(&entries).unwrap();
        assert_eq!(
            p.metadata,
            Metadata {
                name: "video-mobile".into(),
                version: "1.0.1-22".into(),
                image_version: "1.0.1-22".into(),
                instances: 2
            }
        );
        let names: Vec<&str> = p.files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names[0],
            "example.com-development-video-mobile.metadata.json"
        );
        assert_eq!(names.len(), 4);
    }
}

#[test]
fn two_metadata_files() {
    let mut e = good("", META);
    e.push(("other.json".into(), F, META.as_bytes().to_vec()));
    let err = refused(&e);
    assert!(
        err.contains("two metadata (.json) files") && err.contains("other.json"),
        "{err}"
    );
}

#[test]
fn missing_image_version() {
    let err = refused(&good(
        "",
        r#"{"name":"video-mobile","version":"1.0.1-22","numInstance":2}"#,
    ));
    assert!(err.contains("`imageVersion` is missing"), "{err}");
}

#[test]
fn wrong_types() {
    let err = refused(&good(
        "",
        r#"{"name":"video-mobile","version":"1.0.1-22","imageVersion":"1.0.1-22","numInstance":"2"}"#,
    ));
    assert!(
        err.contains("`numInstance` must be a whole number"),
        "{err}"
    );
    let err = refused(&good(
        "",
        r#"{"name":"video-mobile","version":1.0,"imageVersion":"x","numInstance":2}"#,
    ));
    assert!(
        err.contains("`version` must be a non-empty string"),
        "{err}"
    );
    let err = refused(&good("", "[1, 2]"));
    assert!(err.contains("not a JSON object"), "{err}");
}

#[test]
fn name_mismatch() {
    let err = refused(&good(
        "",
        r#"{"name":"video-desktop","version":"1.0.1-22","imageVersion":"1.0.1-22","numInstance":2}"#,
    ));
    assert!(
        err.contains("`name` is `video-desktop` but the marker is for `video-mobile`"),
        "{err}"
    );
    let err = refused(&good(
        "",
        r#"{"name":"video-mobile","version":"1.0.1-21","imageVersion":"1.0.1-21","numInstance":2}"#,
    ));
    assert!(err.contains("`version` is `1.0.1-21`"), "{err}");
}

#[test]
fn an_entry_that_leaves() {
    let mut e = good("", META);
    e.push(("../evil.service.tmpl".into(), F, b"x".to_vec()));
    let err = refused(&e);
    assert!(
        err.contains("`../evil.service.tmpl` leaves the payload"),
        "{err}"
    );
    let mut e = good("", META);
    e.push(("/etc/cron.d/x.etcd2".into(), F, b"x".to_vec()));
    assert!(refused(&e).contains("leaves the payload"));
}

#[test]
fn a_link_or_a_device() {
    let mut e = good("", META);
    e.push(("README.md".into(), tar::EntryType::Symlink, Vec::new()));
    let err = refused(&e);
    assert!(err.contains("`README.md` is a link"), "{err}");
    let mut e = good("", META);
    e.push(("zero.etcd2".into(), tar::EntryType::Char, Vec::new()));
    assert!(refused(&e).contains("not a plain file"));
}

#[test]
fn anything_else_or_elsewhere() {
    let mut e = good("", META);
    e.push(("run.sh".into(), F, b"rm -rf /".to_vec()));
    assert!(refused(&e).contains("`run.sh` is not allowed"));
    let mut e = good("", META);
    e.push(("other-folder/README.md".into(), F, b"x".to_vec()));
    assert!(refused(&e).contains("outside the payload's folder"));
    let e: Vec<_> = good("", META)
        .into_iter()
        .filter(|(n, _, _)| !n.ends_with(".service"))
        .collect();
    assert!(refused(&e).contains("no unit (.service or .service.tmpl)"));
}

#[test]
fn not_a_tar() {
    let err = check(&b"plain text, not gzip"[..], &marker(), FOLDER, MAX_BYTES).unwrap_err();
    assert!(matches!(err, PayloadError::NotTar(_)), "{err}");
    let mut e = GzEncoder::new(Vec::new(), Compression::fast());
    e.write_all(&[7u8; 3000]).unwrap();
    let err = check(e.finish().unwrap().as_slice(), &marker(), FOLDER, MAX_BYTES).unwrap_err();
    assert!(matches!(err, PayloadError::NotTar(_)), "{err}");
}

#[test]
fn a_two_gib_decompression_bomb_is_refused_within_the_cap() {
    // A header declaring 2 GiB, then 2 GiB of zeros as 2,048 gzip members
    // of 1 MiB each (about 2 MiB compressed).
    let h = header("video-mobile.metadata.json", F, 2 << 30);
    let member = |bytes: &[u8]| {
        let mut e = GzEncoder::new(Vec::new(), Compression::best());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    };
    let mut bomb = member(h.as_bytes());
    let zeros = member(&vec![0u8; 1 << 20]);
    for _ in 0..2048 {
        bomb.extend_from_slice(&zeros);
    }
    assert!(bomb.len() < 8 << 20, "{} bytes compressed", bomb.len());
    let err = check(bomb.as_slice(), &marker(), FOLDER, MAX_BYTES).unwrap_err();
    assert_eq!(err, PayloadError::TooLarge { cap: MAX_BYTES });
    // Entries each small enough but too many bytes in all: refused at the cap.
    let big = vec![b'x'; 700 << 10];
    let e = [
        ("a.json".to_string(), F, big.clone()),
        ("b.service".to_string(), F, big.clone()),
    ];
    let refs: Vec<(&str, tar::EntryType, &[u8])> = e
        .iter()
        .map(|(p, k, b)| (p.as_str(), *k, b.as_slice()))
        .collect();
    let err = check(gz(&refs).as_slice(), &marker(), FOLDER, 1 << 20).unwrap_err();
    assert_eq!(err, PayloadError::TooLarge { cap: 1 << 20 });
}
