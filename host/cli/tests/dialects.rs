//! Pipeline dialects through the `sentinel` binary against the real Docker
//! engine: the seed's dockercise example (adapted to local images) runs
//! unchanged with `sentinel run dockercise.yml`; a missing host variable
//! stops it before anything starts, named; the file is found by its usual
//! name when none is given; and `sentinel convert` turns every example into
//! a `sentinel.yml` that runs to the same stages, statuses and outputs.
//! The seed's `wercker.yml` shape runs unchanged too: its build pipeline's
//! steps in one container, a wercker step folder, a service by name,
//! after-steps seeing the result. A WebAssembly step inside a job works on
//! the files the job's earlier steps wrote.

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

/// A project folder holding a copy of an example's files (not the state
/// folder a demo run left there).
fn copy_of(example: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let from = examples().join(example);
    let walk = walkdir::WalkDir::new(&from)
        .min_depth(1)
        .into_iter()
        .filter_entry(|e| e.file_name() != ".sentinel");
    for e in walk {
        let e = e.unwrap();
        let to = tmp.path().join(e.path().strip_prefix(&from).unwrap());
        if e.file_type().is_dir() {
            std::fs::create_dir_all(&to).unwrap();
        } else if e.file_type().is_file() {
            std::fs::copy(e.path(), to).unwrap();
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
    for (example, file) in [
        ("demo", "sentinel.yml"),
        ("dockercise", "dockercise.yml"),
        ("wercker", "wercker.yml"),
    ] {
        let original = copy_of(example);
        let steps = original.path().join("steps");
        let steps = ("SENTINEL_STEPS_PATH", steps.to_str().unwrap());
        let out = sentinel(original.path(), &["run", file], &[REGION, token, steps]);
        assert!(out.status.success(), "{example}: {}", text(&out.stderr));

        let converted = copy_of(example);
        let native = sentinel(converted.path(), &["convert", file], &[steps]);
        assert!(native.status.success(), "{}", text(&native.stderr));
        std::fs::remove_file(converted.path().join(file)).unwrap();
        std::fs::write(converted.path().join("sentinel.yml"), &native.stdout).unwrap();
        let out = sentinel(
            converted.path(),
            &["run", "sentinel.yml"],
            &[REGION, token, steps],
        );
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

/// The steps of a job's stage document: (name, status, after-step).
fn job_steps(run: &Value, stage: &str) -> Vec<(String, String, bool)> {
    let docs = run["stages"].as_array().unwrap();
    let doc = docs.iter().find(|d| d["name"] == stage).unwrap();
    doc["steps"]
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap_or_default().to_string(),
                s["status"].as_str().unwrap_or_default().to_string(),
                s["after"].as_bool().unwrap_or(false),
            )
        })
        .collect()
}

/// A stage's log, from the project's results folder.
fn log_of(dir: &Path, run: &Value, stage: &str) -> String {
    let id = run["run"]["id"].as_str().unwrap();
    std::fs::read_to_string(dir.join(format!(".sentinel/results/run/{id}/{stage}.log")))
        .unwrap_or_default()
}

#[tokio::test]
async fn the_seed_wercker_file_runs_unchanged() {
    common::docker().await;
    let p = copy_of("wercker");
    let steps_path = p.path().join("steps");
    let steps_env = ("SENTINEL_STEPS_PATH", steps_path.to_str().unwrap());

    // Found by its usual name; `build` by default.
    let out = sentinel(p.path(), &["run"], &[steps_env]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{}\n{err}", text(&out.stdout));
    assert!(err.contains("using ./wercker.yml (wercker)"), "{err}");
    let run = last_run(p.path());
    let stages = outcome(&run);
    assert_eq!(stages.len(), 1, "one pipeline, one job: {stages:?}");
    assert_eq!(stages[0].1, "succeeded", "{stages:?}");
    let s = |n: &str, after| (n.to_string(), "succeeded".to_string(), after);
    assert_eq!(
        job_steps(&run, "build"),
        [
            s("install a tool outside the workspace", false),
            s("use it", false),
            s("an export carries over", false),
            s("greet", false),
            s("ask the service", false),
            s("output", false),
            s("report", true),
        ]
    );
    let log = log_of(p.path(), &run, "build");
    for needle in [
        "tool says built on",  // a file outside the workspace, seen by the next step
        "flavour release",     // an export seen by the next step, as in wercker's one shell
        "greeting from greet", // wercker's helper functions in a step folder
        "greet: hello from the box!", // a setting expanded in the container, a default
        "pong",                // the service, by name
        "linked pong",         // and through wercker's link variables
        "build passed",        // WERCKER_RESULT in an after-step
    ] {
        assert!(log.contains(needle), "`{needle}` in the log:\n{log}");
    }
    let id = run["run"]["id"].as_str().unwrap();
    assert!(
        p.path()
            .join(format!(".sentinel/results/run/{id}/build.zip"))
            .is_file(),
        "the output folder is published as build.zip"
    );

    // The deploy pipeline starts from the build's output folder.
    let build_id = id.to_string();
    let out = sentinel(
        p.path(),
        &[
            "run",
            "--pipeline",
            "deploy",
            "--deploy-target",
            "production",
            "--from-run",
            &build_id,
        ],
        &[steps_env],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let deploy = last_run(p.path());
    assert_eq!(deploy["run"]["from_run"], build_id.as_str(), "{deploy}");
    let log = log_of(p.path(), &deploy, "deploy");
    assert!(log.contains("shipping app v1 to production"), "{log}");

    // A failing step skips the rest; the after-steps still run and see it.
    let out = sentinel(p.path(), &["run", "--pipeline", "broken"], &[steps_env]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let run = last_run(p.path());
    assert_eq!(
        job_steps(&run, "broken"),
        [
            ("fails".to_string(), "failed".to_string(), false),
            ("skipped".to_string(), "skipped".to_string(), false),
            ("report".to_string(), "succeeded".to_string(), true),
        ]
    );
    let log = log_of(p.path(), &run, "broken");
    assert!(
        log.contains("before") && !log.contains("never printed") && !log.contains("never runs"),
        "`set -e` ends the script at `false`: {log}"
    );
    assert!(log.contains("broken failed"), "{log}");
}

#[tokio::test]
async fn a_wercker_step_missing_a_required_setting_stops_before_any_container() {
    common::docker().await;
    let p = copy_of("wercker");
    let file = p.path().join("wercker.yml");
    let yml = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        yml.replace(
            "        to: $GREETING from the box\n",
            "        punctuation: '?'\n",
        ),
    )
    .unwrap();
    let steps_path = p.path().join("steps");
    let out = sentinel(
        p.path(),
        &["run", "wercker.yml"],
        &[("SENTINEL_STEPS_PATH", steps_path.to_str().unwrap())],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(
        err.contains("wercker.yml:29:9: step `greet` needs the setting `to`"),
        "{err}"
    );
    assert!(
        !p.path().join(".sentinel/results/run").exists(),
        "nothing ran"
    );
}

#[tokio::test]
async fn a_webassembly_step_in_a_job_sees_what_earlier_steps_wrote() {
    common::docker().await;
    let p = tempfile::tempdir().unwrap();
    std::fs::write(
        p.path().join("sentinel.yml"),
        format!(
            r#"version: 1
box: {image}
defaults: {{network: none, timeout: 60s}}
stages:
  release:
    env: {{FILTER: .version}}
    steps:
      - name: report
        run: |
          echo '{{"version": "1.2.3"}}' > report.json
      - name: pluck
        step: jq-pluck@1
        with: {{file: report.json, filter: $FILTER, raw: "true"}}
      - name: after
        run: echo "still in the job"; test -f report.json
"#,
            image = common::IMAGE
        ),
    )
    .unwrap();
    let out = sentinel(p.path(), &["run"], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let run = last_run(p.path());
    let s = |n: &str| (n.to_string(), "succeeded".to_string(), false);
    assert_eq!(
        job_steps(&run, "release"),
        [s("report"), s("pluck"), s("after")]
    );
    let log = log_of(p.path(), &run, "release");
    let at = |needle: &str| log.find(needle).unwrap_or(usize::MAX);
    assert!(
        at("── step pluck") < at("1.2.3") && at("1.2.3") < at("still in the job"),
        "the step read the file the first step wrote, with the job's $FILTER, in turn: {log}"
    );
}

/// A build that commits its job's container: the deploy started from it
/// runs its job in that image (its box was the build's), with the build's
/// output as its workspace.
#[tokio::test]
async fn a_deploy_runs_in_the_image_its_build_committed() {
    common::docker().await;
    let tmp = tempfile::tempdir().unwrap();
    let tag = format!("sentinel-test/deploy-base:{}", std::process::id());
    let header = format!(
        "version: 1\nbox: {}\ndefaults: {{network: none}}\nstages:\n",
        common::IMAGE
    );
    std::fs::write(
        tmp.path().join("build.yml"),
        format!(
            "{header}  build:\n    user: '0:0'\n    commit: {tag}\n    steps:\n      - run: echo 'tool from the build' > /deploy-tool; echo app > \"$SENTINEL_ARTIFACTS/app.txt\"\n"
        ),
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("deploy.yml"),
        format!("{header}  deploy:\n    steps:\n      - run: cat /deploy-tool; cat app.txt\n"),
    )
    .unwrap();
    let out = sentinel(tmp.path(), &["run", "--json", "-f", "build.yml"], &[]);
    let cleanup = || {
        let _ = Command::new("docker")
            .args(["image", "rm", "-f", &tag])
            .output();
    };
    if !out.status.success() {
        cleanup();
        panic!("{}", text(&out.stderr));
    }
    let build: Value = serde_json::from_str(text(&out.stdout).lines().last().unwrap()).unwrap();
    let id = build["id"].as_str().unwrap().to_string();
    let out = sentinel(
        tmp.path(),
        &["run", "-f", "deploy.yml", "--from-run", &id],
        &[],
    );
    cleanup();
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "job `deploy` runs in the build's committed image {tag}"
        )),
        "{err}"
    );
    let run = last_run(tmp.path());
    let log = log_of(tmp.path(), &run, "deploy");
    assert!(
        log.contains("tool from the build") && log.contains("app"),
        "the committed image and the build's output: {log}"
    );
}
