//! Shared by the benchmarks: `wrk` against a server, its report parsed,
//! and a server started without rate limits.

use std::process::Command;

/// Runs `wrk -t2 -c16 -d10s` on `url` with `token`; parses its `--latency` report: (requests/s, p50 ms, p99 ms).
pub fn wrk(url: &str, token: &str) -> (f64, f64, f64) {
    let out = Command::new("wrk")
        .args(["-t2", "-c16", "-d10s", "--latency", "-H"])
        .arg(format!("Authorization: Bearer {token}"))
        .arg(url)
        .output()
        .unwrap_or_else(|e| panic!("wrk is needed (scripts/setup.sh installs it): {e}"));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let ms = |s: &str| -> f64 {
        let s = s.trim();
        if let Some(v) = s.strip_suffix("us") {
            v.parse::<f64>().unwrap() / 1000.0
        } else if let Some(v) = s.strip_suffix("ms") {
            v.parse().unwrap()
        } else if let Some(v) = s.strip_suffix('s') {
            v.parse::<f64>().unwrap() * 1000.0
        } else {
            panic!("wrk latency `{s}`")
        }
    };
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(str::to_string))
            .unwrap_or_else(|| panic!("no `{prefix}` in wrk's report:\n{text}"))
    };
    let rps: f64 = field("Requests/sec:").trim().parse().unwrap();
    assert!(!text.contains("Non-2xx"), "wrk saw error answers:\n{text}");
    (rps, ms(&field("50%")), ms(&field("99%")))
}

/// Starts `sentinel serve` on `state` with no rate limit (wrk is one
/// token) and `extra` configuration (TOML) written beside it.
pub fn unlimited_server(
    tmp: &std::path::Path,
    state: &std::path::Path,
    extra: &str,
) -> super::server::Server {
    let config = tmp.join("server.toml");
    std::fs::write(
        &config,
        format!("[api.rate_limit]\nper_second = 10000000\nburst = 10000000\n{extra}"),
    )
    .unwrap();
    super::server::Server::start(
        state,
        &[
            "--listen",
            "127.0.0.1:0",
            "--config",
            config.to_str().unwrap(),
        ],
        &[("SENTINEL_LOG", "warn")],
    )
}
