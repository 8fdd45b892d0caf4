//! Boot-phase timestamps on stderr with `CRX_TRACE=1` (`crx-trace: PHASE +MS ms`), for
//! benchmarks: milliseconds since [`init`] (the CLI's start).

use std::sync::OnceLock;
use std::time::Instant;

static START: OnceLock<(Instant, bool)> = OnceLock::new();

/// Records the start time (call first thing in `main`).
pub fn init() {
    START.get_or_init(|| {
        let on = std::env::var_os("CRX_TRACE").is_some_and(|v| v != "0" && !v.is_empty());
        (Instant::now(), on)
    });
}

/// Logs `phase` when tracing is on.
pub fn mark(phase: &str) {
    if let Some((start, true)) = START.get() {
        eprintln!(
            "crx-trace: {phase} +{:.1} ms",
            start.elapsed().as_secs_f64() * 1000.0
        );
    }
}

/// Whether tracing is on.
pub fn enabled() -> bool {
    matches!(START.get(), Some((_, true)))
}

/// Milliseconds since [`init`].
pub fn now_ms() -> f64 {
    START
        .get()
        .map_or(0.0, |(s, _)| s.elapsed().as_secs_f64() * 1000.0)
}

/// Logs `phase` at `ms` after [`init`] (a time measured elsewhere, e.g. by the VMM).
pub fn mark_at(phase: &str, ms: f64) {
    if enabled() {
        eprintln!("crx-trace: {phase} +{ms:.1} ms");
    }
}

/// The guest's boot-timer marks in a crx-vmm log (`crx_proto::console::mark_line`), as
/// (code, milliseconds since the VMM started).
pub fn boot_timer_marks(log: &str) -> Vec<(u8, f64)> {
    log.lines()
        .filter_map(crx_proto::console::parse_mark_line)
        .map(|(code, us)| (code, us as f64 / 1000.0))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn boot_timer_lines_parse() {
        let log = "x\nboot-timer: code=1 t=2500000\nboot-timer: code=2 t=2600500\n";
        assert_eq!(super::boot_timer_marks(log), vec![(1, 2500.0), (2, 2600.5)]);
    }
}
