//! The bundled s3sync step against a real S3 server on loopback (Garage,
//! started by `scripts/s3-server.sh`): objects land with the right bytes
//! and content types, a second sync uploads nothing, `delete` removes what
//! is gone, and bad credentials give a clear error.

mod common;

use std::collections::BTreeMap;

use std::path::Path;

use common::{Spec, assert_ok, component, run, text};
use sentinel_engine::exec::Outcome;
use sentinel_pipeline::WorkspaceAccess;
use sentinel_testkit::s3_server as s3;

/// GETs a key through the bucket's website endpoint: (status, content type, body).
fn website(bucket: &str, key: &str) -> (u16, String, Vec<u8>) {
    let page = sentinel_testkit::website_get(&s3(), bucket, key);
    (page.status, page.content_type, page.body)
}

fn settings(
    s3: &BTreeMap<String, String>,
    prefix: &str,
    secret: &str,
    delete: bool,
) -> Vec<(String, String)> {
    [
        ("BUCKET", s3["S3_BUCKET"].as_str()),
        ("KEY_ID", s3["AWS_ACCESS_KEY_ID"].as_str()),
        ("KEY_SECRET", secret),
        ("SOURCE_DIR", "site"),
        ("PREFIX", prefix),
        ("ENDPOINT", s3["S3_ENDPOINT"].as_str()),
        ("REGION", s3["S3_REGION"].as_str()),
        ("PATH_STYLE", "true"),
        ("DELETE", if delete { "true" } else { "false" }),
    ]
    .into_iter()
    .map(|(k, v)| (format!("SENTINEL_S3SYNC_{k}"), v.to_string()))
    .chain([(
        "SENTINEL_OUTPUT".to_string(),
        "/sentinel/output".to_string(),
    )])
    .collect()
}

const FILES: &[(&str, &[u8], &str)] = &[
    (
        "index.html",
        b"<h1>sentinel</h1>",
        "text/html; charset=utf-8",
    ),
    (
        "css/app.css",
        b"h1 { color: teal }",
        "text/css; charset=utf-8",
    ),
    ("data/run.json", b"{\"schema\":1}", "application/json"),
    ("img/dot.png", b"\x89PNG\r\n\x1a\nfake", "image/png"),
];

fn site(ws: &Path) {
    for (name, bytes, _) in FILES {
        let p = ws.join("site").join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
}

#[tokio::test]
async fn syncs_a_folder_to_a_real_s3_server() {
    let s3 = s3();
    let step = component("s3sync");
    let prefix = format!(
        "test-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let allow = vec![s3["S3_ENDPOINT"].trim_start_matches("http://").to_string()];
    let bucket = s3["S3_BUCKET"].clone();
    let spec = |secret: &str, delete: bool, setup: Box<dyn FnOnce(&Path)>| Spec {
        env: settings(&s3, &prefix, secret, delete),
        http: allow.clone(),
        workspace: WorkspaceAccess::Read,
        setup,
        ..Default::default()
    };

    let r = run(
        &step,
        spec(&s3["AWS_SECRET_ACCESS_KEY"], false, Box::new(site)),
    )
    .await;
    assert_ok(&r);
    assert!(
        text(&r.stdout).contains("4 uploaded, 0 unchanged, 0 deleted"),
        "{}",
        text(&r.stdout)
    );
    for (name, bytes, ctype) in FILES {
        let (status, got_type, body) = website(&bucket, &format!("{prefix}/{name}"));
        assert_eq!(status, 200, "{name}");
        assert_eq!(&body, bytes, "{name}: the bytes");
        assert_eq!(&got_type, ctype, "{name}: the content type");
    }

    // Nothing changed: nothing is uploaded.
    let r = run(
        &step,
        spec(&s3["AWS_SECRET_ACCESS_KEY"], false, Box::new(site)),
    )
    .await;
    assert!(
        text(&r.stdout).contains("0 uploaded, 4 unchanged, 0 deleted"),
        "{} {}",
        text(&r.stdout),
        text(&r.stderr)
    );
    let outputs = r.outputs.clone().unwrap_or_default();
    assert!(
        outputs.contains("uploaded=0") && outputs.contains("unchanged=4"),
        "{outputs}"
    );

    // A file gone locally is deleted remotely with `delete`; a changed one is uploaded.
    let shrink = |ws: &Path| {
        site(ws);
        std::fs::remove_file(ws.join("site/css/app.css")).unwrap();
        std::fs::write(ws.join("site/index.html"), "<h1>changed</h1>").unwrap();
    };
    let r = run(
        &step,
        spec(&s3["AWS_SECRET_ACCESS_KEY"], true, Box::new(shrink)),
    )
    .await;
    assert!(
        text(&r.stdout).contains("1 uploaded, 2 unchanged, 1 deleted"),
        "{} {}",
        text(&r.stdout),
        text(&r.stderr)
    );
    assert_eq!(website(&bucket, &format!("{prefix}/css/app.css")).0, 404);
    assert_eq!(
        website(&bucket, &format!("{prefix}/index.html")).2,
        b"<h1>changed</h1>"
    );
}

#[tokio::test]
async fn bad_credentials_are_a_clear_error() {
    let s3 = s3();
    let step = component("s3sync");
    let r = run(
        &step,
        Spec {
            env: settings(
                &s3,
                "denied",
                "0000000000000000000000000000000000000000000000000000000000000000",
                false,
            ),
            http: vec![s3["S3_ENDPOINT"].trim_start_matches("http://").to_string()],
            setup: Box::new(site),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(r.outcome, Outcome::Exited { code: 1 });
    let err = text(&r.stderr);
    assert!(
        err.contains("HTTP 403") && err.contains("access denied"),
        "{err}"
    );
}
