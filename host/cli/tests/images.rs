//! Image build stages against the real Docker engine and a real registry
//! (Debian's `docker-registry` on loopback with htpasswd basic auth, run by
//! `scripts/registry.sh`): a build with two tags and a build argument,
//! pushed with credentials from the run's secrets, its digest checked
//! against the registry's, chained by digest into a second build that a
//! container stage runs; a wrong password; a private image pulled with and
//! without credentials. The cases run concurrently in one test.

mod common;

use std::collections::BTreeMap;

use common::{Opts, Project, run};
use sentinel_api::{RunDoc, RunStatus, StageStatus};

use common::Case;

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

/// The registry with basic auth `scripts/registry.sh` runs.
const REGISTRY: &str = "127.0.0.1:5001";

/// The registry's password, and a check that it answers.
async fn registry_password() -> String {
    let dir =
        std::env::var("SENTINEL_REGISTRY_DIR").unwrap_or_else(|_| "/tmp/sentinel-registry".into());
    let password = std::fs::read_to_string(format!("{dir}/auth/password")).unwrap_or_else(|e| {
        panic!("no test registry ({dir}/auth/password: {e}); run scripts/registry.sh (the test command's set-up does)")
    });
    let status = reqwest::get(format!("http://{REGISTRY}/v2/"))
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or_else(|e| {
            panic!("the test registry on {REGISTRY} does not answer ({e}); run scripts/registry.sh")
        });
    assert_eq!(
        status, 401,
        "the registry on {REGISTRY} must ask for credentials"
    );
    password.trim().to_string()
}

/// The pipeline lines naming the registry with basic auth and its password's secret.
const REGISTRIES: &str = "secrets: [REGISTRY_PASSWORD]\nregistries:\n  test: {host: \"127.0.0.1:5001\", username: sentinel, password: \"${secrets.REGISTRY_PASSWORD}\"}\n";

/// A name no other test run uses.
fn unique() -> String {
    sentinel_engine::docs::new_run_id()
        .to_string()
        .to_ascii_lowercase()
}

/// Removes the images a run's stages built (they carry its label).
async fn remove_images(run: &RunDoc) {
    let mut ids: Vec<String> = Vec::new();
    // Those it built, and those it pulled privately (marked with a tag).
    for filter in [
        vec![
            "--filter".to_string(),
            format!("label=dev.sentinel.run={}", run.id),
        ],
        vec![format!(
            "sentinel-private/{}",
            run.id.as_str().to_ascii_lowercase()
        )],
    ] {
        let out = std::process::Command::new("docker")
            .args(["images", "-q"])
            .args(&filter)
            .output()
            .expect("docker images");
        ids.extend(
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(str::to_string),
        );
    }
    if !ids.is_empty() {
        let _ = std::process::Command::new("docker")
            .args(["rmi", "-f"])
            .args(&ids)
            .output();
    }
}

/// The registry's digest of `repo:tag`.
async fn registry_digest(repo: &str, tag: &str, password: &str) -> Result<String, String> {
    let r = reqwest::Client::new()
        .get(format!("http://{REGISTRY}/v2/{repo}/manifests/{tag}"))
        .basic_auth("sentinel", Some(password))
        .header(
            "accept",
            "application/vnd.docker.distribution.manifest.v2+json",
        )
        .send()
        .await
        .map_err(|e| e.to_string())?;
    ensure!(
        r.status().is_success(),
        "manifest of {repo}:{tag}: {}",
        r.status()
    );
    r.headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .ok_or_else(|| "no Docker-Content-Digest header".to_string())
}

fn write(p: &Project, path: &str, text: &str) {
    let f = p.source.join(path);
    std::fs::create_dir_all(f.parent().unwrap()).unwrap();
    std::fs::write(f, text).unwrap();
}

async fn build_push_and_chain_by_digest() -> Result<(), String> {
    let password = registry_password().await;
    let id = unique();
    let repo = format!("sentinel-test/app-{id}");
    let p = Project::new(&format!(
        r#"version: 1
box: {image}
secrets: [REGISTRY_PASSWORD, BUILD_TOKEN]
registries:
  test: {{host: "{REGISTRY}", username: sentinel, password: "${{secrets.REGISTRY_PASSWORD}}"}}
stages:
  image:
    build:
      context: app
      args: {{GREETING: hello-{id}}}
      secrets: {{token: "${{secrets.BUILD_TOKEN}}"}}
      labels: {{org.example.test: "yes"}}
      tags: ["{REGISTRY}/{repo}:1.0", "{REGISTRY}/{repo}:latest"]
      push: true
  chained:
    build:
      context: chain
      args: {{BASE: "${{stages.image.outputs.digest}}"}}
      tags: [sentinel-test/chain-{id}:1]
  use:
    image: sentinel-test/chain-{id}:1
    after: [chained]
    run: cat /greeting /hello.txt /chained
  pinned:
    image: "${{stages.image.outputs.digest}}"
    run: cat /greeting /token-sha
"#,
        image = common::IMAGE
    ));
    write(
        &p,
        "app/Dockerfile",
        &format!(
            "FROM {}\nARG GREETING\nRUN echo \"$GREETING\" > /greeting\nCOPY hello.txt /hello.txt\nRUN --mount=type=secret,id=token sha256sum /run/secrets/token | cut -c1-64 > /token-sha\n",
            common::IMAGE
        ),
    );
    write(&p, "app/hello.txt", "hello from the context\n");
    write(&p, "app/.dockerignore", "big\n");
    // A big folder the context leaves out, with a FIFO: never opened.
    write(&p, "app/big/data.bin", &"x".repeat(1 << 20));
    let fifo = p.source.join("app/big/pipe");
    ensure!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .is_ok_and(|s| s.success()),
        "mkfifo"
    );
    write(
        &p,
        "chain/Dockerfile",
        "ARG BASE\nFROM $BASE\nRUN echo chained > /chained\n",
    );
    let token = format!("build-token-{id}");
    let token_sha: String = {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s '{token}' | sha256sum | cut -c1-64"))
            .output()
            .map_err(|e| e.to_string())?;
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let opts = Opts {
        secrets: BTreeMap::from([
            ("REGISTRY_PASSWORD".to_string(), password.clone()),
            ("BUILD_TOKEN".to_string(), token.clone()),
        ]),
        ..Default::default()
    };
    let r = run(&p, opts).await;
    let image = p.stage(&r, "image").await;
    let result = async {
        ensure!(
            r.status == RunStatus::Succeeded,
            "run {:?} {:?}; image: {:?} {}",
            r.status,
            r.reason,
            image.reason,
            p.log(&r, "image")
        );
        // The digest output is the registry's own.
        let digest = image.outputs.get("digest").cloned().unwrap_or_default();
        let theirs = registry_digest(&repo, "1.0", &password).await?;
        ensure!(
            digest == format!("{REGISTRY}/{repo}@{theirs}"),
            "digest output {digest} against the registry's {theirs}"
        );
        // Both tags are on the registry, as the same image.
        ensure!(
            registry_digest(&repo, "latest", &password).await? == theirs,
            "the second tag is another image"
        );
        ensure!(
            image.outputs.get("image").map(String::as_str)
                == Some(&format!("{REGISTRY}/{repo}:1.0")[..]),
            "image output {:?}",
            image.outputs
        );
        // The stage after the chained build ran the image made FROM the digest.
        let log = p.log(&r, "use");
        ensure!(
            log.contains(&format!("hello-{id}"))
                && log.contains("hello from the context")
                && log.contains("chained"),
            "use: {log}"
        );
        // The secret mount reached the build (its hash is in the image) and
        // the value is in no log, document, file, history or configuration.
        ensure!(
            p.log(&r, "pinned").contains(&token_sha),
            "the build saw no secret: {}",
            p.log(&r, "pinned")
        );
        ensure!(
            p.file_holding(token.as_bytes()).is_none(),
            "a file holds the build secret"
        );
        for args in [
            vec![
                "history",
                "--no-trunc",
                &format!("{REGISTRY}/{repo}:1.0")[..],
            ],
            vec!["image", "inspect", &format!("{REGISTRY}/{repo}:1.0")[..]],
        ] {
            let out = std::process::Command::new("docker")
                .args(&args)
                .output()
                .map_err(|e| e.to_string())?;
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            ensure!(
                out.status.success() && !text.contains(&token),
                "docker {args:?} shows the build secret"
            );
        }
        // A container stage ran the image by its digest.
        let pinned = p.stage(&r, "pinned").await;
        ensure!(
            p.log(&r, "pinned").contains(&format!("hello-{id}"))
                && pinned.needs.iter().any(|n| n.as_str() == "image"),
            "pinned: {:?} {}",
            pinned.needs,
            p.log(&r, "pinned")
        );
        // The image carries the run's labels and the pipeline's.
        let out = std::process::Command::new("docker")
            .args([
                "image",
                "inspect",
                "--format",
                "{{json .Config.Labels}}",
                &format!("{REGISTRY}/{repo}:1.0"),
            ])
            .output()
            .map_err(|e| e.to_string())?;
        let labels = String::from_utf8_lossy(&out.stdout).to_string();
        ensure!(
            labels.contains("\"org.example.test\":\"yes\"")
                && labels.contains(&format!("\"dev.sentinel.run\":\"{}\"", r.id)),
            "labels {labels}"
        );
        // The build log streamed into the stage log; the excluded folder was not sent.
        let log = p.log(&r, "image");
        ensure!(
            log.contains("pushed") && log.contains("bytes of context"),
            "image log: {log}"
        );
        ensure!(
            !log.contains(&format!("{} bytes of context", 1 << 20)),
            "the ignored folder was sent: {log}"
        );
        // The password is nowhere: no log, no document, no file.
        let holder = p.file_holding(password.as_bytes());
        ensure!(holder.is_none(), "{holder:?} holds the registry password");
        Ok(())
    }
    .await;
    remove_images(&r).await;
    result
}

async fn a_wrong_password_is_unauthorised() -> Result<(), String> {
    registry_password().await;
    let id = unique();
    let p = Project::new(&format!(
        r#"version: 1
{REGISTRIES}stages:
  image:
    build: {{tags: ["{REGISTRY}/sentinel-test/denied-{id}:1"], push: true}}
"#
    ));
    write(
        &p,
        "Dockerfile",
        &format!("FROM {}\nRUN true\n", common::IMAGE),
    );
    let wrong = format!("not-the-password-{id}");
    let opts = Opts {
        secrets: BTreeMap::from([("REGISTRY_PASSWORD".to_string(), wrong.clone())]),
        ..Default::default()
    };
    let r = run(&p, opts).await;
    let image = p.stage(&r, "image").await;
    let reason = image.reason.clone().unwrap_or_default();
    let result = async {
        ensure!(
            image.status == StageStatus::Failed && reason.contains("unauthorised"),
            "{:?}: {reason}",
            image.status
        );
        let holder = p.file_holding(wrong.as_bytes());
        ensure!(holder.is_none(), "{holder:?} holds the password");
        Ok(())
    }
    .await;
    remove_images(&r).await;
    result
}

async fn a_private_image_is_pulled_with_the_runs_credentials() -> Result<(), String> {
    let password = registry_password().await;
    let id = unique();
    let repo = format!("{REGISTRY}/sentinel-test/private-{id}");
    // Push an image with the engine's own client, then drop the local copy.
    let docker = |args: &[&str]| {
        std::process::Command::new("docker")
            .args(args)
            .output()
            .map(|o| {
                (
                    o.status.success(),
                    String::from_utf8_lossy(&o.stderr).to_string(),
                )
            })
            .map_err(|e| e.to_string())
    };
    let p = Project::new(&format!(
        r#"version: 1
{REGISTRIES}stages:
  image:
    build: {{tags: ["{repo}:1"], push: true}}
"#
    ));
    write(
        &p,
        "Dockerfile",
        &format!("FROM {}\nRUN echo private > /private\n", common::IMAGE),
    );
    let secrets = BTreeMap::from([("REGISTRY_PASSWORD".to_string(), password.clone())]);
    let built = run(
        &p,
        Opts {
            secrets: secrets.clone(),
            ..Default::default()
        },
    )
    .await;
    ensure!(
        built.status == RunStatus::Succeeded,
        "push: {:?}",
        built.reason
    );
    remove_images(&built).await;
    docker(&["rmi", "-f", &format!("{repo}:1")])?;
    // With the run's credentials: pulled and run.
    let with = Project::new(&format!(
        r#"version: 1
{REGISTRIES}stages:
  use: {{image: "{repo}:1", run: cat /private}}
"#
    ));
    let r = run(
        &with,
        Opts {
            secrets,
            ..Default::default()
        },
    )
    .await;
    let pulled = r.status == RunStatus::Succeeded && with.log(&r, "use").contains("private");
    let reason = with.stage(&r, "use").await.reason;
    // Marked private to the run that pulled it, on the engine.
    let marked = std::process::Command::new("docker")
        .args([
            "image",
            "inspect",
            "--format",
            "{{json .RepoTags}}",
            &format!("{repo}:1"),
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    remove_images(&r).await;
    docker(&["rmi", "-f", &format!("{repo}:1")])?;
    ensure!(pulled, "with credentials: {:?} {reason:?}", r.status);
    ensure!(
        marked.contains(&format!(
            "sentinel-private/{}",
            r.id.as_str().to_ascii_lowercase()
        )),
        "not marked private: {marked}"
    );
    // Without: the stage fails saying why.
    let without = Project::new(&format!(
        "version: 1\nstages:\n  use: {{image: \"{repo}:1\", run: cat /private}}\n"
    ));
    let r = run(&without, Opts::default()).await;
    let doc = without.stage(&r, "use").await;
    let reason = doc.reason.unwrap_or_default();
    ensure!(
        doc.status == StageStatus::Failed && reason.contains("unauthorised"),
        "without credentials: {:?} {reason}",
        doc.status
    );
    Ok(())
}

/// A pipeline that pushes to the test registry without naming it.
fn anonymous_push(id: &str) -> String {
    format!(
        "version: 1\nstages:\n  image:\n    build: {{tags: [\"{REGISTRY}/sentinel-test/machine-{id}:1\"], push: true}}\n"
    )
}

async fn the_users_config_file_gives_sentinel_run_its_credentials() -> Result<(), String> {
    let password = registry_password().await;
    let id = unique();
    let p = Project::new(&anonymous_push(&id));
    write(
        &p,
        "Dockerfile",
        &format!("FROM {}\nRUN true\n", common::IMAGE),
    );
    let config = p.source.parent().unwrap().join("config");
    std::fs::create_dir_all(config.join("sentinel")).unwrap();
    std::fs::write(
        config.join("sentinel/config.toml"),
        format!("[registries.test]\nhost = \"{REGISTRY}\"\nusername = \"sentinel\"\npassword_env = \"TEST_REGISTRY_PASSWORD\"\n"),
    )
    .unwrap();
    let sentinel = |with_password: bool| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_sentinel"));
        c.arg("-C")
            .arg(&p.source)
            .args(["run", "--json"])
            .env("XDG_CONFIG_HOME", &config)
            .env_remove("SENTINEL_STATE")
            .env_remove("SENTINEL_RESULTS");
        if with_password {
            c.env("TEST_REGISTRY_PASSWORD", &password);
        } else {
            c.env_remove("TEST_REGISTRY_PASSWORD");
        }
        c.output().map_err(|e| e.to_string())
    };
    let out = sentinel(true)?;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let _ = std::process::Command::new("docker")
        .args([
            "rmi",
            "-f",
            &format!("{REGISTRY}/sentinel-test/machine-{id}:1"),
        ])
        .output();
    ensure!(
        out.status.success() && stdout.contains("\"succeeded\""),
        "run: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(!stdout.contains(&password), "the password is in the output");
    // The variable it names is not set: the run does not start, saying which.
    let out = sentinel(false)?;
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    ensure!(
        !out.status.success() && err.contains("`TEST_REGISTRY_PASSWORD`"),
        "without the variable: {err}"
    );
    Ok(())
}

async fn a_servers_registry_uses_its_stored_secret() -> Result<(), String> {
    use common::server::{Client, Server, bare_repo_once, free_port};
    let password = registry_password().await;
    let id = unique();
    let tmp = tempfile::tempdir().unwrap();
    let repo = bare_repo_once(
        &tmp.path().join("app"),
        &[
            ("sentinel.yml", anonymous_push(&id).as_str()),
            ("Dockerfile", &format!("FROM {}\nRUN true\n", common::IMAGE)),
        ],
    );
    let config = tmp.path().join("server.toml");
    std::fs::write(
        &config,
        format!("[repos.app]\nurl = \"{repo}\"\n\n[registries.test]\nhost = \"{REGISTRY}\"\nusername = \"sentinel\"\npassword_secret = \"REGISTRY_PASSWORD\"\n"),
    )
    .unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let server = Server::start(
        &tmp.path().join("state"),
        &["--config", config.to_str().unwrap(), "--listen", &listen],
        &[(
            "SENTINEL_SECRETS_KEY",
            "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0",
        )],
    );
    let c = Client::new(&server.url, &server.admin);
    c.set_secret("REGISTRY_PASSWORD", &password).await;
    let run = c.trigger("app").await;
    let v = c.wait_final(&run).await;
    let log = c
        .text(&format!("/api/v1/runs/{run}/stages/image/log"))
        .await
        .1;
    let server_log = server.log();
    server.stop();
    let _ = std::process::Command::new("docker")
        .args([
            "rmi",
            "-f",
            &format!("{REGISTRY}/sentinel-test/machine-{id}:1"),
        ])
        .output();
    ensure!(v["run"]["status"] == "succeeded", "{v}\n{log}");
    ensure!(log.contains("pushed"), "{log}");
    ensure!(
        !server_log.contains(&password) && !log.contains(&password),
        "the password leaked"
    );
    Ok(())
}

/// A stage of the endpoint run: `script` must fail with the endpoint's
/// refusal naming `what`; the stage succeeds only then.
fn refusal(name: &str, script: &str, what: &str) -> String {
    format!(
        "  {name}:\n    image: sentinel/docker-cli:local\n    docker: true\n    network: none\n    run: |\n      if out=$({script} 2>&1); then echo \"allowed: $out\"; exit 1; fi\n      echo \"$out\"\n      echo \"$out\" | grep -q \"Sentinel's Docker endpoint for this stage refuses\"\n      echo \"$out\" | grep -qF '{what}'\n"
    )
}

async fn the_docker_endpoint_builds_and_pushes_and_refuses_the_rest() -> Result<(), String> {
    let password = registry_password().await;
    let id = unique();
    let private = format!("{REGISTRY}/sentinel-test/private-ep-{id}:1");
    let secrets = BTreeMap::from([("REGISTRY_PASSWORD".to_string(), password.clone())]);
    let registries = format!(
        "secrets: [REGISTRY_PASSWORD]\nregistries:\n  test: {{host: \"{REGISTRY}\", username: sentinel, password: \"${{secrets.REGISTRY_PASSWORD}}\"}}\n"
    );
    // A private image on the registry, not on this host.
    let p0 = Project::new(&format!(
        "version: 1\n{registries}stages:\n  image:\n    build: {{tags: [\"{private}\"], push: true}}\n"
    ));
    write(
        &p0,
        "Dockerfile",
        &format!("FROM {}\nRUN echo private > /private\n", common::IMAGE),
    );
    let r0 = run(
        &p0,
        Opts {
            secrets: secrets.clone(),
            ..Default::default()
        },
    )
    .await;
    ensure!(
        r0.status == RunStatus::Succeeded,
        "push the private image: {:?}",
        r0.reason
    );
    remove_images(&r0).await;
    let _ = std::process::Command::new("docker")
        .args(["rmi", "-f", &private])
        .output();
    // Run A pulls it with its credentials and builds an image of its own.
    let ex = common::docker().await;
    let other = format!("sentinel-test/other-run-{id}:1");
    let pa = Project::new(&format!(
        "version: 1\n{registries}stages:\n  uses_private: {{image: \"{private}\", run: cat /private}}\n  own:\n    build: {{tags: [\"{other}\"]}}\n"
    ));
    write(
        &pa,
        "Dockerfile",
        &format!("FROM {}\nRUN true\n", common::IMAGE),
    );
    let ra = run(
        &pa,
        Opts {
            secrets: secrets.clone(),
            docker: Some(ex.clone()),
            ..Default::default()
        },
    )
    .await;
    ensure!(ra.status == RunStatus::Succeeded, "run A: {:?}", ra.reason);
    // Run B: a stage drives Docker through its endpoint.
    let pushed = format!("{REGISTRY}/sentinel-test/ep-{id}:1");
    let local = format!("sentinel-test/ep-local-{id}:1");
    let mut stages = format!(
        "  build_push:\n    image: sentinel/docker-cli:local\n    docker: true\n    network: none\n    run: |\n      printf 'FROM {busybox}\\nRUN echo via-endpoint > /made\\n' > Dockerfile\n      docker build -t {pushed} .\n      docker push {pushed}\n      printf 'FROM {busybox}\\nRUN echo not-pushed > /made\\n' > D2\n      docker build -t {local} -f D2 .\n      docker images --format '{{{{.Repository}}}}:{{{{.Tag}}}}'\n",
        busybox = common::IMAGE
    );
    for (name, script, what) in [
        (
            "privileged",
            format!("docker run --rm --privileged {} true", common::IMAGE),
            "containers",
        ),
        (
            "bind_root",
            format!("docker run --rm -v /:/host {} ls /host", common::IMAGE),
            "containers",
        ),
        (
            "exec_other",
            "docker exec sentinel-some-container true".to_string(),
            "containers",
        ),
        (
            "delete_other",
            format!("docker rmi {other}"),
            "removing an image",
        ),
        (
            "volume",
            "docker volume create sentinel-test-vol".to_string(),
            "volumes",
        ),
        ("swarm", "docker swarm init".to_string(), "swarm"),
        (
            "host_network",
            format!(
                "printf 'FROM {}\\n' > D && docker build --network host -f D .",
                common::IMAGE
            ),
            "a build with the network",
        ),
        (
            "tag_over_stage_image",
            format!(
                "printf 'FROM {}\\n' > T && docker build -q -f T -t sentinel-test/own-{id}:1 . && docker tag sentinel-test/own-{id}:1 sentinel/docker-cli:local",
                common::IMAGE
            ),
            "belongs to an image this run does not own",
        ),
        (
            "tag_not_own",
            format!("docker tag {} sentinel-test/mine-{id}:1", common::IMAGE),
            "images may be tagged here",
        ),
        (
            "from_private",
            format!(
                "printf 'FROM {private}\\n' > P && docker build -f P -t sentinel-test/from-private-{id}:1 ."
            ),
            "private image another run pulled",
        ),
    ] {
        stages.push_str(&refusal(name, &script, what));
    }
    let pb = Project::new(&format!("version: 1\n{registries}stages:\n{stages}"));
    // A new executor, as a restarted server or another project's run has:
    // the private mark lives on the engine, not in the process that pulled.
    let rb = run(
        &pb,
        Opts {
            secrets,
            ..Default::default()
        },
    )
    .await;
    let result = async {
        let mut failed = Vec::new();
        for name in [
            "build_push",
            "privileged",
            "bind_root",
            "exec_other",
            "delete_other",
            "volume",
            "swarm",
            "host_network",
            "tag_over_stage_image",
            "tag_not_own",
            "from_private",
        ] {
            let doc = pb.stage(&rb, name).await;
            if doc.status != StageStatus::Succeeded {
                failed.push(format!(
                    "{name}: {:?} {:?}\n{}",
                    doc.status,
                    doc.reason,
                    pb.log(&rb, name)
                ));
            }
        }
        ensure!(failed.is_empty(), "{}", failed.join("\n---\n"));
        // Listing shows this run's images only.
        let log = pb.log(&rb, "build_push");
        ensure!(
            log.contains(&local) && !log.contains(&other),
            "docker images: {log}"
        );
        // The pushed image is on the registry; the unpushed one is gone.
        let (repo, tag) = pushed
            .trim_start_matches(&format!("{REGISTRY}/"))
            .split_once(':')
            .unwrap();
        registry_digest(repo, tag, &password).await?;
        let left = std::process::Command::new("docker")
            .args(["image", "inspect", &local])
            .output()
            .map_err(|e| e.to_string())?;
        ensure!(!left.status.success(), "{local} was left after the run");
        ensure!(
            pb.file_holding(password.as_bytes()).is_none(),
            "the password is in a file"
        );
        Ok(())
    }
    .await;
    remove_images(&ra).await;
    remove_images(&rb).await;
    let _ = std::process::Command::new("docker")
        .args(["rmi", "-f", &private, &pushed])
        .output();
    result
}

async fn commit_turns_a_container_stage_into_an_image_a_later_stage_runs() -> Result<(), String> {
    let id = unique();
    let tag = format!("sentinel-test/committed-stage-{id}:1");
    let job_tag = format!("sentinel-test/committed-job-{id}:1");
    let p = Project::new(&format!(
        "version: 1\nbox: {}\ndefaults: {{network: none, timeout: 60s}}\nstages:\n  image:\n    env: {{PLAIN: plain-value-{id}}}\n    commit: {tag}\n    user: '0:0'\n    run: echo \"made by the stage\" > /made\n  use:\n    image: ${{stages.image.outputs.image}}\n    run: cat /made\n  job:\n    commit: {job_tag}\n    user: '0:0'\n    steps:\n      - run: echo \"made by the job\" > /made-by-job\n  use_job:\n    image: ${{stages.job.outputs.image}}\n    run: cat /made-by-job\n",
        common::IMAGE
    ));
    let r = run(&p, Opts::default()).await;
    let inspect = std::process::Command::new("docker")
        .args(["image", "inspect", "--format", "{{json .Config}}", &tag])
        .output()
        .map_err(|e| e.to_string())?;
    let config = String::from_utf8_lossy(&inspect.stdout).to_string();
    let _ = std::process::Command::new("docker")
        .args(["rmi", "-f", &tag, &job_tag])
        .output();
    ensure!(
        p.log(&r, "use_job").contains("made by the job"),
        "use_job: {}",
        p.log(&r, "use_job")
    );
    ensure!(
        r.status == RunStatus::Succeeded,
        "run {:?} {:?}",
        r.status,
        r.reason
    );
    ensure!(
        p.log(&r, "use").contains("made by the stage"),
        "use: {}",
        p.log(&r, "use")
    );
    ensure!(
        inspect.status.success() && !config.contains(&format!("plain-value-{id}")),
        "the committed image's configuration: {config}"
    );
    Ok(())
}

/// Runs after the other cases (it removes every old unpushed image runs made).
async fn images_prune_removes_unpushed_images_of_ended_runs() -> Result<(), String> {
    let id = unique();
    let local = format!("sentinel-test/prune-local-{id}:1");
    let pushed = format!("{PLAIN_REGISTRY}/sentinel-test/prune-pushed-{id}:1");
    let p = Project::new(&format!(
        "version: 1\nstages:\n  local:\n    build: {{tags: [\"{local}\"]}}\n  pushed:\n    build: {{context: pushed, tags: [\"{pushed}\"], push: true}}\n"
    ));
    write(
        &p,
        "Dockerfile",
        &format!("FROM {}\nRUN echo local-{id} > /x\n", common::IMAGE),
    );
    write(
        &p,
        "pushed/Dockerfile",
        &format!("FROM {}\nRUN echo pushed-{id} > /x\n", common::IMAGE),
    );
    let r = run(&p, Opts::default()).await;
    ensure!(r.status == RunStatus::Succeeded, "run {:?}", r.reason);
    let sentinel = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_sentinel"))
            .arg("-C")
            .arg(&p.source)
            .arg("--state")
            .arg(&p.state)
            .args(args)
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr)
            })
            .map_err(|e| e.to_string())
    };
    let exists = |image: &str| {
        std::process::Command::new("docker")
            .args(["image", "inspect", image])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    // Younger than the age: kept.
    let out = sentinel(&["images", "prune"])?;
    ensure!(exists(&local), "a new image was pruned: {out}");
    let out = sentinel(&["images", "prune", "--older-than", "0s", "--dry-run"])?;
    ensure!(
        out.contains(&format!("would remove {local}")) && !out.contains(&pushed) && exists(&local),
        "dry run: {out}"
    );
    let out = sentinel(&["images", "prune", "--older-than", "0s"])?;
    let result = (|| {
        ensure!(
            out.contains(&format!("removed {local}")) && !exists(&local),
            "prune: {out}"
        );
        ensure!(exists(&pushed), "the pushed image was removed: {out}");
        Ok(())
    })();
    let _ = std::process::Command::new("docker")
        .args(["rmi", "-f", &pushed, &local])
        .output();
    result
}

async fn the_bundling_example_chains_three_images_by_digest() -> Result<(), String> {
    registry_password().await;
    let base = std::process::Command::new("docker")
        .args(["image", "inspect", "sentinel/debian-base:local"])
        .output()
        .map_err(|e| e.to_string())?;
    ensure!(
        base.status.success(),
        "sentinel/debian-base:local is missing: run scripts/debian-base.sh (the test command's set-up does)"
    );
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/bundling");
    let dir = tempfile::tempdir().unwrap();
    let copy = std::process::Command::new("cp")
        .args([
            "-r",
            &format!("{}/.", example.display()),
            &dir.path().display().to_string(),
        ])
        .status()
        .map_err(|e| e.to_string())?;
    ensure!(copy.success(), "copy the example");
    let _ = std::fs::remove_dir_all(dir.path().join(".sentinel"));
    let version = format!("0.4.{}", chrono::Utc::now().timestamp_millis());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sentinel"))
        .arg("-C")
        .arg(dir.path())
        .args([
            "run",
            "--json",
            "-e",
            "PYTHON_VERSION=3.11",
            "-e",
            "PACKAGE=hello-bundling",
            "-e",
        ])
        .arg(format!("VERSION={version}"))
        .env_remove("SENTINEL_STATE")
        .env_remove("SENTINEL_RESULTS")
        .output()
        .map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let run: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("{}")).unwrap_or_default();
    let run_id = run["id"].as_str().unwrap_or_default().to_string();
    let stage = |name: &str| -> serde_json::Value {
        std::fs::read(
            dir.path()
                .join(format!(".sentinel/results/run/{run_id}/{name}.json")),
        )
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
    };
    let log = |name: &str| {
        std::fs::read_to_string(
            dir.path()
                .join(format!(".sentinel/results/run/{run_id}/{name}.log")),
        )
        .unwrap_or_default()
    };
    let result = (|| {
        ensure!(
            out.status.success(),
            "run: {stdout}\n{}\nbase: {}\ncompiler: {}\nrunner: {}",
            String::from_utf8_lossy(&out.stderr),
            log("base"),
            log("compiler"),
            log("runner")
        );
        // Each image FROM the one before, by the digest it was pushed with.
        let (base, compiler) = (stage("base"), stage("compiler"));
        let base_digest = base["outputs"]["digest"].as_str().unwrap_or_default();
        ensure!(base_digest.contains("@sha256:"), "base digest {base}");
        // `FROM ${BASE}` with BASE the digest, resolving to the base's image.
        let short = |id: &str| {
            id.trim_start_matches("sha256:")
                .chars()
                .take(12)
                .collect::<String>()
        };
        let from = |stage_log: &str, arg: &str, digest: &str, id: &str| {
            stage_log.contains(&format!("build argument {arg}={digest}"))
                && stage_log.contains(&format!("FROM ${{{arg}}}\n ---> {}", short(id)))
        };
        ensure!(
            from(
                &log("compiler"),
                "BASE",
                base_digest,
                base["outputs"]["image_id"].as_str().unwrap_or_default()
            ),
            "the compiler was not built FROM the base's digest: {}",
            log("compiler")
        );
        let compiler_digest = compiler["outputs"]["digest"].as_str().unwrap_or_default();
        ensure!(
            from(
                &log("runner"),
                "COMPILER",
                compiler_digest,
                compiler["outputs"]["image_id"].as_str().unwrap_or_default()
            ),
            "the runner was not built FROM the compiler's digest: {}",
            log("runner")
        );
        let smoke = log("smoke");
        ensure!(
            smoke.contains(&version)
                && smoke.contains("hello from hello-bundling")
                && smoke.contains("Python 3.11"),
            "smoke: {smoke}"
        );
        let tags = stage("tags")["output"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        ensure!(
            tags.contains(&version) && tags.contains("latest"),
            "tags: {tags}"
        );
        Ok(())
    })();
    let _ = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("docker images -q --filter label=dev.sentinel.run={run_id} | xargs -r docker rmi -f >/dev/null 2>&1"))
        .status();
    result
}

async fn pull_failures_say_which_and_why() -> Result<(), String> {
    registry_password().await;
    let id = unique();
    let p = Project::new(&format!(
        "version: 1\nstages:\n  missing: {{image: \"{PLAIN_REGISTRY}/sentinel-test/missing-{id}:1\", run: \"true\"}}\n  nohost: {{image: \"registry-{id}.invalid:5000/app:1\", run: \"true\"}}\n"
    ));
    let r = run(&p, Opts::default()).await;
    let missing = p.stage(&r, "missing").await.reason.unwrap_or_default();
    ensure!(
        missing.contains("cannot pull") && missing.contains("missing"),
        "missing: {missing}"
    );
    let nohost = p.stage(&r, "nohost").await.reason.unwrap_or_default();
    ensure!(
        nohost.contains("cannot pull")
            && (nohost.contains("unknown host") || nohost.contains("does not answer")),
        "unknown host: {nohost}"
    );
    Ok(())
}

/// The plain registry of `scripts/registry.sh`.
const PLAIN_REGISTRY: &str = "127.0.0.1:5000";

async fn a_cion_file_builds_pushes_and_releases() -> Result<(), String> {
    registry_password().await;
    let id = unique();
    let docker = |args: &[&str]| {
        std::process::Command::new("docker")
            .args(args)
            .output()
            .map_err(|e| e.to_string())
            .and_then(|o| {
                if o.status.success() {
                    Ok(String::from_utf8_lossy(&o.stdout).to_string())
                } else {
                    Err(String::from_utf8_lossy(&o.stderr).to_string())
                }
            })
    };
    // cion's build and release images: their own commands do the work.
    let images = tempfile::tempdir().unwrap();
    let build_image = format!("sentinel-test/cion-build-{id}:1");
    let release_image = format!("sentinel-test/cion-release-{id}:1");
    let app = format!("{PLAIN_REGISTRY}/sentinel-test/cion-app-{id}:1");
    std::fs::write(
        images.path().join("build.Dockerfile"),
        format!(
            "FROM sentinel/docker-cli:local\nCMD [\"sh\", \"-c\", \"echo \\\"built $VERSION\\\" > $ARTIFACTS_DIR/app.txt && printf 'FROM {busybox}\\\\nCOPY app.txt /app.txt\\\\n' > $BUILD_DIR/Dockerfile && cp $ARTIFACTS_DIR/app.txt $BUILD_DIR/ && docker build -q -t {app} $BUILD_DIR && docker push {app}\"]\n",
            busybox = common::IMAGE
        ),
    )
    .unwrap();
    std::fs::write(
        images.path().join("release.Dockerfile"),
        format!("FROM {}\nCMD [\"sh\", \"-c\", \"echo released: $(cat $ARTIFACTS_DIR/app.txt) to $TARGET\"]\n", common::IMAGE),
    )
    .unwrap();
    for (tag, file) in [
        (&build_image, "build.Dockerfile"),
        (&release_image, "release.Dockerfile"),
    ] {
        docker(&[
            "build",
            "-q",
            "-t",
            tag,
            "-f",
            &images.path().join(file).display().to_string(),
            &images.path().display().to_string(),
        ])?;
    }
    let project = tempfile::tempdir().unwrap();
    std::fs::write(
        project.path().join(".cion.yml"),
        format!("build:\n  - image: {build_image}\n  - env:\n      VERSION: \"1.0\"\nrelease:\n  - image: {release_image}\n  - env:\n      TARGET: staging\n"),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sentinel"))
        .arg("-C")
        .arg(project.path())
        .args(["run", "--json"])
        .env_remove("SENTINEL_STATE")
        .env_remove("SENTINEL_RESULTS")
        .output()
        .map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let result = (|| {
        ensure!(
            out.status.success(),
            "run: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let run: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or("{}"))
            .map_err(|e| e.to_string())?;
        let run_id = run["id"].as_str().unwrap_or_default();
        let stage = |name: &str| -> Result<serde_json::Value, String> {
            let f = project
                .path()
                .join(format!(".sentinel/results/run/{run_id}/{name}.json"));
            serde_json::from_slice(&std::fs::read(&f).map_err(|e| format!("{}: {e}", f.display()))?)
                .map_err(|e| e.to_string())
        };
        // The release read what the build left in ARTIFACTS_DIR; its output is its status.
        let release = stage("release")?;
        ensure!(
            release["output"] == "released: built 1.0 to staging",
            "release: {release}"
        );
        // The build container built and pushed an image through DOCKER_HOST.
        let tags = plain_registry_tags(&format!("sentinel-test/cion-app-{id}"))?;
        ensure!(
            tags.contains(&"1".to_string()),
            "tags on the registry: {tags:?}"
        );
        Ok(())
    })();
    let _ = docker(&["rmi", "-f", &build_image, &release_image, &app]);
    result
}

/// The tags of `repo` on the plain registry.
fn plain_registry_tags(repo: &str) -> Result<Vec<String>, String> {
    {
        let out = std::process::Command::new("curl")
            .args([
                "-sf",
                &format!("http://{PLAIN_REGISTRY}/v2/{repo}/tags/list"),
            ])
            .output()
            .map_err(|e| e.to_string())?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&out.stdout)))?;
        Ok(v["tags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_str().map(str::to_string))
            .collect())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn image_suite() {
    common::docker().await;
    macro_rules! cases {
        ($($case:ident),* $(,)?) => {
            vec![$((stringify!($case), Box::pin($case()) as Case)),*]
        };
    }
    let cases: Vec<(&str, Case)> = cases![
        build_push_and_chain_by_digest,
        a_wrong_password_is_unauthorised,
        a_private_image_is_pulled_with_the_runs_credentials,
        the_users_config_file_gives_sentinel_run_its_credentials,
        a_servers_registry_uses_its_stored_secret,
        the_docker_endpoint_builds_and_pushes_and_refuses_the_rest,
        a_cion_file_builds_pushes_and_releases,
        commit_turns_a_container_stage_into_an_image_a_later_stage_runs,
        the_bundling_example_chains_three_images_by_digest,
        pull_failures_say_which_and_why,
    ];
    let count = cases.len();
    let mut failures = common::run_cases(cases).await;
    // Pruning removes old unpushed images of every run: after the others.
    if let Err(e) = images_prune_removes_unpushed_images_of_ended_runs().await {
        failures.push(format!(
            "images_prune_removes_unpushed_images_of_ended_runs: {e}"
        ));
    } else {
        eprintln!("ok   images_prune_removes_unpushed_images_of_ended_runs");
    }
    assert!(
        failures.is_empty(),
        "{} of {} image cases failed:\n{}",
        failures.len(),
        count,
        failures.join("\n")
    );
}

/// Sentinel's own image (built by the test command with
/// `scripts/server-image.sh`), started with the Docker socket, the state
/// folder at the same path inside and out, and the S3 server: a pipeline
/// triggered through its API runs its container stage and lands in the
/// bucket; its health check answers; it runs as its own user, not root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_image_runs_a_pipeline_through_its_api() {
    use common::server::{Client, bare_repo, free_port};
    common::docker().await;
    let inspect = std::process::Command::new("docker")
        .args(["image", "inspect", "sentinel/server:local"])
        .output()
        .unwrap();
    assert!(
        inspect.status.success(),
        "no sentinel/server:local image: the test command builds it (scripts/server-image.sh)"
    );
    let s3 = sentinel_testkit::s3_server();
    let tmp = tempfile::Builder::new()
        .prefix("sentinel-image-")
        .tempdir()
        .unwrap();
    let root = tmp.path();
    let pipeline = "version: 1\nbox: sentinel/busybox:local\ndefaults: {network: none}\nstages:\n  hello:\n    run: echo \"hello from $(id -u)\"\n";
    let (url, _) = bare_repo(&root.join("repo"), &[("sentinel.yml", pipeline)]);
    let state = root.join("state");
    std::fs::create_dir_all(&state).unwrap();
    // The folders are the image's user's (git refuses a repository of
    // another owner).
    let chown = std::process::Command::new("chown")
        .args(["-R", "10001:10001"])
        .arg(root)
        .status()
        .unwrap();
    assert!(chown.success(), "the test's folders are the image's user's");
    let port = free_port();
    let prefix = format!("image-{}", std::process::id());
    let config = root.join("server.toml");
    std::fs::write(
        &config,
        format!(
            "[repos.app]\nurl = \"{url}\"\n[s3]\nurl = \"s3://{}/{prefix}\"\nendpoint = \"{}\"\nregion = \"{}\"\npath_style = true\n",
            s3["S3_BUCKET"], s3["S3_ENDPOINT"], s3["S3_REGION"]
        ),
    )
    .unwrap();
    let sock_gid = std::fs::metadata("/var/run/docker.sock")
        .map(|m| std::os::unix::fs::MetadataExt::gid(&m))
        .unwrap();
    let name = format!("sentinel-image-test-{}", std::process::id());
    let mount = |p: &std::path::Path, ro: bool| {
        format!("{0}:{0}{1}", p.display(), if ro { ":ro" } else { "" })
    };
    // The server reaches the S3 server and answers on loopback: this test
    // is about the server's own networking, so host networking.
    let started = std::process::Command::new("docker")
        .args(["run", "-d", "--name", &name, "--network", "host"])
        .args(["--group-add", &sock_gid.to_string()])
        .args(["-v", "/var/run/docker.sock:/var/run/docker.sock"])
        .args(["-v", &mount(&state, false)])
        .args(["-v", &mount(&root.join("repo"), true)])
        .args(["-v", &mount(&config, true)])
        .args(["-e", &format!("SENTINEL_STATE={}", state.display())])
        .args(["-e", &format!("SENTINEL_CONFIG={}", config.display())])
        .args([
            "-e",
            &format!("AWS_ACCESS_KEY_ID={}", s3["AWS_ACCESS_KEY_ID"]),
        ])
        .args([
            "-e",
            &format!("AWS_SECRET_ACCESS_KEY={}", s3["AWS_SECRET_ACCESS_KEY"]),
        ])
        .args([
            "sentinel/server:local",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .output()
        .unwrap();
    struct Gone(String);
    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f", &self.0])
                .output();
        }
    }
    let _gone = Gone(name.clone());
    assert!(started.status.success(), "{started:?}");
    let logs = || {
        let out = std::process::Command::new("docker")
            .args(["logs", &name])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let file: serde_json::Value = loop {
        if let Ok(text) = std::fs::read_to_string(state.join("server.json"))
            && let Ok(v) = serde_json::from_str(&text)
        {
            break v;
        }
        assert!(
            std::time::Instant::now() < until,
            "the server did not start: {}",
            logs()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let c = Client::new(
        file["url"].as_str().unwrap(),
        file["token"].as_str().unwrap(),
    );
    let id = c.trigger("app").await;
    let ended = c.wait_final(&id).await;
    assert_eq!(ended["run"]["status"], "succeeded", "{ended}\n{}", logs());
    let (_, log) = c.text(&format!("/api/v1/runs/{id}/stages/hello/log")).await;
    assert!(
        log.contains("hello from 10001"),
        "the stage ran as the server's user: {log}"
    );
    // In the bucket too.
    let bucket = sentinel_s3::S3Sink::with_keys(
        sentinel_s3::S3Config::at(
            &format!("s3://{}/{prefix}", s3["S3_BUCKET"]),
            Some(s3["S3_ENDPOINT"].clone()),
            Some(s3["S3_REGION"].clone()),
            true,
        )
        .unwrap(),
        &s3["AWS_ACCESS_KEY_ID"],
        &s3["AWS_SECRET_ACCESS_KEY"],
    );
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        use sentinel_engine::ResultsSink as _;
        let doc = bucket.get_run(&id.parse().unwrap()).await.unwrap();
        if doc
            .as_ref()
            .is_some_and(|d| d.status == RunStatus::Succeeded)
        {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "run.json never reached the bucket"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let health = std::process::Command::new("docker")
        .args(["exec", &name, "sentinel", "health"])
        .output()
        .unwrap();
    assert!(health.status.success(), "{health:?}");
    let user = std::process::Command::new("docker")
        .args(["exec", &name, "id", "-u"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&user.stdout).trim(), "10001");
}
