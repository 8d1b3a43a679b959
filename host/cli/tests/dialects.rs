//! Pipeline dialects through the `sentinel` binary against the real Docker
//! engine: the seed's dockercise example (adapted to local images) runs
//! unchanged with `sentinel run dockercise.yml`; a missing host variable
//! stops it before anything starts, named; the file is found by its usual
//! name when none is given; and `sentinel convert` turns every example into
//! a `sentinel.yml` that runs to the same stages, statuses and outputs.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// `sentinel ARGS` in `dir`, with a clean environment for Sentinel's own settings.
fn sentinel(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sentinel"));
    c.current_dir(dir)
        .args(args)
        .env_remove("SENTINEL_STATE")
        .env_remove("SENTINEL_RESULTS")
        .env_remove("SENTINEL_DIR")
        .env_remove("AWS_DEFAULT_REGION");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A project folder holding a copy of an example's files.
fn copy_of(example: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(examples().join(example)).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), tmp.path().join(e.file_name())).unwrap();
        }
    }
    tmp
}

/// The newest run of a project and its stage documents.
fn last_run(dir: &Path) -> Value {
    let out = sentinel(dir, &["show", "last", "--json"], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Stage name → (status, output with the run's own id replaced).
fn outcome(run: &Value) -> Vec<(String, String, String)> {
    let id = run["run"]["id"].as_str().unwrap_or_default();
    let mut out: Vec<(String, String, String)> = run["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap_or_default().to_string(),
                s["status"].as_str().unwrap_or_default().to_string(),
                s["output"].as_str().unwrap_or_default().replace(id, "RUN"),
            )
        })
        .collect();
    out.sort();
    out
}

const REGION: (&str, &str) = ("AWS_DEFAULT_REGION", "eu-west-1");

#[tokio::test]
async fn the_seed_dockercise_example_runs_unchanged() {
    common::docker().await;
    let p = copy_of("dockercise");
    let out = sentinel(p.path(), &["run", "dockercise.yml"], &[REGION]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let run = last_run(p.path());
    let stages = outcome(&run);
    assert_eq!(stages.len(), 7, "{stages:?}");
    assert!(
        stages.iter().all(|(_, s, _)| s == "succeeded"),
        "{stages:?}"
    );
    let output = |name: &str| {
        stages
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, _, o)| o.clone())
            .unwrap_or_default()
    };
    // `env` named stages (their outputs, upper-cased and masked: they come
    // from a sensitive stage) and a host variable; `vol` brought get-code's files.
    assert_eq!(
        output("create-stack"),
        "create-stack infra in eu-west-1 with key *** from Resources {}"
    );
    assert_eq!(
        output("wait-for-success"),
        "stack infra complete in eu-west-1"
    );
    assert_eq!(
        output("aws_access_key_id"),
        "***",
        "a plucked credential is masked"
    );
    let docs = run["stages"].as_array().unwrap();
    let assume = docs.iter().find(|d| d["name"] == "assume-role").unwrap();
    assert_eq!(assume["sensitive"], true);
    assert!(
        assume["output"].is_null(),
        "a sensitive output is never published"
    );
    // The implicit edges: create-stack after the three keys and get-code.
    let needs: Vec<&str> = docs.iter().find(|d| d["name"] == "create-stack").unwrap()["needs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        needs,
        [
            "aws_access_key_id",
            "aws_secret_access_key",
            "aws_session_token",
            "get-code"
        ]
    );
    // No credential reached a log, a document or anything else kept.
    for entry in walkdir::WalkDir::new(p.path()).into_iter().flatten() {
        if entry.file_type().is_file() {
            let t = text(&std::fs::read(entry.path()).unwrap());
            assert!(
                !(t.contains("secret-1") || t.contains("token-1") || t.contains("\"ASIA1")),
                "{} holds a credential",
                entry.path().display()
            );
        }
    }
}

#[tokio::test]
async fn a_missing_host_variable_stops_the_run_before_it_starts_named() {
    common::docker().await;
    let p = copy_of("dockercise");
    // Found by its usual name: no file given.
    let out = sentinel(p.path(), &["run"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(err.contains("using ./dockercise.yml (dockercise)"), "{err}");
    assert!(
        err.contains("environment variable `AWS_DEFAULT_REGION` is not set")
            && err.contains("stages `create-stack`, `wait-for-success` take it"),
        "{err}"
    );
    assert!(
        !p.path().join(".sentinel/results/run").exists(),
        "nothing ran, nothing was published"
    );
    assert!(
        common::leftovers(None)
            .await
            .iter()
            .all(|l| !l.contains("assume-role")),
        "no container started"
    );
}

#[tokio::test]
async fn converted_examples_run_to_the_same_result() {
    common::docker().await;
    let token = ("DEMO_TOKEN", "demo-token-for-the-convert-test");
    for (example, file) in [("demo", "sentinel.yml"), ("dockercise", "dockercise.yml")] {
        let original = copy_of(example);
        let out = sentinel(original.path(), &["run", file], &[REGION, token]);
        assert!(out.status.success(), "{example}: {}", text(&out.stderr));

        let converted = copy_of(example);
        let native = sentinel(converted.path(), &["convert", file], &[]);
        assert!(native.status.success(), "{}", text(&native.stderr));
        std::fs::remove_file(converted.path().join(file)).unwrap();
        std::fs::write(converted.path().join("sentinel.yml"), &native.stdout).unwrap();
        let out = sentinel(converted.path(), &["run", "sentinel.yml"], &[REGION, token]);
        assert!(
            out.status.success(),
            "{example} converted:\n{}\n{}",
            text(&native.stdout),
            text(&out.stderr)
        );
        assert_eq!(
            outcome(&last_run(original.path())),
            outcome(&last_run(converted.path())),
            "{example}: the converted file runs to the same stages, statuses and outputs:\n{}",
            text(&native.stdout)
        );
    }
}
