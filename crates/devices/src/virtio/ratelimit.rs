//! Rate-limited logging for guest-triggerable log lines.
//!
//! A guest can trigger a warning on every queue notification; without a limit it could fill the
//! host's disk. Each call site of [`guest_warn!`](crate::guest_warn) gets its own budget of
//! [`LINES_PER_WINDOW`] lines per [`WINDOW_SECS`] seconds; the number of suppressed lines is
//! reported when the next window opens.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// Lines each call site may log per window.
pub const LINES_PER_WINDOW: u64 = 10;
/// Length of a window, in seconds.
pub const WINDOW_SECS: u64 = 10;

fn now_secs() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_secs()
}

/// The budget of one call site.
#[derive(Debug)]
pub struct LogLimiter {
    window: AtomicU64,
    count: AtomicU64,
    suppressed: AtomicU64,
}

impl Default for LogLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl LogLimiter {
    /// A limiter with a full budget.
    pub const fn new() -> Self {
        Self {
            window: AtomicU64::new(0),
            count: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether one more line may be logged now. Returns the number of lines suppressed in the
    /// previous window when a new one opens, so the caller can say so.
    pub fn allow(&self) -> Option<u64> {
        let window = now_secs() / WINDOW_SECS;
        if self.window.swap(window, Ordering::Relaxed) != window {
            self.count.store(0, Ordering::Relaxed);
        }
        if self.count.fetch_add(1, Ordering::Relaxed) < LINES_PER_WINDOW {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// `log::warn!` with a per-call-site rate limit, for lines a guest can trigger.
#[macro_export]
macro_rules! guest_warn {
    ($($arg:tt)*) => {{
        static LIMITER: $crate::virtio::ratelimit::LogLimiter =
            $crate::virtio::ratelimit::LogLimiter::new();
        if let Some(suppressed) = LIMITER.allow() {
            if suppressed > 0 {
                log::warn!("({} similar guest-triggered messages suppressed)", suppressed);
            }
            log::warn!($($arg)*);
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_lines_per_window() {
        let limiter = LogLimiter::new();
        let allowed = (0..100).filter(|_| limiter.allow().is_some()).count() as u64;
        // A window boundary may fall inside the loop: at most two windows' worth.
        assert!((LINES_PER_WINDOW..=2 * LINES_PER_WINDOW).contains(&allowed));
    }
}
