//! The server's clock for its triggers. Debug builds read it from the file
//! `SENTINEL_TEST_CLOCK` names (an RFC 3339 time) when that is set, so a
//! test can move time on without waiting; release builds always use the
//! system's clock.

use chrono::{DateTime, Utc};

/// Now.
pub fn now() -> DateTime<Utc> {
    #[cfg(debug_assertions)]
    if let Some(t) = test_clock() {
        return t;
    }
    Utc::now()
}

/// True when a test moves the clock (debug builds only).
pub fn is_test_clock() -> bool {
    cfg!(debug_assertions) && std::env::var_os("SENTINEL_TEST_CLOCK").is_some()
}

#[cfg(debug_assertions)]
fn test_clock() -> Option<DateTime<Utc>> {
    let file = std::env::var_os("SENTINEL_TEST_CLOCK")?;
    let text = std::fs::read_to_string(file).ok()?;
    DateTime::parse_from_rfc3339(text.trim())
        .ok()
        .map(|t| t.with_timezone(&Utc))
}
