//! `sentinel token create` keeps only a hash: no file of the state folder
//! (the sled database included) holds the token or its secret, while the
//! token still verifies; `list` never prints it; `revoke` removes it.

use std::process::Command;

fn sentinel(state: &std::path::Path, args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_sentinel"))
        .arg("--state")
        .arg(state)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sentinel {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn holds(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn tokens_are_stored_hashed() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let out = sentinel(
        &state,
        &["token", "create", "--name", "ci", "--scope", "trigger"],
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let (id, secret) = token
        .strip_prefix("sentinel_")
        .and_then(|r| r.split_once('_'))
        .expect("sentinel_<id>_<secret>");
    assert!(secret.len() >= 40, "a long random secret: {token}");

    let mut files = 0;
    for e in walkdir::WalkDir::new(&state).into_iter().flatten() {
        if e.file_type().is_file() {
            files += 1;
            let bytes = std::fs::read(e.path()).unwrap();
            assert!(
                !holds(&bytes, secret.as_bytes()) && !holds(&bytes, token.as_bytes()),
                "{} holds the token",
                e.path().display()
            );
        }
    }
    assert!(files > 0, "the database was written");

    let db = sentinel_store::SledStore::try_open(&state).unwrap();
    let info = db
        .verify_token(&token)
        .unwrap()
        .expect("the token verifies");
    assert_eq!((info.id.as_str(), info.name.as_str()), (id, "ci"));
    drop(db);

    let list = String::from_utf8(sentinel(&state, &["token", "list"]).stdout).unwrap();
    assert!(
        list.contains(id) && list.contains("ci") && list.contains("trigger"),
        "{list}"
    );
    assert!(!list.contains(secret));
    sentinel(&state, &["token", "revoke", id]);
    let db = sentinel_store::SledStore::try_open(&state).unwrap();
    assert!(db.verify_token(&token).unwrap().is_none());
}
