//! Golden files: each `tests/golden/NAME.yaml` (a `sentinel.yml`) and each
//! `tests/golden/dockercise/NAME.yaml` (a dockercise file) and each
//! `tests/golden/cion/NAME.yaml` (a .cion.yml) and each
//! `tests/golden/wercker/NAME.yaml` (a wercker.yml, whose first line may
//! choose the pipeline: `# select: pipeline=deploy deploy_target=prod`) has either
//! `NAME.json` (the expected plan) or `NAME.err` (the expected
//! diagnostics). Set `SENTINEL_BLESS=1` to write the expected files from
//! the current output — never under CI, where it would make any output pass.
//! Every valid case is also converted to a native `sentinel.yml`, which must
//! read back as the same plan.

use std::path::{Path, PathBuf};

use sentinel_pipeline::{Dialect, DirCatalog, NoSteps, Plan, Select, Shell, StepCatalog};

fn blessing() -> bool {
    let bless = std::env::var_os("SENTINEL_BLESS").is_some();
    assert!(
        !(bless && std::env::var("CI").is_ok_and(|v| v == "true")),
        "SENTINEL_BLESS rewrites the expected files; it is refused under CI=true"
    );
    bless
}

fn cases(dir: &Path) -> Vec<PathBuf> {
    let mut cases: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    cases.sort();
    cases
}

/// The plan as a converted file gives it: the same, but for the script of
/// a `sh -c` stage, which the conversion starts with `set +e`.
fn as_converted(mut plan: Plan) -> Plan {
    for s in &mut plan.stages {
        if let sentinel_pipeline::Action::Container(c) = &mut s.action
            && c.shell == Shell::Plain
        {
            c.script = format!("set +e\n{}", c.script);
            c.shell = Shell::Strict;
        }
        if let sentinel_pipeline::Action::Job(j) = &mut s.action
            && j.shell == Shell::Plain
        {
            for st in j.steps.iter_mut().chain(&mut j.after_steps) {
                if let sentinel_pipeline::JobRun::Script(script) = &mut st.run {
                    *script = format!("set +e\n{script}");
                }
            }
            j.shell = Shell::Strict;
        }
    }
    plan
}

/// The pipeline a case chooses, from a first line like
/// `# select: pipeline=deploy deploy_target=production`.
fn select_of(src: &str) -> Select {
    let mut select = Select::default();
    if let Some(rest) = src.lines().next().and_then(|l| l.strip_prefix("# select:")) {
        for pair in rest.split_whitespace() {
            match pair.split_once('=') {
                Some(("pipeline", v)) => select.pipeline = Some(v.to_string()),
                Some(("deploy_target", v)) => select.deploy_target = Some(v.to_string()),
                _ => panic!("unknown select `{pair}`"),
            }
        }
    }
    select
}

fn run_golden(dir: &Path, dialect: Option<Dialect>, at_least: usize) {
    run_golden_with(dir, dialect, at_least, &NoSteps)
}

fn run_golden_with(
    dir: &Path,
    dialect: Option<Dialect>,
    at_least: usize,
    catalog: &dyn StepCatalog,
) {
    let bless = blessing();
    let cases = cases(dir);
    assert!(
        cases.len() >= at_least,
        "expected at least {at_least} golden cases in {}, found {}",
        dir.display(),
        cases.len()
    );
    let mut failures = Vec::new();
    for case in &cases {
        let name = case.file_stem().unwrap().to_string_lossy().into_owned();
        let src = std::fs::read_to_string(case).unwrap();
        let file = format!("{name}.yaml");
        let select = select_of(&src);
        let parsed = sentinel_pipeline::dialect::read_selected(&src, &file, dialect, &select)
            .and_then(|draft| {
                sentinel_pipeline::plan_draft(&draft, &file, "golden", catalog, Path::new("."))
            });
        let (actual, ext) = match &parsed {
            Ok(plan) => (serde_json::to_string_pretty(plan).unwrap() + "\n", "json"),
            Err(d) => (d.to_string() + "\n", "err"),
        };
        if let Ok(plan) = &parsed {
            let draft =
                sentinel_pipeline::dialect::read_selected(&src, &file, dialect, &select).unwrap();
            let native = sentinel_pipeline::convert::to_native(&draft, &file);
            let back = sentinel_pipeline::parse_str_with(
                &native,
                "converted.yml",
                "golden",
                catalog,
                Path::new("."),
            );
            match back {
                Ok(back) if back == as_converted(plan.clone()) => {}
                Ok(back) => failures.push(format!(
                    "{name}: the converted file reads back as another plan:\n{native}\n{}",
                    serde_json::to_string_pretty(&back).unwrap()
                )),
                Err(e) => failures.push(format!(
                    "{name}: the converted file is not valid: {e}\n{native}"
                )),
            }
        }
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
fn golden_files() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    run_golden(&dir, None, 54);
}

#[test]
fn dockercise_golden_files() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/dockercise");
    run_golden(&dir, Some(Dialect::Dockercise), 20);
}

#[test]
fn cion_golden_files() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/cion");
    run_golden(&dir, Some(Dialect::Cion), 4);
}

#[test]
fn wercker_golden_files() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/wercker");
    // Relative, so the plans name the same paths on every machine.
    let catalog = DirCatalog {
        dirs: vec!["tests/golden/wercker/steps".into()],
    };
    run_golden_with(&dir, Some(Dialect::Wercker), 30, &catalog);
}

#[test]
fn json_schema_is_committed_and_current() {
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/sentinel.schema.json");
    let current = serde_json::to_string_pretty(&sentinel_pipeline::json_schema()).unwrap() + "\n";
    if blessing() {
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

#[test]
fn blessing_is_refused_under_ci() {
    // The test binary runs itself with both set: the golden test must fail,
    // not rewrite the expected files and pass.
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "golden_files", "--nocapture"])
        .env("CI", "true")
        .env("SENTINEL_BLESS", "1")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "blessing passed under CI: {text}");
    assert!(text.contains("refused under CI=true"), "{text}");
}
