//! A bucket prefix as a deploy watcher's location, on the real S3 server:
//! every key under the prefix listed across pages, objects read whole,
//! a missing one said, and one past the cap refused.

mod common;

use sentinel_deploy::{Location, SourceError};
use sentinel_s3::S3Location;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn markers_are_listed_across_pages_and_payloads_read_within_a_cap() {
    let prefix = common::unique("location");
    let sink = common::sink(&prefix);
    let put = |key: &str, bytes: Vec<u8>| {
        let (sink, key) = (sink.clone(), sink.key(key));
        async move {
            sink.client()
                .put_object()
                .bucket(sink.bucket())
                .key(key)
                .body(bytes.into())
                .send()
                .await
                .unwrap();
        }
    };
    let markers = [
        "deploys/video/1.0.1-21.deploy",
        "deploys/video/1.0.1-22.deploy",
        "deploys/audio/3.deploy",
        "deploys/audio/4.deploy",
        "deploys/audio/5.deploy",
    ];
    for m in markers {
        put(m, Vec::new()).await;
    }
    put("payloads/video/p.tar.gz", vec![9u8; 100]).await;
    // Beside the prefix, never listed.
    let outside = common::sink(&format!("{prefix}-other"));
    outside
        .client()
        .put_object()
        .bucket(outside.bucket())
        .key(outside.key("deploys/video/9.deploy"))
        .body(Vec::new().into())
        .send()
        .await
        .unwrap();

    let loc = S3Location::new(common::sink(&prefix)).with_page_size(2);
    let mut want: Vec<&str> = markers.to_vec();
    want.sort();
    assert_eq!(loc.list("deploys").await.unwrap(), want);
    assert_eq!(loc.list("").await.unwrap().len(), 6);
    assert!(loc.list("nothing").await.unwrap().is_empty());
    assert_eq!(
        loc.read("payloads/video/p.tar.gz", 100).await.unwrap(),
        Some(vec![9u8; 100])
    );
    assert_eq!(loc.read("payloads/video/none", 100).await.unwrap(), None);
    assert!(matches!(
        loc.read("payloads/video/p.tar.gz", 99).await,
        Err(SourceError::TooLarge { cap: 99, .. })
    ));
    assert!(loc.describe().ends_with(&prefix), "{}", loc.describe());

    // An unreachable server is an error to retry, not an empty bucket.
    let down = S3Location::new(common::sink_via(&prefix, Some("http://127.0.0.1:9".into())));
    assert!(matches!(down.list("").await, Err(SourceError::Read { .. })));
}
