//! Shared by the S3 tests: the real S3 server (Garage on loopback, started
//! by `scripts/s3-server.sh`) and a sink pointed at it.

#![allow(dead_code)]

pub mod proxy;

use sentinel_s3::{S3Config, S3Sink};

pub use sentinel_testkit::s3_server;

/// A sink on the S3 server, through `endpoint` when given (a proxy).
pub fn sink_via(prefix: &str, endpoint: Option<String>) -> S3Sink {
    let s3 = s3_server();
    let cfg = S3Config {
        bucket: s3["S3_BUCKET"].clone(),
        prefix: prefix.to_string(),
        region: Some(s3["S3_REGION"].clone()),
        endpoint: Some(endpoint.unwrap_or_else(|| s3["S3_ENDPOINT"].clone())),
        path_style: true,
        role_arn: None,
        external_id: None,
    };
    S3Sink::with_keys(cfg, &s3["AWS_ACCESS_KEY_ID"], &s3["AWS_SECRET_ACCESS_KEY"])
}

pub fn unique(name: &str) -> String {
    format!(
        "test-{name}-{}",
        ulid::Ulid::new().to_string().to_lowercase()
    )
}

pub fn sink(prefix: &str) -> S3Sink {
    sink_via(prefix, None)
}
