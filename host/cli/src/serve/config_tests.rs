//! Tests of the server's configuration: precedence, defaults, and what
//! is refused at start.

use super::*;
use clap::Parser;

#[derive(Parser)]
struct T {
    #[command(flatten)]
    a: ServeArgs,
}

#[test]
fn flags_override_the_file_and_mistakes_are_located() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("server.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:9000\"\nruns = 3\n[repos.app]\nurl = \"file:///srv/app.git\"\ngithub = \"octo/app\"\n[api]\npublic_read = true\n",
    )
    .unwrap();
    let t = T::try_parse_from([
        "x",
        "--config",
        file.to_str().unwrap(),
        "--runs",
        "5",
        "--repo",
        "lib=file:///srv/lib.git",
    ])
    .unwrap();
    let s = Settings::resolve(&t.a, None, None, tmp.path()).unwrap();
    assert_eq!(s.listen.port(), 9000);
    assert_eq!(s.runs, 5, "the flag wins");
    assert!(s.api.public_read);
    assert_eq!(s.api.repos["app"].github.as_deref(), Some("octo/app"));
    assert_eq!(s.api.repos["lib"].url, "file:///srv/lib.git");
    assert_eq!(s.state, tmp.path().join(".sentinel"));
    assert_eq!(s.ready_namespaces, 8, "twice the default 4 jobs");
    let many = T::try_parse_from(["x", "--jobs", "12"]).unwrap();
    let many = Settings::resolve(&many.a, None, None, tmp.path()).unwrap();
    assert_eq!(many.ready_namespaces, 16, "at most 16");
    // A relative state folder becomes absolute (containers mount it).
    let rel = Settings::resolve(&t.a, Some("rel-state".into()), None, tmp.path()).unwrap();
    assert!(
        rel.state.is_absolute() && rel.results.is_absolute(),
        "{rel:?}"
    );
    assert!(rel.state.ends_with("rel-state"));
    let printed = s.to_toml().unwrap();
    assert!(
        printed.contains("runs = 5") && printed.contains("[api.repos.app]"),
        "{printed}"
    );

    std::fs::write(&file, "listen = \"127.0.0.1:9000\"\nruns = \"many\"\n").unwrap();
    let e = read_file(&file).unwrap_err().to_string();
    assert!(e.contains("server.toml:2:8"), "{e}");
    std::fs::write(&file, "lisen = 1\n").unwrap();
    let e = read_file(&file).unwrap_err().to_string();
    assert!(e.contains(":1:1") && e.contains("lisen"), "{e}");
}

#[test]
fn the_cache_stays_out_of_the_results() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("server.toml");
    let resolve = |cache: &str| {
        std::fs::write(
            &file,
            format!(
                "[s3]\nurl = \"s3://ci/results\"\n[cache]\nurl = \"{cache}\"\nbudget_mib = 512\n"
            ),
        )
        .unwrap();
        let t = T::try_parse_from(["x", "--config", file.to_str().unwrap()]).unwrap();
        Settings::resolve(&t.a, None, None, tmp.path())
    };
    for inside in ["s3://ci/results", "s3://ci/results/cache"] {
        let e = resolve(inside).unwrap_err().to_string();
        assert!(e.contains("lies inside the results"), "{inside}: {e}");
    }
    let s = resolve("s3://ci/cache").unwrap();
    assert_eq!(s.cache.budget_mib, 512);
    assert_eq!(s.cache.max_entry_mib, 1000, "wercker's cap by default");
    assert!(resolve("s3://other/results").is_ok());
}

#[test]
fn watchers_and_environments_that_cannot_work_are_refused_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("server.toml");
    let resolve = |extra: &str| {
        std::fs::write(
            &file,
            format!("[repos.deployer]\nurl = \"file:///srv/d.git\"\n{extra}"),
        )
        .unwrap();
        let t = T::try_parse_from(["x", "--config", file.to_str().unwrap()]).unwrap();
        Settings::resolve(&t.a, None, None, tmp.path())
    };
    let watcher = |repo: &str, markers: &str| {
        format!(
            "[watchers.dev]\nrepo = \"{repo}\"\nenvironment = \"development\"\nmarkers = \"{markers}\"\npayloads = \"/srv/payloads\"\n"
        )
    };
    let s = resolve(&watcher("deployer", "s3://releases/deploys")).unwrap();
    assert_eq!(s.watchers["dev"].poll_seconds, 300, "the monitor's default");
    assert_eq!(s.watchers["dev"].git_ref, "HEAD");
    let e = resolve(&watcher("nope", "/srv/m")).unwrap_err().to_string();
    assert!(
        e.contains("[watchers.dev]: repo `nope` is not in [repos]"),
        "{e}"
    );
    let e = resolve(&watcher("deployer", "s3:///x"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("[watchers.dev]: markers:"), "{e}");
    let e = resolve("[environments.prod]\nrepo = \"nope\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("[environments.prod]: repo `nope`"), "{e}");
    let s = resolve("[environments.prod]\nrepo = \"deployer\"\napproval = true\n").unwrap();
    assert!(s.environments["prod"].approval);
    assert_eq!(s.environments["prod"].approval_timeout_hours, 24);
    // A mistake names its line.
    let e = resolve("[environments.prod]\nrepo = \"deployer\"\napprovel = true\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains(":5:1: unknown field `approvel`"), "{e}");
}

/// The settings of a configuration file holding `text`, in `dir`.
fn resolve_text(dir: &std::path::Path, text: &str) -> Result<Settings, String> {
    let file = dir.join("server.toml");
    std::fs::write(&file, text).unwrap();
    let t = T::try_parse_from(["x", "--config", file.to_str().unwrap()]).unwrap();
    Settings::resolve(&t.a, None, None, dir).map_err(|e| e.to_string())
}

#[test]
fn named_pipelines_and_the_triggers_that_name_them_are_checked_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let resolve = |text: &str| resolve_text(tmp.path(), text);
    let shop = "[repos.shop]\nurl = \"/srv/shop.git\"\n[repos.shop.pipelines.build]\nfile = \"ci/build.yml\"\n[repos.shop.pipelines.docs]\nfile = \"ci/docs.yml\"\n";
    assert!(resolve(shop).is_ok());
    let e = resolve(&format!(
        "{shop}[repos.blog]\nurl = \"/srv/blog.git\"\n[repos.blog.pipelines.docs]\nfile = \"docs.yml\"\n"
    ))
    .unwrap_err();
    assert!(
        e.contains("pipeline `docs` is named in [repos.blog] and [repos.shop]"),
        "{e}"
    );
    let e = resolve(
        "[repos.a]\nurl = \"/a\"\npipeline = \"x.yml\"\n[repos.a.pipelines.b]\nfile = \"b.yml\"\n",
    )
    .unwrap_err();
    assert!(e.contains("not both"), "{e}");
    let e = resolve("[repos.a]\nurl = \"/a\"\n[repos.a.pipelines.b]\nfile = \"../b.yml\"\n")
        .unwrap_err();
    assert!(e.contains("inside the repository"), "{e}");
    // A schedule must name one of the pipelines, and a real one.
    let e = resolve(&format!(
        "{shop}[schedules.nightly]\nrepo = \"shop\"\ncron = \"@daily\"\n"
    ))
    .unwrap_err();
    assert!(
        e.contains("[schedules.nightly]") && e.contains("name one"),
        "{e}"
    );
    let e = resolve(&format!(
        "{shop}[schedules.nightly]\nrepo = \"shop\"\npipeline = \"deploy\"\ncron = \"@daily\"\n"
    ))
    .unwrap_err();
    assert!(
        e.contains("no pipeline `deploy` (it has: build, docs)"),
        "{e}"
    );
    assert!(
        resolve(&format!(
            "{shop}[schedules.nightly]\nrepo = \"shop\"\npipeline = \"build\"\ncron = \"@daily\"\n"
        ))
        .is_ok()
    );
    let e = resolve(&format!(
        "{shop}[environments.prod]\nrepo = \"shop\"\npipeline = \"nope\"\n"
    ))
    .unwrap_err();
    assert!(
        e.contains("[environments.prod]") && e.contains("no pipeline `nope`"),
        "{e}"
    );
}

#[test]
fn pipelines_that_run_after_each_other_in_a_loop_are_refused_naming_them() {
    let tmp = tempfile::tempdir().unwrap();
    let resolve = |text: &str| resolve_text(tmp.path(), text);
    let pipelines = |a_after: &str| {
        format!(
            "[repos.r]\nurl = \"/r\"\n[repos.r.pipelines.a]\nfile = \"a.yml\"\n{a_after}\n[repos.r.pipelines.b]\nfile = \"b.yml\"\nafter = {{ pipeline = \"a\" }}\n"
        )
    };
    assert!(resolve(&pipelines("")).is_ok());
    let e = resolve(&pipelines("after = { pipeline = \"b\" }")).unwrap_err();
    assert!(
        e.contains("in a loop") && e.contains("a after b after a"),
        "{e}"
    );
    let e = resolve(&pipelines("after = { pipeline = \"c\" }")).unwrap_err();
    assert!(
        e.contains("[repos.r.pipelines.a] after: no pipeline `c`"),
        "{e}"
    );
    let e = resolve(&pipelines(
        "after = { pipeline = \"b\", status = [\"running\"] }",
    ))
    .unwrap_err();
    assert!(e.contains("status must list how a run ended"), "{e}");
}

#[test]
fn a_trigger_of_an_event_a_pipeline_does_not_take_is_refused_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let resolve = |text: &str| resolve_text(tmp.path(), text);
    let repo =
        "[repos.r]\nurl = \"/r\"\n[repos.r.on]\nevents = [\"push\"]\nbranches = [\"main\"]\n";
    assert!(resolve(repo).is_ok());
    let e = resolve(&format!(
        "{repo}[schedules.s]\nrepo = \"r\"\ncron = \"@daily\"\n"
    ))
    .unwrap_err();
    assert!(
        e.contains("[schedules.s]: pipeline `r`: it runs on push, not on schedule"),
        "{e}"
    );
    let e = resolve("[repos.r]\nurl = \"/r\"\n[repos.r.on]\npaths = [\"src/[\"]\n").unwrap_err();
    assert!(
        e.contains("[repos.r.on] paths: `src/[` is not a glob"),
        "{e}"
    );
    let e =
        resolve("[repos.r]\nurl = \"/r\"\n[repos.r.on]\nevents = [\"telepathy\"]\n").unwrap_err();
    assert!(e.contains("telepathy"), "{e}");
}
