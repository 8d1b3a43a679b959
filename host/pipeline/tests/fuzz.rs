//! Hostile pipeline files, for every dialect: a structure-aware generator
//! (proptest: YAML documents built from the keys the dialects know, in block
//! and flow style) and byte mutations of the golden files, all fed to the
//! readers and the validation; plus the classic attacks — an alias bomb,
//! 10,000-deep nesting, files at and just past the size cap, invalid
//! UTF-8. Nothing may panic, and each file is answered within a bound far
//! above what a sane one takes. A failing case proptest finds is kept in
//! `fuzz.proptest-regressions` and replayed first on every run.
//!
//! `SENTINEL_FUZZ_CASES` sets how many cases each generator runs (default
//! 20,000 generated documents and 20,000 mutations: seconds in a debug
//! build; 60,000 each found nothing new at the time of writing).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};
use sentinel_pipeline::{Dialect, NoSteps};

/// Far above what any file within the caps takes (debug build, busy CI).
const BOUND: Duration = Duration::from_secs(5);

fn cases() -> u32 {
    std::env::var("SENTINEL_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

fn config() -> Config {
    Config {
        cases: cases(),
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/fuzz.proptest-regressions",
        ))),
        ..Config::default()
    }
}

/// Reads `src` as each dialect and as whatever its content says; a panic
/// fails the test, and so does an answer slower than [`BOUND`].
fn read_all_ways(src: &str) {
    for dialect in [
        None,
        Some(Dialect::Sentinel),
        Some(Dialect::Dockercise),
        Some(Dialect::Wercker),
        Some(Dialect::Cion),
    ] {
        let started = Instant::now();
        let answer = sentinel_pipeline::parse_str_as(
            src,
            "fuzz.yml",
            "fuzz",
            dialect,
            &NoSteps,
            Path::new("."),
        );
        let took = started.elapsed();
        assert!(
            took < BOUND,
            "{dialect:?} took {took:?} for a {}-byte file",
            src.len()
        );
        // Every refusal says where and what.
        if let Err(d) = answer {
            assert!(
                !d.0.is_empty(),
                "{dialect:?}: an error without a diagnostic"
            );
            for x in &d.0 {
                assert!(!x.message.is_empty(), "{dialect:?}: an empty message");
            }
        }
    }
}

/// Keys the dialects know, so generated documents reach past the first
/// "unknown key" into the validation.
const KEYS: &[&str] = &[
    "version",
    "name",
    "box",
    "env",
    "secrets",
    "defaults",
    "services",
    "stages",
    "run",
    "step",
    "with",
    "image",
    "after",
    "volumes",
    "when",
    "sensitive",
    "approval",
    "timeout",
    "idle_timeout",
    "memory",
    "cpus",
    "network",
    "log_limit",
    "pids",
    "user",
    "reuse",
    "cache",
    "key",
    "restore_keys",
    "paths",
    "retry",
    "attempts",
    "on",
    "backoff",
    "steps",
    "after_steps",
    "build",
    "tags",
    "context",
    "dockerfile",
    "args",
    "push",
    "commit",
    "docker",
    "registries",
    "workspace",
    "dirs",
    "img",
    "vol",
    "script",
    "code",
    "deploy",
    "release",
    "ready",
    "command",
    "script",
    "name",
    "stage",
    "path",
    "image_command",
];

/// Scalars that mean something somewhere.
const WORDS: &[&str] = &[
    "1",
    "0",
    "-1",
    "2",
    "10",
    "99999999999999999999",
    "true",
    "false",
    "~",
    "null",
    "on_failure",
    "always",
    "none",
    "bridge",
    "run",
    "90s",
    "1h",
    "0s",
    "forever",
    "512m",
    "2g",
    "x",
    "a",
    "b",
    "build",
    "test",
    "${stages.a.output}",
    "${secrets.T}",
    "${env.X}",
    "${hash(a)}",
    "${",
    "$${x}",
    "jq-pluck@1",
    "./steps/x",
    "infrastructure",
    "timeout",
    "75",
    "sh -c 'exit 1'",
    "sentinel/busybox:local",
    "ubuntu:24.04",
    "é",
    "\u{0}",
    "\u{202e}",
    "",
];

#[derive(Debug, Clone)]
enum Doc {
    Scalar(String),
    Seq(Vec<Doc>),
    Map(Vec<(String, Doc)>),
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::sample::select(KEYS).prop_map(String::from),
        1 => "[a-z_]{1,12}",
        1 => ".{0,8}",
    ]
}

fn scalar() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::sample::select(WORDS).prop_map(String::from),
        2 => ".{0,24}",
        1 => "[0-9.e+-]{1,8}",
    ]
}

fn doc() -> impl Strategy<Value = Doc> {
    scalar()
        .prop_map(Doc::Scalar)
        .prop_recursive(6, 96, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Doc::Seq),
                proptest::collection::vec((key(), inner), 0..8).prop_map(Doc::Map),
            ]
        })
}

/// A value that is mostly what a stage's key takes, sometimes anything.
fn value() -> impl Strategy<Value = Doc> {
    prop_oneof![
        3 => scalar().prop_map(Doc::Scalar),
        1 => proptest::collection::vec(scalar().prop_map(Doc::Scalar), 0..4).prop_map(Doc::Seq),
        1 => doc(),
    ]
}

/// A stage (or job step, or service): known keys with plausible values.
fn stage() -> impl Strategy<Value = Doc> {
    proptest::collection::vec((key(), value()), 0..7).prop_map(Doc::Map)
}

/// A mapping of stage names to stages.
fn stages() -> impl Strategy<Value = Doc> {
    proptest::collection::vec(
        (
            proptest::sample::select(&["a", "b", "build", "test", "x-y", "A", ""][..])
                .prop_map(String::from),
            stage(),
        ),
        0..5,
    )
    .prop_map(Doc::Map)
}

/// A document shaped like one of the dialects, so most cases get past
/// detection into the reader and the validation.
fn dialect_doc() -> impl Strategy<Value = Doc> {
    let extra = || proptest::collection::vec((key(), value()), 0..3);
    prop_oneof![
        // sentinel.yml
        (
            stages(),
            extra(),
            proptest::sample::select(&["1", "2", "x"][..])
        )
            .prop_map(|(st, mut more, v)| {
                more.insert(0, ("stages".into(), st));
                more.insert(0, ("version".into(), Doc::Scalar(v.into())));
                Doc::Map(more)
            }),
        // dockercise: stages at the top
        stages(),
        // wercker.yml: a box and pipelines of steps
        (proptest::collection::vec(value(), 0..4), extra()).prop_map(|(steps, mut more)| {
            more.insert(
                0,
                (
                    "build".into(),
                    Doc::Map(vec![("steps".into(), Doc::Seq(steps))]),
                ),
            );
            more.insert(0, ("box".into(), Doc::Scalar("busybox".into())));
            Doc::Map(more)
        }),
        // .cion.yml: build and release
        (stage(), stage())
            .prop_map(|(b, r)| Doc::Map(vec![("build".into(), b), ("release".into(), r)])),
        // anything
        doc(),
    ]
}

/// A scalar as YAML: plain when harmless, else double-quoted (JSON escapes
/// are YAML escapes), so both styles of scalar reach the reader.
fn quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./@~ ".contains(c))
        && !s.starts_with([' ', '-'])
        && !s.ends_with(' ');
    if plain {
        s.to_string()
    } else {
        serde_json::to_string(s).unwrap()
    }
}

/// Block style (indented mappings and `- ` lists).
fn block(d: &Doc, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match d {
        Doc::Scalar(s) => {
            out.push(' ');
            out.push_str(&quote(s));
            out.push('\n');
        }
        Doc::Seq(items) if items.is_empty() => out.push_str(" []\n"),
        Doc::Map(items) if items.is_empty() => out.push_str(" {}\n"),
        Doc::Seq(items) => {
            out.push('\n');
            for i in items {
                out.push_str(&pad);
                out.push('-');
                block(i, indent + 2, out);
            }
        }
        Doc::Map(items) => {
            out.push('\n');
            for (k, v) in items {
                out.push_str(&pad);
                out.push_str(&quote(k));
                out.push(':');
                block(v, indent + 2, out);
            }
        }
    }
}

/// Flow style (`{a: [b, c]}`).
fn flow(d: &Doc) -> String {
    match d {
        Doc::Scalar(s) => serde_json::to_string(s).unwrap(),
        Doc::Seq(items) => format!(
            "[{}]",
            items.iter().map(flow).collect::<Vec<_>>().join(", ")
        ),
        Doc::Map(items) => format!(
            "{{{}}}",
            items
                .iter()
                .map(|(k, v)| format!("{}: {}", serde_json::to_string(k).unwrap(), flow(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The golden files of every dialect: what mutations start from.
fn corpus() -> Vec<String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut files = Vec::new();
    for dir in ["", "dockercise", "wercker", "cion"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        for e in entries.flatten() {
            if e.path().extension().is_some_and(|x| x == "yaml")
                && let Ok(text) = std::fs::read_to_string(e.path())
            {
                files.push(text);
            }
        }
    }
    files.sort();
    assert!(
        files.len() > 100,
        "the golden corpus is missing ({} files)",
        files.len()
    );
    files
}

#[derive(Debug, Clone)]
enum Edit {
    Insert(usize, String),
    Delete(usize, usize),
    Duplicate(usize, usize),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let edit = prop_oneof![
        (
            any::<usize>(),
            prop_oneof![".{1,3}", "[:\\-\\[\\]{}&*!|>'\"%@` \n\t#,?]{1,3}"]
        )
            .prop_map(|(at, s)| Edit::Insert(at, s)),
        (any::<usize>(), 1..40usize).prop_map(|(at, n)| Edit::Delete(at, n)),
        (any::<usize>(), 1..80usize).prop_map(|(at, n)| Edit::Duplicate(at, n)),
    ];
    proptest::collection::vec(edit, 1..6)
}

/// `text` with `edits` applied at char boundaries.
fn mutate(text: &str, edits: &[Edit]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for e in edits {
        let len = chars.len().max(1);
        match e {
            Edit::Insert(at, s) => {
                let at = at % (chars.len() + 1);
                chars.splice(at..at, s.chars());
            }
            Edit::Delete(at, n) => {
                let at = at % len;
                let end = (at + n).min(chars.len());
                if at < end {
                    chars.drain(at..end);
                }
            }
            Edit::Duplicate(at, n) => {
                let at = at % len;
                let end = (at + n).min(chars.len());
                if at < end {
                    let copy: Vec<char> = chars[at..end].to_vec();
                    chars.splice(end..end, copy);
                }
            }
        }
    }
    chars.into_iter().collect()
}

#[test]
fn generated_documents_of_every_dialect() {
    proptest!(config(), |(d in dialect_doc(), flow_style in any::<bool>(), top in proptest::sample::select(&["stages", "build", "box", ""][..]))| {
        // Most documents are a mapping whose first key a dialect detects by.
        let d = match d {
            Doc::Map(mut items) if !top.is_empty() => {
                items.insert(0, (top.to_string(), Doc::Map(vec![("a".into(), Doc::Scalar("x".into()))])));
                Doc::Map(items)
            }
            other => other,
        };
        let text = if flow_style {
            flow(&d)
        } else {
            let mut s = String::new();
            block(&d, 0, &mut s);
            s.trim_start().to_string()
        };
        read_all_ways(&text);
    });
}

#[test]
fn mutated_golden_files_of_every_dialect() {
    let corpus = corpus();
    proptest!(config(), |(i in any::<proptest::sample::Index>(), e in edits())| {
        let base: &String = i.get(&corpus);
        let text = mutate(base, &e);
        read_all_ways(&text);
    });
}

/// A file that expands each alias ten times, nine levels deep (10⁹ nodes
/// were it expanded).
#[test]
fn an_alias_bomb_is_refused_quickly() {
    let mut src = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..10 {
        let prev = format!("*a{}", i - 1);
        let list = vec![prev; 10].join(", ");
        src.push_str(&format!("a{i}: &a{i} [{list}]\n"));
    }
    src.push_str("stages:\n  s: {run: x, env: {B: *a9}}\n");
    read_all_ways(&src);
    let err = sentinel_pipeline::parse_str(&src, "bomb.yml", "p").unwrap_err();
    let text = err.to_string();
    assert!(text.contains("alias") || text.contains("values"), "{text}");
}

#[test]
fn ten_thousand_deep_nesting_is_refused_in_both_styles() {
    let flow = format!("stages: {}x{}\n", "[".repeat(10_000), "]".repeat(10_000));
    let mut block = String::new();
    for i in 0..10_000 {
        block.push_str(&" ".repeat(i));
        block.push_str("a:\n");
    }
    let mut dashes = String::new();
    for i in 0..10_000 {
        dashes.push_str(&" ".repeat(i * 2));
        dashes.push_str("-\n");
    }
    for src in [flow, block, dashes] {
        read_all_ways(&src);
        let err = sentinel_pipeline::parse_str(&src, "deep.yml", "p").unwrap_err();
        assert!(
            err.to_string().contains("deep") || err.to_string().contains("nest"),
            "{err}"
        );
    }
}

#[test]
fn files_at_and_just_past_the_size_cap() {
    let cap = sentinel_pipeline::yaml::Caps::default().max_bytes;
    let head = "version: 1\nbox: b\nstages:\n  a:\n    run: |\n";
    let line = format!("      {}\n", "x".repeat(70));
    let mut at = String::from(head);
    while at.len() + line.len() <= cap {
        at.push_str(&line);
    }
    at.push_str(&" ".repeat(cap - at.len() - 1));
    at.push('\n');
    assert_eq!(at.len(), cap);
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let plan = sentinel_pipeline::load(&write("sentinel.yml", at.as_bytes()))
        .expect("a file of exactly the cap is read");
    assert_eq!(plan.stages.len(), 1);
    let past = format!("{at}#");
    read_all_ways(&past);
    let err = sentinel_pipeline::load(&write("sentinel.yml", past.as_bytes())).unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("the limit is {cap} bytes")),
        "{err}"
    );
}

#[test]
fn invalid_utf8_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sentinel.yml");
    std::fs::write(&path, b"version: 1\nstages:\n  a: {run: \"\xff\xfe\"}\n").unwrap();
    let err = sentinel_pipeline::load(&path).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("sentinel.yml") && text.contains("UTF-8"),
        "{text}"
    );
}
