//! Golden files: each `tests/golden/NAME.yaml` has either `NAME.json` (the
//! expected plan) or `NAME.err` (the expected diagnostics). Set
//! `SENTINEL_BLESS=1` to write the expected files from the current output.

use std::path::Path;

#[test]
fn golden_files() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let bless = std::env::var_os("SENTINEL_BLESS").is_some();
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 30,
        "expected at least 30 golden cases, found {}",
        cases.len()
    );
    let mut failures = Vec::new();
    for case in &cases {
        let name = case.file_stem().unwrap().to_string_lossy().into_owned();
        let src = std::fs::read_to_string(case).unwrap();
        let (actual, ext) =
            match sentinel_pipeline::parse_str(&src, &format!("{name}.yaml"), "golden") {
                Ok(plan) => (serde_json::to_string_pretty(&plan).unwrap() + "\n", "json"),
                Err(d) => (d.to_string() + "\n", "err"),
            };
        let expected_path = case.with_extension(ext);
        let other = case.with_extension(if ext == "json" { "err" } else { "json" });
        if bless {
            std::fs::write(&expected_path, &actual).unwrap();
            let _ = std::fs::remove_file(&other);
            continue;
        }
        if name.starts_with("ok_") != (ext == "json") {
            failures.push(format!(
                "{name}: expected {} but got:\n{actual}",
                if name.starts_with("ok_") {
                    "a plan"
                } else {
                    "an error"
                }
            ));
            continue;
        }
        match std::fs::read_to_string(&expected_path) {
            Ok(expected) if expected == actual => {}
            Ok(expected) => failures.push(format!("{name}: expected\n{expected}\ngot\n{actual}")),
            Err(_) => failures.push(format!(
                "{name}: no {} file; got\n{actual}",
                expected_path.display()
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} golden case(s) differ:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn json_schema_is_committed_and_current() {
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/sentinel.schema.json");
    let current = serde_json::to_string_pretty(&sentinel_pipeline::json_schema()).unwrap() + "\n";
    if std::env::var_os("SENTINEL_BLESS").is_some() {
        std::fs::write(&committed, &current).unwrap();
    }
    let on_disk = std::fs::read_to_string(&committed).unwrap_or_else(|_| {
        panic!(
            "{} is missing: run `sentinel schema > docs/sentinel.schema.json`",
            committed.display()
        )
    });
    assert_eq!(
        on_disk, current,
        "docs/sentinel.schema.json is stale: run `sentinel schema > docs/sentinel.schema.json`"
    );
}
