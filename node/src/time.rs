//! The node's clock. Wall-clock milliseconds are what the replicated state
//! records (handshakes, expiry, audit); they are read here and nowhere else,
//! so a test or a future clock source changes one function.

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix time in milliseconds (0 if the clock is before 1970).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
