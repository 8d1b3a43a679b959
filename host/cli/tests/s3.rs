//! `sentinel run --s3 …` against the real S3 server on loopback (Garage,
//! started by `scripts/s3-server.sh`): the results land in the bucket under
//! the prefix as well as in the results folder, readable from the bucket's
//! website; with S3 unreachable the run still succeeds and says what waits.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Output};

use common::Project;

const PIPELINE: &str = "version: 1\nstages:\n  pluck:\n    step: jq-pluck@1\n    with: {input: '{\"k\": \"from-s3-test\"}', filter: .k, raw: 'true'}\n";

use sentinel_testkit::s3_server as s3;

fn run(p: &Project, s3: &BTreeMap<String, String>, url: &str, endpoint: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sentinel"))
        .arg("-C")
        .arg(&p.source)
        .args(["--state"])
        .arg(&p.state)
        .args(["--results"])
        .arg(&p.results)
        .args(["run", "--json", "--s3", url, "--s3-endpoint", endpoint])
        .args(["--s3-region", &s3["S3_REGION"], "--s3-path-style"])
        .env("AWS_ACCESS_KEY_ID", &s3["AWS_ACCESS_KEY_ID"])
        .env("AWS_SECRET_ACCESS_KEY", &s3["AWS_SECRET_ACCESS_KEY"])
        .env_remove("AWS_PROFILE")
        .output()
        .unwrap()
}

fn run_id(out: &Output) -> String {
    assert!(
        out.status.success(),
        "sentinel run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    let doc: serde_json::Value = serde_json::from_str(&last).unwrap();
    assert_eq!(doc["status"], "succeeded");
    doc["id"].as_str().unwrap().to_string()
}

/// GETs a JSON document from the bucket's website endpoint.
fn from_website(bucket: &str, key: &str) -> serde_json::Value {
    let page = sentinel_testkit::website_get(&s3(), bucket, key);
    assert_eq!(page.status, 200, "GET {key} from the bucket's website");
    serde_json::from_slice(&page.body).unwrap()
}

#[test]
fn results_land_in_the_bucket_too() {
    let s3 = s3();
    let p = Project::new(PIPELINE);
    let prefix = format!("cli-{}", std::process::id());
    let url = format!("s3://{}/{prefix}", s3["S3_BUCKET"]);
    let id = run_id(&run(&p, &s3, &url, &s3["S3_ENDPOINT"]));

    let run = from_website(&s3["S3_BUCKET"], &format!("{prefix}/run/{id}/run.json"));
    assert_eq!(run["status"], "succeeded");
    let stage = from_website(&s3["S3_BUCKET"], &format!("{prefix}/run/{id}/pluck.json"));
    assert_eq!(stage["output"], "from-s3-test");
    let index = from_website(&s3["S3_BUCKET"], &format!("{prefix}/runs/index.json"));
    let chunk = index["chunks"][0]["key"].as_str().unwrap().to_string();
    let chunk = from_website(&s3["S3_BUCKET"], &format!("{prefix}/{chunk}"));
    assert_eq!(chunk["runs"][0]["id"], id.as_str());
    // The results folder has them too (`sentinel show` reads it).
    assert!(p.results.join(format!("run/{id}/run.json")).is_file());
}

#[test]
fn an_unreachable_bucket_does_not_fail_the_run() {
    let s3 = s3();
    let p = Project::new(PIPELINE);
    // Nothing listens on port 9 of loopback.
    let out = run(&p, &s3, "s3://nowhere/x", "http://127.0.0.1:9");
    let id = run_id(&out);
    assert!(p.results.join(format!("run/{id}/run.json")).is_file());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("could not reach s3://nowhere/x/ yet"),
        "says what waits: {err}"
    );
}
