//! Hostile and probing guests are contained: deadlines, memory caps, paths
//! outside the workspace, the host's environment, exit codes and traps.

mod common;

use std::time::Duration;

use common::{Spec, assert_ok, component, run, text};
use sentinel_engine::exec::Outcome;
use sentinel_pipeline::WorkspaceAccess;

#[tokio::test]
async fn infinite_loop_is_stopped_at_the_deadline() {
    let step = component("guests/spin");
    let deadline = Duration::from_millis(700);
    let r = run(
        &step,
        Spec {
            timeout: deadline,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(r.outcome, Outcome::Stopped);
    assert!(
        r.took < deadline + Duration::from_millis(500),
        "stopped after {:?}",
        r.took
    );
}

#[tokio::test]
async fn memory_growth_ends_at_the_cap() {
    let step = component("guests/hog");
    let r = run(
        &step,
        Spec {
            memory: 48 << 20,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        r.outcome,
        Outcome::MemoryLimit,
        "stderr: {}",
        text(&r.stderr)
    );
    assert!(
        text(&r.stderr).contains("holding 8 MiB"),
        "it ran until the cap: {}",
        text(&r.stderr)
    );
}

#[tokio::test]
async fn paths_outside_the_workspace_are_refused() {
    let step = component("guests/escape");
    let setup = |ws: &std::path::Path| {
        std::fs::write(ws.join("inside.txt"), "inside").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", ws.join("outside-link")).unwrap();
    };
    let r = run(
        &step,
        Spec {
            workspace: WorkspaceAccess::Write,
            setup: Box::new(setup),
            ..Default::default()
        },
    )
    .await;
    assert_ok(&r);
    let out = text(&r.stdout);
    for line in [
        "dotdot refused",
        "absolute refused",
        "symlink refused",
        "inside ok 6",
        "write ok",
        "private ok",
    ] {
        assert!(
            out.lines().any(|l| l.starts_with(line)),
            "expected `{line}` in:\n{out}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(r.workspace.join("written.txt")).unwrap(),
        "hi"
    );
    assert_eq!(r.outputs.clone().unwrap_or_default(), "probe=1\n");

    // Read-only workspace: writes are refused.
    let r = run(
        &step,
        Spec {
            workspace: WorkspaceAccess::Read,
            setup: Box::new(setup),
            ..Default::default()
        },
    )
    .await;
    assert!(
        text(&r.stdout).contains("write refused"),
        "{}",
        text(&r.stdout)
    );
    assert!(!r.workspace.join("written.txt").exists());

    // No workspace at all.
    let r = run(
        &step,
        Spec {
            workspace: WorkspaceAccess::None,
            setup: Box::new(setup),
            ..Default::default()
        },
    )
    .await;
    assert!(
        text(&r.stdout).contains("inside refused"),
        "{}",
        text(&r.stdout)
    );
}

#[tokio::test]
async fn the_host_environment_is_not_visible() {
    let step = component("guests/envpeek");
    assert!(std::env::var("PATH").is_ok() && std::env::var("CARGO_MANIFEST_DIR").is_ok());
    let env = vec![
        ("SENTINEL_PROBE_ARG".to_string(), "given".to_string()),
        ("SENTINEL_STAGE".to_string(), "probe".to_string()),
    ];
    let r = run(
        &step,
        Spec {
            env,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        text(&r.stdout),
        "SENTINEL_PROBE_ARG=given\nSENTINEL_STAGE=probe\n",
        "exactly what was given"
    );
}

#[tokio::test]
async fn exit_codes_and_traps_are_named() {
    // WASI 0.2's `exit` carries success or failure only: any non-zero code
    // arrives as 1.
    let r = run(&component("guests/exit3"), Spec::default()).await;
    assert_eq!(r.outcome, Outcome::Exited { code: 1 });
    assert!(text(&r.stderr).contains("exiting with 3"));
    let r = run(&component("guests/trap"), Spec::default()).await;
    match &r.outcome {
        Outcome::Trap(m) => assert!(m.contains("unreachable") || m.contains("wasm"), "{m}"),
        other => panic!("expected a trap, got {other:?} ({})", text(&r.stderr)),
    }
    assert!(
        text(&r.stderr).contains("index out of bounds"),
        "the panic message is logged: {}",
        text(&r.stderr)
    );
}

#[tokio::test]
async fn a_changed_component_is_refused() {
    let mut step = component("guests/exit3");
    step.digest = "sha256:0000".into();
    let r = run(&step, Spec::default()).await;
    match r.outcome {
        Outcome::StartFailed(m) => assert!(
            m.contains("changed since the pipeline was validated"),
            "{m}"
        ),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn sockets_are_refused_before_any_address_is_considered() {
    // Something listens on loopback: a connection would succeed if allowed.
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    tcp.set_nonblocking(true).unwrap();
    let port = tcp.local_addr().unwrap().port();
    let udp = std::net::UdpSocket::bind(("127.0.0.1", port)).unwrap();
    udp.set_nonblocking(true).unwrap();
    let step = component("guests/sockets");
    let r = run(
        &step,
        Spec {
            env: vec![("SENTINEL_PROBE_ARG".into(), format!("127.0.0.1:{port}"))],
            ..Default::default()
        },
    )
    .await;
    let out = text(&r.stdout);
    assert_ok(&r);
    for what in ["tcp: refused", "udp: refused", "lookup: refused"] {
        assert!(out.contains(what), "{what}: {out}");
    }
    assert_eq!(
        tcp.accept().map_err(|e| e.kind()).err(),
        Some(std::io::ErrorKind::WouldBlock),
        "nothing connected"
    );
    let mut buf = [0u8; 16];
    assert_eq!(
        udp.recv(&mut buf).map_err(|e| e.kind()).err(),
        Some(std::io::ErrorKind::WouldBlock),
        "nothing arrived"
    );
    assert_eq!(
        sentinel_wasm::socket_checks(),
        0,
        "sockets are off, not merely refused by the address check"
    );
}
