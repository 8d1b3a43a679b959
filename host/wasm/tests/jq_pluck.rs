//! The bundled jq-pluck step, run as its real component: the assume-role
//! case, and a differential test against Debian's `jq` on 30+ filters.

mod common;

use common::{Spec, assert_ok, component, run, text};
use sentinel_engine::exec::Outcome;

const ASSUME_ROLE: &str = r#"{
  "Credentials": {
    "AccessKeyId": "ASIAEXAMPLEKEY123456",
    "SecretAccessKey": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "SessionToken": "FwoGZXIvYXdzEXAMPLETOKEN",
    "Expiration": "2026-11-22T07:00:00Z"
  },
  "AssumedRoleUser": {
    "AssumedRoleId": "AROAEXAMPLE:deploy",
    "Arn": "arn:aws:sts::123456789012:assumed-role/Deploy/deploy"
  }
}"#;

const DOC: &str = r#"{"name":"sentinel","version":"1.2.3","tags":["ci","cd","wasm"],
"stages":[{"name":"build","ms":1200,"ok":true},{"name":"test","ms":3400,"ok":false},{"name":"deploy","ms":800,"ok":true}],
"meta":{"owner":null,"stars":42,"ratio":0.75,"nested":{"a":{"b":[1,2,3]}}},"empty":[],"text":"Hello, World"}"#;

fn settings(filter: &str, input: &str, raw: bool) -> Vec<(String, String)> {
    vec![
        ("SENTINEL_JQ_PLUCK_FILTER".into(), filter.into()),
        ("SENTINEL_JQ_PLUCK_INPUT".into(), input.into()),
        ("SENTINEL_JQ_PLUCK_RAW".into(), raw.to_string()),
    ]
}

#[tokio::test]
async fn plucks_the_access_key_from_assume_role_output() {
    let step = component("jq-pluck");
    let r = run(
        &step,
        Spec {
            env: settings(".Credentials.AccessKeyId", ASSUME_ROLE, true),
            ..Default::default()
        },
    )
    .await;
    assert_ok(&r);
    assert_eq!(text(&r.stdout), "ASIAEXAMPLEKEY123456\n");
    let r = run(
        &step,
        Spec {
            env: settings(".Credentials.AccessKeyId", ASSUME_ROLE, false),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(text(&r.stdout), "\"ASIAEXAMPLEKEY123456\"\n");
}

#[tokio::test]
async fn reads_a_workspace_file_and_reports_bad_input() {
    let step = component("jq-pluck");
    let env = vec![
        ("SENTINEL_JQ_PLUCK_FILTER".into(), ".version".into()),
        ("SENTINEL_JQ_PLUCK_FILE".into(), "data/doc.json".into()),
        ("SENTINEL_JQ_PLUCK_RAW".into(), "true".into()),
    ];
    let setup = |ws: &std::path::Path| {
        std::fs::create_dir_all(ws.join("data")).unwrap();
        std::fs::write(ws.join("data/doc.json"), DOC).unwrap();
    };
    let r = run(
        &step,
        Spec {
            env,
            setup: Box::new(setup),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(text(&r.stdout), "1.2.3\n", "{}", text(&r.stderr));
    let r = run(
        &step,
        Spec {
            env: settings(".a", "{not json", false),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(r.outcome, Outcome::Exited { code: 1 });
    assert!(
        text(&r.stderr).contains("the input is not JSON"),
        "{}",
        text(&r.stderr)
    );
    let r = run(
        &step,
        Spec {
            env: vec![("SENTINEL_JQ_PLUCK_INPUT".into(), "{}".into())],
            ..Default::default()
        },
    )
    .await;
    assert!(
        text(&r.stderr).contains("missing setting `filter` (SENTINEL_JQ_PLUCK_FILTER)"),
        "{}",
        text(&r.stderr)
    );
}

const FILTERS: &[(&str, bool)] = &[
    (".", false),
    (".name", false),
    (".name", true),
    (".tags", false),
    (".tags[0]", true),
    (".tags[-1]", false),
    (".tags[1:]", false),
    (".tags | length", false),
    (".stages[].name", true),
    (".stages | map(.ms) | add", false),
    (".stages | map(select(.ok)) | length", false),
    (".stages[] | select(.ms > 1000) | .name", false),
    (".stages | sort_by(.ms) | .[0].name", true),
    (".stages | max_by(.ms).name", false),
    ("[.stages[] | {(.name): .ms}] | add", false),
    (".meta | keys", false),
    (".meta | to_entries | map(.key)", false),
    (".meta.owner // \"nobody\"", true),
    (".meta.stars * 2 + 1", false),
    (".meta.ratio * 100 | floor", false),
    (".meta.nested.a.b | map(. * 10)", false),
    (".meta.nested | paths | map(tostring) | join(\".\")", true),
    (".empty | length == 0", false),
    (".text | ascii_downcase", true),
    (".text | split(\", \")", false),
    (".text | test(\"World\")", false),
    (".version | split(\".\") | map(tonumber)", false),
    ("[.tags[] | ascii_upcase] | join(\"-\")", true),
    ("{name, v: .version}", false),
    (".stages | group_by(.ok) | map(length)", false),
    ("[range(0; 5)]", false),
    (
        "if .meta.stars > 40 then \"popular\" else \"quiet\" end",
        true,
    ),
    (".tags | index(\"cd\")", false),
    ("reduce .stages[] as $s (0; . + $s.ms)", false),
    (".stages | first(.[] | select(.ok | not)) | .name", true),
    ("[.tags[] | length] | min", false),
];

/// Runs Debian's jq; the test fails with how to install it when it is missing.
fn jq(filter: &str, input: &str, raw: bool) -> String {
    let mut cmd = std::process::Command::new("jq");
    cmd.arg(if raw { "-rc" } else { "-c" })
        .arg(filter)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| {
        panic!("cannot run jq ({e}): install it with `apt-get install jq` (scripts/setup.sh does)")
    });
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "jq failed on `{filter}`");
    String::from_utf8(out.stdout).unwrap()
}

fn same(ours: &str, theirs: &str, raw: bool) -> bool {
    let a: Vec<&str> = ours.lines().collect();
    let b: Vec<&str> = theirs.lines().collect();
    a.len() == b.len()
        && a.iter().zip(&b).all(|(x, y)| {
            if raw && x == y {
                return true;
            }
            match (
                serde_json::from_str::<serde_json::Value>(x),
                serde_json::from_str::<serde_json::Value>(y),
            ) {
                (Ok(p), Ok(q)) => p == q || (p.as_f64().is_some() && p.as_f64() == q.as_f64()),
                _ => x == y,
            }
        })
}

#[tokio::test]
async fn agrees_with_jq_on_30_filters() {
    let step = component("jq-pluck");
    assert!(FILTERS.len() >= 30);
    let mut differences = Vec::new();
    for (filter, raw) in FILTERS {
        let r = run(
            &step,
            Spec {
                env: settings(filter, DOC, *raw),
                ..Default::default()
            },
        )
        .await;
        let ours = text(&r.stdout);
        let theirs = jq(filter, DOC, *raw);
        if r.outcome != (Outcome::Exited { code: 0 }) || !same(&ours, &theirs, *raw) {
            differences.push(format!(
                "`{filter}` (raw {raw}): jq-pluck {:?} {ours:?} {}, jq {theirs:?}",
                r.outcome,
                text(&r.stderr)
            ));
        }
    }
    assert!(
        differences.is_empty(),
        "{} of {} filters differ:\n{}",
        differences.len(),
        FILTERS.len(),
        differences.join("\n")
    );
}
