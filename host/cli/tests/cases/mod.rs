//! The container behaviour suite: cases run against the local Docker
//! executor (`tests/docker.rs`) and, from the same code, against the Swarm
//! executor (`tests/swarm.rs`). `common::run` uses the executor the test
//! binary chose; `common::slack` widens timing margins for Swarm's slower
//! starts (seconds, not hundreds of milliseconds) and only for it.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sentinel_api::{FailureKind, RunStatus, StageDoc, StageStatus};
use sentinel_engine::Signals;

use crate::common::{self, Opts, Project, leftovers, pipeline, run};

#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

pub(crate) async fn exit_codes_and_skips() -> Result<(), String> {
    let p = Project::new(&pipeline(
        "  ok: {run: 'echo fine'}\n  bad: {run: 'echo about to fail; exit 3'}\n  after-bad: {after: bad, run: 'echo never'}\n",
    ));
    let r = run(&p, Opts::default()).await;
    ensure!(r.status == RunStatus::Failed, "run {:?}", r.status);
    let bad = p.stage(&r, "bad").await;
    ensure!(
        bad.status == StageStatus::Failed && bad.exit_code == Some(3),
        "bad: {:?} {:?}",
        bad.status,
        bad.exit_code
    );
    ensure!(
        bad.failure == Some(FailureKind::ExitCode) && bad.reason.as_deref() == Some("exit code 3"),
        "bad: {:?}",
        bad.reason
    );
    ensure!(
        p.log(&r, "bad").contains("about to fail"),
        "log of bad: {:?}",
        p.log(&r, "bad")
    );
    let skipped = p.stage(&r, "after-bad").await;
    ensure!(
        skipped.status == StageStatus::Skipped,
        "after-bad: {:?}",
        skipped.status
    );
    ensure!(
        p.stage(&r, "ok").await.exit_code == Some(0),
        "ok has exit code 0"
    );
    Ok(())
}

pub(crate) async fn outputs_env_and_workspace() -> Result<(), String> {
    let p = Project::new(&pipeline(
        r#"  version: {run: 'echo "  2.0.1  "'}
  meta:
    run: |
      echo "commit=abc123" >> "$SENTINEL_OUTPUT"
      echo "note<<EOF" >> "$SENTINEL_OUTPUT"
      printf 'line one\nline two\nEOF\n' >> "$SENTINEL_OUTPUT"
  write: {run: 'echo made-by-write > shared.txt; id -u > uid.txt'}
  read:
    after: [write]
    env:
      V: ${stages.version.output}
      C: ${stages.meta.outputs.commit}
    run: |
      echo "v=$V c=$C"
      echo "shared=$(cat shared.txt) out=$(cat out/version) readme=$(cat README.txt)"
      echo "stage=$SENTINEL_STAGE ws=$SENTINEL_WORKSPACE pwd=$(pwd) uid=$(cat uid.txt)"
"#,
    ));
    let r = run(&p, Opts::default()).await;
    ensure!(
        r.status == RunStatus::Succeeded,
        "run {:?} {:?}",
        r.status,
        r.reason
    );
    ensure!(
        p.stage(&r, "version").await.output.as_deref() == Some("2.0.1"),
        "output is trimmed stdout"
    );
    let meta = p.stage(&r, "meta").await;
    ensure!(
        meta.outputs.get("note").map(String::as_str) == Some("line one\nline two"),
        "named outputs: {:?}",
        meta.outputs
    );
    let out = p.stage(&r, "read").await.output.unwrap_or_default();
    ensure!(out.contains("v=2.0.1 c=abc123"), "env from outputs: {out}");
    ensure!(
        out.contains("shared=made-by-write out=2.0.1 readme=source file"),
        "shared workspace: {out}"
    );
    ensure!(
        out.contains("stage=read ws=/workspace pwd=/workspace"),
        "context: {out}"
    );
    ensure!(
        !out.contains("uid=0"),
        "stages must not run as root by default: {out}"
    );
    // The user's checkout is never written to.
    let names: Vec<String> = std::fs::read_dir(&p.source)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    ensure!(
        !names.iter().any(|n| n == "shared.txt" || n == "out"),
        "the source folder was modified: {names:?}"
    );
    Ok(())
}

pub(crate) async fn secrets_masked_in_env_and_log() -> Result<(), String> {
    let p = Project::new(&format!(
        "version: 1\nbox: {}\nsecrets: [API_KEY]\nenv: {{GREETING: hi}}\ndefaults: {{network: none}}\nstages:\n  use:\n    env: {{KEY: '${{secrets.API_KEY}}'}}\n    run: |\n      echo \"greeting=$GREETING key=$KEY\"\n      echo \"$KEY\" | base64\n      env | grep -c API_KEY || true\n  blind:\n    run: 'echo \"key=[$KEY]\"'\n  job:\n    env: {{KEY: '${{secrets.API_KEY}}'}}\n    steps:\n      - run: echo \"step key=$KEY\"\n      - run: echo \"$KEY\" | base64\n    after_steps:\n      - run: echo \"after key=$KEY\" >&2\n",
        common::IMAGE
    ));
    let secret = "sk-live-0123456789abcdef";
    let opts = Opts {
        secrets: BTreeMap::from([("API_KEY".to_string(), secret.to_string())]),
        ..Default::default()
    };
    let r = run(&p, opts).await;
    ensure!(
        r.status == RunStatus::Succeeded,
        "run {:?} {:?}",
        r.status,
        r.reason
    );
    let log = p.log(&r, "use");
    ensure!(
        log.contains("greeting=hi key=***"),
        "masked in the log: {log}"
    );
    ensure!(
        !log.contains(secret) && !log.contains(&STANDARD.encode(secret)[..30]),
        "secret or its base64 leaked: {log}"
    );
    let doc = p.stage(&r, "use").await;
    ensure!(
        doc.inputs.env.get("KEY").map(String::as_str) == Some("${secrets.API_KEY}"),
        "recorded as a reference: {:?}",
        doc.inputs.env
    );
    ensure!(
        p.log(&r, "blind").contains("key=[]"),
        "a stage that does not name the secret does not get it"
    );
    // A job's steps are masked as a stage is, after-steps included.
    let log = p.log(&r, "job");
    ensure!(
        log.contains("step key=***") && log.contains("after key=***"),
        "masked in every step's log: {log}"
    );
    ensure!(
        !log.contains(secret) && !log.contains(&STANDARD.encode(secret)[..30]),
        "secret or its base64 leaked from a job: {log}"
    );
    let holder = p.file_holding(secret.as_bytes());
    ensure!(holder.is_none(), "{holder:?} holds the secret");
    Ok(())
}

pub(crate) async fn long_line_straddling_docker_split() -> Result<(), String> {
    // A 32-byte secret at offset 16,380 of a 20 KiB line straddles Docker's
    // 16 KiB boundary; its base64 and JSON-escaped forms are printed too.
    let secret = r#"tok"en\with/quotes-0123456789abc"#;
    assert_eq!(secret.len(), 32);
    let p = Project::new(&format!(
        "version: 1\nbox: {}\nsecrets: [TOK]\ndefaults: {{network: none}}\nstages:\n  long:\n    env: {{TOK: '${{secrets.TOK}}'}}\n    run: |\n      pad=$(head -c 16380 /dev/zero | tr '\\0' a)\n      tail=$(head -c 4068 /dev/zero | tr '\\0' b)\n      printf '%s%s%s\\n' \"$pad\" \"$TOK\" \"$tail\"\n      printf '%s%s%s\\n' \"$pad\" \"$(printf '%s' \"$TOK\" | base64)\" \"$tail\"\n      esc=$(printf '%s' \"$TOK\" | sed 's/\\\\/\\\\\\\\/g; s/\"/\\\\\"/g')\n      printf '%s{{\"token\":\"%s\"}}%s\\n' \"$pad\" \"$esc\" \"$tail\"\n",
        common::IMAGE
    ));
    let opts = Opts {
        secrets: BTreeMap::from([("TOK".to_string(), secret.to_string())]),
        ..Default::default()
    };
    let r = run(&p, opts).await;
    ensure!(
        r.status == RunStatus::Succeeded,
        "run {:?} {:?}",
        r.status,
        r.reason
    );
    let log = p.log(&r, "long");
    let lines: Vec<&str> = log.lines().collect();
    ensure!(lines.len() == 3, "expected 3 lines, got {}", lines.len());
    ensure!(
        lines[0].len() == 16380 + 3 + 4068,
        "line 1 is {} bytes",
        lines[0].len()
    );
    ensure!(
        lines[0][16380..].starts_with("***b"),
        "line 1 masked at the boundary"
    );
    let b64 = STANDARD.encode(secret);
    let json = serde_json::to_string(secret).unwrap();
    ensure!(!log.contains(secret), "raw secret leaked");
    ensure!(!log.contains(&b64[..42]), "base64 form leaked");
    ensure!(
        !log.contains(&json[1..json.len() - 1]),
        "JSON-escaped form leaked"
    );
    ensure!(
        lines.iter().all(|l| l.contains("***")),
        "every form was masked"
    );
    Ok(())
}

pub(crate) async fn artifacts_zipped() -> Result<(), String> {
    let p = Project::new(&pipeline(
        "  build: {run: 'mkdir -p \"$SENTINEL_ARTIFACTS/bin\"; echo binary > \"$SENTINEL_ARTIFACTS/bin/app\"; echo report > \"$SENTINEL_ARTIFACTS/report.txt\"'}\n  none: {run: 'true'}\n",
    ));
    let r = run(&p, Opts::default()).await;
    ensure!(
        r.status == RunStatus::Succeeded,
        "run {:?} {:?}",
        r.status,
        r.reason
    );
    ensure!(
        p.stage(&r, "build").await.artifacts.as_deref() == Some("build.zip"),
        "artifact key"
    );
    ensure!(
        p.stage(&r, "none").await.artifacts.is_none(),
        "no zip without artifacts"
    );
    let zip = std::fs::File::open(p.results.join(format!("run/{}/build.zip", r.id)))
        .map_err(|e| e.to_string())?;
    let mut archive = zip::ZipArchive::new(zip).map_err(|e| e.to_string())?;
    let mut app = String::new();
    std::io::Read::read_to_string(
        &mut archive.by_name("bin/app").map_err(|e| e.to_string())?,
        &mut app,
    )
    .map_err(|e| e.to_string())?;
    ensure!(app == "binary\n", "artifact content {app:?}");
    Ok(())
}

pub(crate) async fn job_steps_share_one_container() -> Result<(), String> {
    let p = Project::new(&pipeline(concat!(
        "  build:\n",
        "    steps:\n",
        "      - name: write\n",
        "        run: echo one > /tmp/note; echo wrote\n",
        "      - name: read\n",
        "        run: cat /tmp/note; exit 4\n",
        "      - run: echo never\n",
        "    after_steps:\n",
        "      - name: report\n",
        "        run: echo \"result $SENTINEL_JOB_RESULT\"\n",
        "  fine:\n",
        "    steps:\n",
        "      - run: echo a\n",
        "      - run: echo \"who=$SENTINEL_STAGE\" >> \"$SENTINEL_OUTPUT\"; echo b\n",
        "    after_steps:\n",
        "      - run: echo \"after $SENTINEL_JOB_RESULT\"\n",
    )));
    let r = run(&p, Opts::default()).await;
    let build = p.stage(&r, "build").await;
    ensure!(
        build.kind == sentinel_api::StageKind::Job
            && build.status == StageStatus::Failed
            && build.exit_code == Some(4),
        "build: {:?} {:?} {:?} {:?}",
        build.kind,
        build.status,
        build.exit_code,
        build.reason
    );
    let steps: Vec<(String, StageStatus, bool)> = build
        .steps
        .iter()
        .map(|s| (s.name.clone(), s.status, s.after))
        .collect();
    ensure!(
        steps
            == vec![
                ("write".to_string(), StageStatus::Succeeded, false),
                ("read".to_string(), StageStatus::Failed, false),
                ("step-3".to_string(), StageStatus::Skipped, false),
                ("report".to_string(), StageStatus::Succeeded, true),
            ],
        "steps {steps:?}"
    );
    let log = p.log(&r, "build");
    ensure!(
        log.contains("wrote") && log.contains("one") && !log.contains("never"),
        "a file outside the workspace is seen by the next step: {log}"
    );
    ensure!(log.contains("result failed"), "after-step result: {log}");
    let at = |needle: &str| log.find(needle).unwrap_or(usize::MAX);
    ensure!(
        at("── step write") < at("wrote")
            && at("wrote") < at("── step read")
            && at("── step read") < at("one")
            && at("one") < at("── after-step report"),
        "each step's section in order: {log}"
    );
    let fine = p.stage(&r, "fine").await;
    ensure!(
        fine.status == StageStatus::Succeeded
            && fine.output.as_deref() == Some("a\nb\nafter passed")
            && fine.outputs.get("who").map(String::as_str) == Some("fine"),
        "fine: {:?} {:?} {:?} {:?}",
        fine.status,
        fine.output,
        fine.outputs,
        fine.reason
    );
    ensure!(
        p.log(&r, "fine").contains("after passed"),
        "after-step of a passed job"
    );
    Ok(())
}

pub(crate) async fn a_timed_out_job_still_runs_its_after_steps() -> Result<(), String> {
    let p = Project::new(&pipeline(concat!(
        "  slow:\n",
        "    timeout: 2s\n",
        "    steps:\n",
        "      - run: echo started; sleep 60\n",
        "      - run: echo never\n",
        "    after_steps:\n",
        "      - run: echo \"after $SENTINEL_JOB_RESULT\"\n",
    )));
    let t = Instant::now();
    let r = run(&p, Opts::default()).await;
    ensure!(t.elapsed() < Duration::from_secs(30), "the step was killed");
    let slow = p.stage(&r, "slow").await;
    ensure!(
        slow.status == StageStatus::TimedOut,
        "slow: {:?} {:?}",
        slow.status,
        slow.reason
    );
    let statuses: Vec<StageStatus> = slow.steps.iter().map(|s| s.status).collect();
    ensure!(
        statuses
            == vec![
                StageStatus::Cancelled,
                StageStatus::Skipped,
                StageStatus::Succeeded
            ],
        "steps {statuses:?}"
    );
    let log = p.log(&r, "slow");
    ensure!(
        log.contains("started") && log.contains("after failed") && !log.contains("never"),
        "log {log}"
    );
    Ok(())
}

pub(crate) async fn oom_is_named() -> Result<(), String> {
    let p = Project::new(&pipeline(
        "  hog: {memory: 16m, run: 'dd if=/dev/zero of=/dev/null bs=128M count=1'}\n\
         \x20 child: {memory: 16m, run: 'dd if=/dev/zero of=/dev/null bs=128M count=1 || exit 3'}\n\
         \x20 survivor: {memory: 16m, run: 'dd if=/dev/zero of=/dev/null bs=128M count=1 || true'}\n",
    ));
    let r = run(&p, Opts::default()).await;
    // The last command killed, a child killed and the script failing
    // otherwise: both are OOM kills; a script that recovers succeeds.
    for name in ["hog", "child"] {
        let s = p.stage(&r, name).await;
        ensure!(
            s.status == StageStatus::Failed && s.failure == Some(FailureKind::OomKilled),
            "{name}: {:?} {:?} {:?}",
            s.status,
            s.failure,
            s.reason
        );
    }
    let survivor = p.stage(&r, "survivor").await;
    ensure!(
        survivor.status == StageStatus::Succeeded,
        "survivor: {:?} {:?}",
        survivor.status,
        survivor.reason
    );
    let hog = p.stage(&r, "hog").await;
    ensure!(
        hog.reason
            .as_deref()
            .unwrap_or_default()
            .contains("out of memory (limit 16 MiB)"),
        "reason {:?}",
        hog.reason
    );
    Ok(())
}

pub(crate) async fn timeout_is_named() -> Result<(), String> {
    // The limit counts from the stage's start: on a swarm that includes
    // bringing it its workspace.
    let limit = common::slack(1, 15);
    let p = Project::new(&pipeline(&format!(
        "  slow: {{timeout: {limit}s, run: 'echo starting; sleep 30'}}\n  next: {{after: slow, run: 'true'}}\n",
    )));
    let t = Instant::now();
    let r = run(&p, Opts::default()).await;
    ensure!(
        t.elapsed() < Duration::from_secs(14 + limit),
        "the timeout took {:?}",
        t.elapsed()
    );
    let slow = p.stage(&r, "slow").await;
    ensure!(
        slow.status == StageStatus::TimedOut
            && slow.reason.as_deref() == Some(format!("timed out after {limit}s").as_str()),
        "slow: {:?} {:?}",
        slow.status,
        slow.reason
    );
    ensure!(p.log(&r, "slow").contains("starting"), "log kept");
    ensure!(
        p.stage(&r, "next").await.status == StageStatus::Skipped,
        "next skipped"
    );
    Ok(())
}

pub(crate) async fn cancel_still_runs_always() -> Result<(), String> {
    let p = Project::new(&pipeline(
        "  long: {run: 'echo working; sleep 60'}\n  later: {after: long, run: 'true'}\n  cleanup: {when: always, run: 'echo cleaning up after $SENTINEL_RUN_STATUS'}\n",
    ));
    let signals = Signals::default();
    let cancel = signals.cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(common::slack(2500, 6000))).await;
        cancel.cancel();
    });
    let t = Instant::now();
    let r = run(
        &p,
        Opts {
            signals,
            ..Default::default()
        },
    )
    .await;
    ensure!(
        t.elapsed() < Duration::from_secs(common::slack(20, 40)),
        "cancel took {:?}",
        t.elapsed()
    );
    ensure!(r.status == RunStatus::Cancelled, "run {:?}", r.status);
    ensure!(
        p.stage(&r, "long").await.status == StageStatus::Cancelled,
        "long cancelled"
    );
    ensure!(
        p.stage(&r, "later").await.status == StageStatus::Cancelled,
        "later cancelled"
    );
    let cleanup = p.stage(&r, "cleanup").await;
    ensure!(
        cleanup.status == StageStatus::Succeeded,
        "cleanup {:?} {:?}",
        cleanup.status,
        cleanup.reason
    );
    ensure!(
        p.log(&r, "cleanup").contains("cleaning up after cancelled"),
        "cleanup log {:?}",
        p.log(&r, "cleanup")
    );
    Ok(())
}

pub(crate) async fn service_reached_by_name() -> Result<(), String> {
    let p = Project::new(&format!(
        "version: 1\nbox: {}\nservices:\n  api:\n    command: mkdir -p /www && echo pong > /www/ping && exec httpd -f -p 8080 -h /www\n    ready: wget -qO- http://127.0.0.1:8080/ping\n    ready_timeout: 20s\nstages:\n  call: {{run: 'wget -qO- http://api:8080/ping'}}\n",
        common::IMAGE
    ));
    let r = run(&p, Opts::default()).await;
    ensure!(
        r.status == RunStatus::Succeeded,
        "run {:?} {:?}",
        r.status,
        r.reason
    );
    let call = p.stage(&r, "call").await;
    ensure!(
        call.output.as_deref() == Some("pong"),
        "reply {:?}",
        call.output
    );
    ensure!(
        leftovers(Some(r.id.as_str())).await.is_empty(),
        "service or network left: {:?}",
        leftovers(Some(r.id.as_str())).await
    );
    Ok(())
}

pub(crate) async fn service_never_ready_fails_the_run() -> Result<(), String> {
    let p = Project::new(&format!(
        "version: 1\nbox: {}\nservices:\n  db:\n    command: sleep 60\n    ready: 'false'\n    ready_timeout: 1s\nstages:\n  a: {{run: 'true'}}\n",
        common::IMAGE
    ));
    let r = run(&p, Opts::default()).await;
    ensure!(r.status == RunStatus::Failed, "run {:?}", r.status);
    ensure!(
        r.reason
            .as_deref()
            .unwrap_or_default()
            .contains("service `db` did not become ready within 1s"),
        "reason {:?}",
        r.reason
    );
    ensure!(
        p.stage(&r, "a").await.status == StageStatus::Skipped,
        "a skipped"
    );
    Ok(())
}

pub(crate) async fn sensitive_value_in_no_file() -> Result<(), String> {
    let value = "AKIAQ7SENSITIVE42";
    let p = Project::new(&pipeline(
        "  creds: {sensitive: true, run: 'echo {\"Credentials\":{\"AccessKeyId\":\"AKIA$(echo Q7SENSITIVE42)\"}}'}\n  use:\n    env: {C: '${stages.creds.output}'}\n    run: 'echo \"got $C\"; echo \"$C\" > leaked.txt'\n",
    ));
    let r = run(&p, Opts::default()).await;
    ensure!(
        r.status == RunStatus::Succeeded,
        "run {:?} {:?}",
        r.status,
        r.reason
    );
    ensure!(
        p.log(&r, "use").contains("got ***"),
        "masked in the consumer's log: {}",
        p.log(&r, "use")
    );
    let creds = p.stage(&r, "creds").await;
    ensure!(
        creds.sensitive && creds.output.is_none(),
        "no output in the document"
    );
    let holder = p.file_holding(value.as_bytes());
    ensure!(holder.is_none(), "{holder:?} holds the sensitive value");
    Ok(())
}

pub(crate) async fn missing_image_says_so() -> Result<(), String> {
    let p = Project::new(&pipeline(
        "  a: {image: 'sentinel/not-built:local', run: 'true'}\n",
    ));
    let r = run(&p, Opts::default()).await;
    let a = p.stage(&r, "a").await;
    ensure!(
        a.status == StageStatus::Failed && a.failure == Some(FailureKind::StartError),
        "a: {:?}",
        a.status
    );
    let reason = a.reason.unwrap_or_default();
    ensure!(
        reason.contains("`sentinel/not-built:local` is not present")
            && reason.contains("could not be pulled"),
        "reason {reason}"
    );
    Ok(())
}

pub(crate) async fn log_limit_keeps_head_and_tail() -> Result<(), String> {
    let p = Project::new(&pipeline(
        "  chatty: {log_limit: 8k, run: 'i=0; while [ $i -lt 3000 ]; do echo \"line $i\"; i=$((i+1)); done'}\n",
    ));
    let r = run(&p, Opts::default()).await;
    let log = p.log(&r, "chatty");
    ensure!(
        log.starts_with("line 0\n") && log.ends_with("line 2999\n"),
        "head and tail kept"
    );
    ensure!(
        log.contains("bytes cut from the middle of this log"),
        "cut marker"
    );
    ensure!(log.len() < 9 * 1024, "log is {} bytes", log.len());
    let doc = p.stage(&r, "chatty").await;
    ensure!(
        doc.log_cut_bytes > 0 && doc.log_bytes > 20_000,
        "counts {} {}",
        doc.log_bytes,
        doc.log_cut_bytes
    );
    Ok(())
}

pub(crate) async fn hardened_container() -> Result<(), String> {
    let p = Project::new(&pipeline(
        "  look: {pids: 64, run: 'cat /proc/self/status | grep -E \"^(CapEff|NoNewPrivs)\"; id -u; cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max'}\n",
    ));
    let r = run(&p, Opts::default()).await;
    let out = p.stage(&r, "look").await.output.unwrap_or_default();
    ensure!(
        out.contains("CapEff:\t0000000000000000"),
        "capabilities dropped: {out}"
    );
    ensure!(out.contains("NoNewPrivs:\t1"), "no-new-privileges: {out}");
    ensure!(out.lines().any(|l| l.trim() == "64"), "pids limit: {out}");
    ensure!(
        out.lines().any(|l| l.trim() == "1000"),
        "unprivileged user: {out}"
    );
    Ok(())
}

pub(crate) async fn a_committed_job_image_holds_none_of_the_runs_values() -> Result<(), String> {
    let tag = format!("sentinel-test/committed:{}", std::process::id());
    let p = Project::new(&format!(
        "version: 1\nbox: {}\nsecrets: [API_KEY]\ndefaults: {{network: none, timeout: 60s}}\nstages:\n  image:\n    env: {{PLAIN: plain-value-4711, KEY: '${{secrets.API_KEY}}'}}\n    commit: {tag}\n    user: '0:0'\n    steps:\n      - run: echo \"made by the job\" > /made-by-job; echo \"$PLAIN\"\n      - run: cat /made-by-job\n  use:\n    env: {{IMAGE: '${{stages.image.outputs.image}}'}}\n    run: echo \"committed $IMAGE\"\n",
        common::IMAGE
    ));
    let secret = "sk-commit-0123456789abcdef";
    let opts = Opts {
        secrets: BTreeMap::from([("API_KEY".to_string(), secret.to_string())]),
        ..Default::default()
    };
    let r = run(&p, opts).await;
    let inspect = std::process::Command::new("docker")
        .args(["image", "inspect", &tag])
        .output()
        .map_err(|e| e.to_string())?;
    let shown = String::from_utf8_lossy(&inspect.stdout).into_owned();
    let made = std::process::Command::new("docker")
        .args([
            "run",
            "--rm",
            "--network",
            "none",
            &tag,
            "cat",
            "/made-by-job",
        ])
        .output()
        .map_err(|e| e.to_string())?;
    let _ = std::process::Command::new("docker")
        .args(["image", "rm", "-f", &tag])
        .output();
    ensure!(
        r.status == RunStatus::Succeeded,
        "run {:?} {:?}",
        r.status,
        r.reason
    );
    ensure!(
        p.log(&r, "use").contains(&format!("committed {tag}")),
        "the image is the stage's output: {}",
        p.log(&r, "use")
    );
    ensure!(inspect.status.success(), "the image exists: {shown}");
    let image: serde_json::Value =
        serde_json::from_str(&shown).map_err(|e| format!("{e}: {shown}"))?;
    let config = &image[0]["Config"];
    let text = config.to_string();
    ensure!(
        !text.contains("plain-value-4711") && !text.contains(secret) && !text.contains("SENTINEL_"),
        "no value of the run in the image's config: {text}"
    );
    ensure!(
        !text.contains("sentinel-agent") && config["Cmd"] == serde_json::json!(["sh"]),
        "the base image's command, not the job's agent: {text}"
    );
    ensure!(
        config["Labels"]["dev.sentinel.run"] == ""
            && config["Labels"]["dev.sentinel.committed-from"] == format!("{}/image", r.id),
        "Sentinel's labels blanked, the origin named: {text}"
    );
    ensure!(
        String::from_utf8_lossy(&made.stdout).contains("made by the job"),
        "the container's files are in the image: {:?}",
        made
    );
    Ok(())
}

pub(crate) async fn idle_and_step_timeouts_are_named() -> Result<(), String> {
    let p = Project::new(&pipeline(concat!(
        "  quiet:\n",
        "    idle_timeout: 1s\n",
        "    run: echo start; sleep 30\n",
        "  chatty:\n",
        "    idle_timeout: 2s\n",
        "    run: for i in 1 2 3 4; do echo tick; sleep 1; done\n",
        "  job:\n",
        "    steps:\n",
        "      - name: slow\n",
        "        timeout: 1s\n",
        "        run: echo slow; sleep 30\n",
        "      - name: never\n",
        "        run: echo never\n",
        "    after_steps:\n",
        "      - run: echo \"after $SENTINEL_JOB_RESULT\"\n",
    )));
    let started = Instant::now();
    let r = run(&p, Opts::default()).await;
    ensure!(
        started.elapsed() < Duration::from_secs(25),
        "the limits stopped the sleeps: {:?}",
        started.elapsed()
    );
    let quiet = p.stage(&r, "quiet").await;
    ensure!(
        quiet.status == StageStatus::TimedOut
            && quiet.reason.as_deref() == Some("timed out: no output for 1s (idle_timeout)"),
        "quiet: {:?} {:?}",
        quiet.status,
        quiet.reason
    );
    ensure!(
        p.log(&r, "quiet").contains("start"),
        "what it printed is kept"
    );
    let chatty = p.stage(&r, "chatty").await;
    ensure!(
        chatty.status == StageStatus::Succeeded,
        "output keeps a stage alive: {:?} {:?}",
        chatty.status,
        chatty.reason
    );
    let job = p.stage(&r, "job").await;
    ensure!(
        job.status == StageStatus::TimedOut
            && job.reason.as_deref() == Some("step `slow` timed out after 1s"),
        "job: {:?} {:?}",
        job.status,
        job.reason
    );
    let steps: Vec<(String, StageStatus)> = job
        .steps
        .iter()
        .map(|s| (s.name.clone(), s.status))
        .collect();
    ensure!(
        steps
            == vec![
                ("slow".to_string(), StageStatus::TimedOut),
                ("never".to_string(), StageStatus::Skipped),
                ("after-step-1".to_string(), StageStatus::Succeeded),
            ],
        "steps {steps:?}"
    );
    ensure!(
        p.log(&r, "job").contains("after failed"),
        "the after-steps ran: {}",
        p.log(&r, "job")
    );
    Ok(())
}

pub(crate) async fn a_stage_is_made_ready_while_its_dependencies_run() -> Result<(), String> {
    let p = Project::new(&pipeline(concat!(
        "  slow-a:\n",
        "    run: sleep 3; echo from-a\n",
        "  warmed-b:\n",
        "    after: slow-a\n",
        "    env: {X: '${stages.slow-a.output}'}\n",
        "    run: echo \"b sees $X\"; cat; echo stdin-empty; exit 3\n",
    )));
    let p = std::sync::Arc::new(p);
    let started = Instant::now();
    let handle = {
        let p = p.clone();
        tokio::spawn(async move { run(&p, Opts::default()).await })
    };
    // Its container is up while `slow-a` still sleeps.
    let mut seen = false;
    while !handle.is_finished() && started.elapsed() < Duration::from_secs(30) {
        let out = std::process::Command::new("docker")
            .args(["ps", "--format", "{{.Label \"dev.sentinel.stage\"}}"])
            .output()
            .map_err(|e| e.to_string())?;
        let up = String::from_utf8_lossy(&out.stdout).into_owned();
        if up.lines().any(|l| l == "slow-a") && up.lines().any(|l| l == "warmed-b") {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = handle.await.map_err(|e| e.to_string())?;
    ensure!(seen, "no container of `warmed-b` while `slow-a` ran");
    let b = p.stage(&r, "warmed-b").await;
    ensure!(
        b.status == StageStatus::Failed && b.exit_code == Some(3),
        "b: {:?} {:?} {:?}",
        b.status,
        b.exit_code,
        b.reason
    );
    let log = p.log(&r, "warmed-b");
    ensure!(
        log.contains("b sees from-a\nstdin-empty"),
        "the earlier output reached it, its input was empty: {log}"
    );
    Ok(())
}

/// This process's network namespace holders, with the namespace each holds.
pub(crate) fn holders() -> Result<BTreeMap<String, String>, String> {
    let owner = sentinel_engine::lease::Owner::current().label();
    let out = std::process::Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            "label=dev.sentinel.kind=netns",
            "--filter",
            &format!("label=dev.sentinel.owner={owner}"),
            "--format",
            "{{.ID}}",
        ])
        .output()
        .map_err(|e| e.to_string())?;
    let mut held = BTreeMap::new();
    for id in String::from_utf8_lossy(&out.stdout).lines() {
        let ns = std::process::Command::new("docker")
            .args(["exec", id, "readlink", "/proc/self/ns/net"])
            .output()
            .map_err(|e| e.to_string())?;
        held.insert(
            id.to_string(),
            String::from_utf8_lossy(&ns.stdout).trim().to_string(),
        );
    }
    Ok(held)
}

pub(crate) async fn network_none_stages_join_namespaces_made_ready() -> Result<(), String> {
    let docker = common::docker().await.with_ready_namespaces(2);
    let p = Project::new(&pipeline(concat!(
        "  a: {run: 'readlink /proc/self/ns/net; ls /sys/class/net; sleep 1'}\n",
        "  b: {run: 'readlink /proc/self/ns/net; ls /sys/class/net; sleep 1'}\n",
    )));
    let opts = || Opts {
        docker: Some(docker.clone()),
        jobs: 2,
        ..Opts::default()
    };
    let ns_of = |out: Option<String>| out.unwrap_or_default().lines().next().map(str::to_string);
    // The first run knows no image to make holders from: its stages make
    // their own namespaces; its end makes two ready.
    let first = run(&p, opts()).await;
    docker.settled().await;
    let ready = holders()?;
    ensure!(ready.len() == 2, "two holders made ready: {ready:?}");
    let second = run(&p, opts()).await;
    let (a, b) = (p.stage(&second, "a").await, p.stage(&second, "b").await);
    ensure!(
        a.status == StageStatus::Succeeded && b.status == StageStatus::Succeeded,
        "{:?} {:?}",
        a.reason,
        b.reason
    );
    let (na, nb) = (ns_of(a.output.clone()), ns_of(b.output.clone()));
    let held: Vec<Option<String>> = ready.values().cloned().map(Some).collect();
    ensure!(
        held.contains(&na) && held.contains(&nb) && na != nb,
        "each stage joined a namespace of its own made ready: a {na:?}, b {nb:?}, ready {ready:?}"
    );
    for s in [&a, &b] {
        let out = s.output.clone().unwrap_or_default();
        ensure!(
            out.lines().skip(1).collect::<Vec<_>>() == ["lo"],
            "loopback only: {out}"
        );
    }
    let earlier = [
        ns_of(p.stage(&first, "a").await.output),
        ns_of(p.stage(&first, "b").await.output),
    ];
    ensure!(
        !earlier.contains(&na) && !earlier.contains(&nb),
        "not the namespaces of the first run: {earlier:?}"
    );
    // Spent holders are never lent again: removed, and two new ones made.
    docker.settled().await;
    let now = holders()?;
    ensure!(
        now.len() == 2 && now.keys().all(|k| !ready.contains_key(k)),
        "two new holders after the run: {now:?} (before {ready:?})"
    );
    ensure!(
        docker.release_ready().await == 2 && holders()?.is_empty(),
        "released: {:?}",
        holders()
    );
    Ok(())
}

pub(crate) async fn reused_stages_share_one_warm_container() -> Result<(), String> {
    let p = std::sync::Arc::new(Project::new(&pipeline(concat!(
        "  r-seed:\n",
        "    reuse: true\n",
        "    run: echo seeded > /tmp/shared-note; echo \"out=$SENTINEL_STAGE\" >> \"$SENTINEL_OUTPUT\"; echo err-line >&2\n",
        "  r-one:\n",
        "    after: r-seed\n",
        "    reuse: true\n",
        "    env: {X: '${stages.r-seed.outputs.out}'}\n",
        "    run: cat /tmp/shared-note; echo \"one got $X\"; cat; echo empty-input\n",
        "  r-two:\n",
        "    after: r-seed\n",
        "    reuse: true\n",
        "    run: echo art > \"$SENTINEL_ARTIFACTS/a.txt\"; exit 5\n",
        "  r-slow:\n",
        "    after: r-seed\n",
        "    reuse: true\n",
        "    timeout: 2s\n",
        "    run: sleep 30 & sleep 30; echo never\n",
        "  r-join:\n",
        "    after: [r-one]\n",
        "    reuse: true\n",
        "    run: echo joined; echo \"home=$HOME\"\n",
    ))));
    let handle = {
        let p = p.clone();
        tokio::spawn(async move {
            run(
                &p,
                Opts {
                    jobs: 4,
                    ..Opts::default()
                },
            )
            .await
        })
    };
    // No stage has a container of its own; one shared container runs them.
    let (mut own, mut shared) = (Vec::new(), false);
    while !handle.is_finished() {
        let out = std::process::Command::new("docker")
            .args(["ps", "-a", "--format", "{{.Label \"dev.sentinel.stage\"}}"])
            .output()
            .map_err(|e| e.to_string())?;
        for l in String::from_utf8_lossy(&out.stdout).lines() {
            shared |= l.starts_with("shared-");
            if l.starts_with("r-") && !own.contains(&l.to_string()) {
                own.push(l.to_string());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = handle.await.map_err(|e| e.to_string())?;
    ensure!(
        shared && own.is_empty(),
        "shared: {shared}, containers of their own: {own:?}"
    );
    let st = |n: &'static str| {
        let p = p.clone();
        let r = r.clone();
        async move { p.stage(&r, n).await }
    };
    let seed = st("r-seed").await;
    ensure!(
        seed.status == StageStatus::Succeeded
            && seed.outputs.get("out").map(String::as_str) == Some("r-seed"),
        "seed: {:?} {:?} {:?}",
        seed.status,
        seed.outputs,
        seed.reason
    );
    ensure!(p.log(&r, "r-seed").contains("err-line"), "stderr is logged");
    let one = p.log(&r, "r-one");
    ensure!(
        one.contains("seeded") && one.contains("one got r-seed") && one.contains("empty-input"),
        "a file outside the workspace is shared, outputs arrive, input is empty: {one}"
    );
    let two = st("r-two").await;
    ensure!(
        two.status == StageStatus::Failed && two.exit_code == Some(5) && two.artifacts.is_some(),
        "two: {:?} {:?} {:?}",
        two.status,
        two.exit_code,
        two.artifacts
    );
    let slow = st("r-slow").await;
    ensure!(
        slow.status == StageStatus::TimedOut && !p.log(&r, "r-slow").contains("never"),
        "slow: {:?} {:?}",
        slow.status,
        slow.reason
    );
    ensure!(
        st("r-join").await.status == StageStatus::Succeeded
            && p.log(&r, "r-join").contains("joined\nhome=/tmp"),
        "join"
    );
    Ok(())
}

/// A project's cache in its state folder, with `budget` bytes.
pub(crate) fn cache_of(p: &Project, budget: u64) -> sentinel_engine::cache::CacheAccess {
    use sentinel_engine::cache::{Cache, CacheAccess, CacheDir, CachePolicy};
    CacheAccess {
        cache: std::sync::Arc::new(Cache::new(
            std::sync::Arc::new(CacheDir::new(p.state.join("caches"))),
            CachePolicy {
                budget,
                ..CachePolicy::default()
            },
        )),
        project: "cache-test".into(),
        default_branch: "main".into(),
        write: true,
    }
}

pub(crate) async fn the_cache_carries_files_between_runs() -> Result<(), String> {
    let p = Project::new(&pipeline(concat!(
        "  deps:\n",
        "    steps:\n",
        "      - run: cat deps/seen 2>/dev/null || echo none; cat \"$SENTINEL_CACHE_DIR/tool\" 2>/dev/null || echo no-tool\n",
        "      - run: mkdir -p deps; echo \"from-$(cat lock)\" > deps/seen; echo \"tool-$(cat lock)\" > \"$SENTINEL_CACHE_DIR/tool\"\n",
        "    cache:\n",
        "      key: deps-${hash(lock)}\n",
        "      restore_keys: [deps-]\n",
        "      paths: [deps, $SENTINEL_CACHE_DIR]\n",
        "  broken:\n",
        "    run: mkdir -p out2; echo x > out2/y; exit 3\n",
        "    cache: {key: broken, paths: [out2]}\n",
    )));
    std::fs::write(p.source.join("lock"), "v1").map_err(|e| e.to_string())?;
    let opts = || Opts {
        cache: Some(cache_of(&p, 1 << 30)),
        ..Opts::default()
    };
    let cache = |d: &StageDoc| {
        d.cache
            .clone()
            .ok_or_else(|| format!("{} has no cache document", d.name))
    };
    let r1 = run(&p, opts()).await;
    let c1 = cache(&p.stage(&r1, "deps").await)?;
    ensure!(
        c1.result == sentinel_api::CacheResult::Miss && c1.saved_bytes.is_some_and(|n| n > 0),
        "first run: {c1:?}"
    );
    ensure!(
        p.log(&r1, "deps").contains("none\nno-tool"),
        "{}",
        p.log(&r1, "deps")
    );
    // A failed stage saves nothing.
    let b = cache(&p.stage(&r1, "broken").await)?;
    ensure!(
        b.saved_bytes.is_none()
            && b.note
                .as_deref()
                .is_some_and(|n| n.contains("did not succeed")),
        "broken: {b:?}"
    );

    // The same lock file: an exact hit, restored in the workspace and the
    // stage's cache folder, and not saved again.
    let r2 = run(&p, opts()).await;
    let c2 = cache(&p.stage(&r2, "deps").await)?;
    ensure!(
        c2.result == sentinel_api::CacheResult::Hit && c2.key == c1.key && c2.saved_bytes.is_none(),
        "second run: {c2:?}"
    );
    let log = p.log(&r2, "deps");
    ensure!(
        log.contains("from-v1") && log.contains("tool-v1") && log.contains("── cache: hit"),
        "{log}"
    );
    // A changed lock file: a prefix hit through `restore_keys`, and a new entry.
    std::fs::write(p.source.join("lock"), "v2").map_err(|e| e.to_string())?;
    let r3 = run(&p, opts()).await;
    let d3 = p.stage(&r3, "deps").await;
    let c3 = cache(&d3)?;
    ensure!(
        d3.status == StageStatus::Succeeded
            && c3.result == sentinel_api::CacheResult::Partial
            && c3.restored_key.as_deref() == Some(c1.key.as_str())
            && c3.key != c1.key
            && c3.saved_bytes.is_some(),
        "third run: {c3:?} {:?}",
        d3.reason
    );
    ensure!(
        p.log(&r3, "deps").contains("from-v1"),
        "{}",
        p.log(&r3, "deps")
    );
    let entries = cache_of(&p, 1 << 30)
        .cache
        .entries("cache-test")
        .await
        .map_err(|e| e.to_string())?;
    let keys: Vec<&str> = entries.iter().map(|e| e.key.as_str()).collect();
    ensure!(
        keys == [c3.key.as_str(), c1.key.as_str()],
        "entries {keys:?}"
    );
    // A budget smaller than two entries evicts the least recently used.
    std::fs::write(p.source.join("lock"), "v3").map_err(|e| e.to_string())?;
    let small = entries.iter().map(|e| e.size).max().unwrap_or(0) * 2;
    let r4 = run(
        &p,
        Opts {
            cache: Some(cache_of(&p, small)),
            ..Opts::default()
        },
    )
    .await;
    let c4 = cache(&p.stage(&r4, "deps").await)?;
    let left: Vec<String> = cache_of(&p, small)
        .cache
        .entries("cache-test")
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|e| e.key)
        .collect();
    ensure!(
        left == [c4.key.clone(), c3.key.clone()],
        "after eviction {left:?} (v1 was least recently used)"
    );
    Ok(())
}

/// `retry:` on a real engine: a script failing with a listed exit code
/// twice succeeds on its third attempt, each attempt's log and exit code
/// kept; an image that cannot be pulled (the infrastructure) is attempted
/// again; an exit code not listed is not.
pub(crate) async fn retries_keep_each_attempt() -> Result<(), String> {
    let p = Project::new(&pipeline(concat!(
        "  flaky:\n",
        "    run: |\n",
        "      n=$(cat .tries 2>/dev/null || echo 0); n=$((n+1)); echo $n > .tries\n",
        "      echo \"attempt $n\"\n",
        "      echo \"tries=$n\" >> $SENTINEL_OUTPUT\n",
        "      [ $n -ge 3 ] || exit 75\n",
        "    retry: {attempts: 4, on: [75], backoff: 200ms}\n",
        "  unpulled:\n",
        "    image: sentinel/not-built:local\n",
        "    run: 'true'\n",
        "    retry: {attempts: 2, backoff: 0s}\n",
        "  unlisted:\n",
        "    run: 'echo once; exit 4'\n",
        "    retry: {attempts: 3, on: [75, timeout], backoff: 0s}\n",
    )));
    let r = run(&p, Opts::default()).await;
    ensure!(r.status == RunStatus::Failed, "run {:?}", r.status);
    let flaky = p.stage(&r, "flaky").await;
    ensure!(
        flaky.status == StageStatus::Succeeded
            && flaky.outputs.get("tries").map(String::as_str) == Some("3"),
        "flaky: {:?} {:?} {:?}",
        flaky.status,
        flaky.reason,
        flaky.outputs
    );
    let codes: Vec<_> = flaky.attempts.iter().map(|a| a.exit_code).collect();
    ensure!(
        codes == [Some(75), Some(75), Some(0)],
        "flaky's attempts: {:?}",
        flaky.attempts
    );
    for a in &flaky.attempts {
        let key = a
            .log
            .clone()
            .ok_or(format!("attempt {} names no log", a.attempt))?;
        let log = std::fs::read_to_string(p.results.join(format!("run/{}/{key}", r.id)))
            .map_err(|e| format!("attempt {}'s log {key}: {e}", a.attempt))?;
        ensure!(
            log.contains(&format!("attempt {}\n", a.attempt)),
            "attempt {}'s log {key}: {log:?}",
            a.attempt
        );
    }
    ensure!(
        flaky.attempts[1].waited_ms == Some(200) && flaky.attempts[2].waited_ms == Some(400),
        "waits {:?}",
        flaky
            .attempts
            .iter()
            .map(|a| a.waited_ms)
            .collect::<Vec<_>>()
    );
    ensure!(
        flaky.log.as_deref() == Some("flaky.log") && p.log(&r, "flaky").contains("attempt 3"),
        "flaky's own log is the last attempt's: {:?}",
        p.log(&r, "flaky")
    );
    let unpulled = p.stage(&r, "unpulled").await;
    let kinds: Vec<_> = unpulled.attempts.iter().map(|a| a.failure).collect();
    ensure!(
        unpulled.status == StageStatus::Failed
            && kinds == [Some(FailureKind::StartError), Some(FailureKind::StartError)],
        "unpulled: {:?} {:?}",
        unpulled.status,
        unpulled.attempts
    );
    let unlisted = p.stage(&r, "unlisted").await;
    ensure!(
        unlisted.exit_code == Some(4) && unlisted.attempts.is_empty(),
        "unlisted is not attempted again: {:?} {:?}",
        unlisted.exit_code,
        unlisted.attempts
    );
    Ok(())
}

/// The local executor runs every stage on this machine: a placement this
/// machine meets runs, one it does not is refused, saying why.
pub(crate) async fn placement_is_checked_against_this_machine() -> Result<(), String> {
    let arch = std::env::consts::ARCH;
    let p = Project::new(&pipeline(&format!(
        "  here: {{placement: ['node.platform.arch == {arch}'], run: 'true'}}\n  elsewhere: {{placement: ['node.labels.gpu == yes'], run: 'true'}}\n"
    )));
    let r = run(&p, Opts::default()).await;
    let here = p.stage(&r, "here").await;
    ensure!(
        here.status == StageStatus::Succeeded,
        "here: {:?} {:?}",
        here.status,
        here.reason
    );
    let elsewhere = p.stage(&r, "elsewhere").await;
    let reason = elsewhere.reason.unwrap_or_default();
    ensure!(
        elsewhere.status == StageStatus::Failed
            && elsewhere.failure == Some(FailureKind::StartError)
            && reason.contains("this machine does not meet the placement `node.labels.gpu == yes`"),
        "elsewhere: {:?} {reason}",
        elsewhere.status
    );
    Ok(())
}
