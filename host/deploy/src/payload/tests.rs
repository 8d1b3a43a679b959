//! Good and bad payloads, each bad one refused with its reason.

use sentinel_testkit::payload::{self as kit, Entry, FILE as F, bomb, gzip, tar_gz};

use super::*;

const FOLDER: &str = "example.com-development-video-mobile-1.0.1-22";
const META: &str =
    r#"{"name":"video-mobile","version":"1.0.1-22","imageVersion":"1.0.1-22","numInstance":2}"#;

fn marker() -> Marker {
    Marker::from_key("d", "d/video-mobile/1.0.1-22.deploy").unwrap()
}

fn good(folder: Option<&str>, meta: &str) -> Vec<Entry> {
    kit::good(folder, "video-mobile", "1.0.1-22", meta)
}

fn check_entries(entries: &[Entry]) -> Result<Payload, PayloadError> {
    check(tar_gz(entries).as_slice(), &marker(), FOLDER, MAX_BYTES)
}

fn refused(entries: &[Entry]) -> String {
    check_entries(entries).unwrap_err().to_string()
}

#[test]
fn a_good_payload_in_its_folder_or_flat() {
    let mut in_folder = vec![(format!("{FOLDER}/"), tar::EntryType::Directory, Vec::new())];
    in_folder.extend(good(Some(FOLDER), META));
    for entries in [in_folder, good(None, META)] {
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
        assert_eq!(names[0], "video-mobile.metadata.json");
        assert_eq!(names.len(), 4);
    }
}

#[test]
fn two_metadata_files() {
    let mut e = good(None, META);
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
        None,
        r#"{"name":"video-mobile","version":"1.0.1-22","numInstance":2}"#,
    ));
    assert!(err.contains("`imageVersion` is missing"), "{err}");
}

#[test]
fn wrong_types() {
    let err = refused(&good(
        None,
        r#"{"name":"video-mobile","version":"1.0.1-22","imageVersion":"1.0.1-22","numInstance":"2"}"#,
    ));
    assert!(
        err.contains("`numInstance` must be a whole number"),
        "{err}"
    );
    let err = refused(&good(
        None,
        r#"{"name":"video-mobile","version":1.0,"imageVersion":"x","numInstance":2}"#,
    ));
    assert!(
        err.contains("`version` must be a non-empty string"),
        "{err}"
    );
    let err = refused(&good(None, "[1, 2]"));
    assert!(err.contains("not a JSON object"), "{err}");
}

#[test]
fn name_mismatch() {
    let err = refused(&good(
        None,
        r#"{"name":"video-desktop","version":"1.0.1-22","imageVersion":"1.0.1-22","numInstance":2}"#,
    ));
    assert!(
        err.contains("`name` is `video-desktop` but the marker is for `video-mobile`"),
        "{err}"
    );
    let err = refused(&good(
        None,
        r#"{"name":"video-mobile","version":"1.0.1-21","imageVersion":"1.0.1-21","numInstance":2}"#,
    ));
    assert!(err.contains("`version` is `1.0.1-21`"), "{err}");
}

#[test]
fn an_entry_that_leaves() {
    let mut e = good(None, META);
    e.push(("../evil.service.tmpl".into(), F, b"x".to_vec()));
    let err = refused(&e);
    assert!(
        err.contains("`../evil.service.tmpl` leaves the payload"),
        "{err}"
    );
    let mut e = good(None, META);
    e.push(("/etc/cron.d/x.etcd2".into(), F, b"x".to_vec()));
    assert!(refused(&e).contains("leaves the payload"));
}

#[test]
fn a_link_or_a_device() {
    let mut e = good(None, META);
    e.push(("README.md".into(), tar::EntryType::Symlink, Vec::new()));
    let err = refused(&e);
    assert!(err.contains("`README.md` is a link"), "{err}");
    let mut e = good(None, META);
    e.push(("zero.etcd2".into(), tar::EntryType::Char, Vec::new()));
    assert!(refused(&e).contains("not a plain file"));
}

#[test]
fn anything_else_or_elsewhere() {
    let mut e = good(None, META);
    e.push(("run.sh".into(), F, b"rm -rf /".to_vec()));
    assert!(refused(&e).contains("`run.sh` is not allowed"));
    let mut e = good(None, META);
    e.push(("other-folder/README.md".into(), F, b"x".to_vec()));
    assert!(refused(&e).contains("outside the payload's folder"));
    let e: Vec<_> = good(None, META)
        .into_iter()
        .filter(|(n, _, _)| !n.ends_with(".service"))
        .collect();
    assert!(refused(&e).contains("no unit (.service or .service.tmpl)"));
}

#[test]
fn not_a_tar() {
    let err = check(&b"plain text, not gzip"[..], &marker(), FOLDER, MAX_BYTES).unwrap_err();
    assert!(matches!(err, PayloadError::NotTar(_)), "{err}");
    let err = check(gzip(&[7u8; 3000]).as_slice(), &marker(), FOLDER, MAX_BYTES).unwrap_err();
    assert!(matches!(err, PayloadError::NotTar(_)), "{err}");
}

#[test]
fn a_two_gib_decompression_bomb_is_refused_within_the_cap() {
    let bomb = bomb("video-mobile.metadata.json");
    assert!(bomb.len() < 8 << 20, "{} bytes compressed", bomb.len());
    let err = check(bomb.as_slice(), &marker(), FOLDER, MAX_BYTES).unwrap_err();
    assert_eq!(err, PayloadError::TooLarge { cap: MAX_BYTES });
    // Entries each small enough but too many bytes in all: refused at the cap.
    let big = vec![b'x'; 700 << 10];
    let e = [
        ("a.json".to_string(), F, big.clone()),
        ("b.service".to_string(), F, big.clone()),
    ];
    let err = check(tar_gz(&e).as_slice(), &marker(), FOLDER, 1 << 20).unwrap_err();
    assert_eq!(err, PayloadError::TooLarge { cap: 1 << 20 });
}
