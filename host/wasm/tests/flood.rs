//! 1 GiB of stdout is cut at the cap while the process's peak memory barely
//! moves. Alone in its test binary, so nothing else moves the peak.

mod common;

use common::{Spec, component, run, text};
use sentinel_engine::exec::Outcome;

fn vm_hwm_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gigabyte_of_stdout_is_cut_in_constant_memory() {
    let step = component("guests/flood");
    // Warm up (compile) so the measurement sees only the flood.
    let _ = run(&component("guests/exit3"), Spec::default()).await;
    let before = vm_hwm_kib();
    let r = run(
        &step,
        Spec {
            log_limit: 1 << 20,
            timeout: std::time::Duration::from_secs(120),
            ..Default::default()
        },
    )
    .await;
    let grew = vm_hwm_kib().saturating_sub(before);
    assert_eq!(
        r.outcome,
        Outcome::Exited { code: 0 },
        "{}",
        text(&r.stderr)
    );
    assert_eq!(r.stdout.len(), 1 << 20, "stdout kept up to the cap");
    let err = text(&r.stderr);
    assert!(
        err.contains("flood done"),
        "the step went on after the cap: {err}"
    );
    assert!(
        err.contains(&format!(
            "stdout cut at {} bytes; {} bytes dropped",
            1 << 20,
            (1u64 << 30) - (1 << 20)
        )),
        "{err}"
    );
    assert!(grew < 100 * 1024, "peak memory grew by {grew} KiB");
}
