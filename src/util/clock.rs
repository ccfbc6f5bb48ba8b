//! The wall clock, in milliseconds since the Unix epoch, and its RFC 3339
//! text. Protocol code takes the time as an argument; only the glue reads
//! the clock, through here. In debug builds the test-only fault file's
//! `clock_offset_ms` moves it (see [`crate::faults`]); monotonic clocks are
//! never moved.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn wall_ms() -> u64 {
    let real = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis().min(u64::MAX as u128) as u64)
        .unwrap_or(0);
    if !cfg!(debug_assertions) {
        return real;
    }
    crate::faults::offset_clock(real, crate::faults::current().clock_offset_ms)
}

/// [`wall_ms`] as a `SystemTime` (for timestamps shown or compared by the
/// protocol; file times and log lines use the real clock).
pub fn wall_time() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(wall_ms())
}

/// `ms` as RFC 3339 UTC with milliseconds, e.g. `2026-12-01T12:00:00.000Z`.
pub fn rfc3339_ms(ms: u64) -> String {
    rfc3339(UNIX_EPOCH + Duration::from_millis(ms))
}

/// A system time as RFC 3339 UTC with milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_the_epoch_and_a_known_instant() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_000_000_000_123), "2001-09-09T01:46:40.123Z");
        assert!(wall_ms() > 1_000_000_000_000);
    }
}
