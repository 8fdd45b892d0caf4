//! The `log` facade's sink for the crx-vmm binary: one line per record on stderr,
//! `crx-vmm: LEVEL: target: message`. Level from `$CRX_VMM_LOG` (`error` by default, so only
//! what the operator must see; `warn` adds the rate-limited guest-triggered warnings).

use std::io::Write;

struct Stderr;

impl log::Log for Stderr {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            // One write per line, so lines of several threads do not interleave; a closed
            // stderr is ignored.
            let line = format!("crx-vmm: {}: {}: {}\n", r.level(), r.target(), r.args());
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    }

    fn flush(&self) {}
}

/// The level `$CRX_VMM_LOG` names (`off`, `error`, `warn`, `info`, `debug`, `trace`), else
/// `error`.
pub fn level_from_env(value: Option<&str>) -> log::LevelFilter {
    value
        .and_then(|v| v.parse().ok())
        .unwrap_or(log::LevelFilter::Error)
}

/// Installs the logger (once; later calls do nothing).
pub fn init() {
    static LOGGER: Stderr = Stderr;
    if log::set_logger(&LOGGER).is_ok() {
        let v = std::env::var("CRX_VMM_LOG").ok();
        log::set_max_level(level_from_env(v.as_deref()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_defaults_to_error() {
        assert_eq!(level_from_env(None), log::LevelFilter::Error);
        assert_eq!(level_from_env(Some("bogus")), log::LevelFilter::Error);
        assert_eq!(level_from_env(Some("warn")), log::LevelFilter::Warn);
        assert_eq!(level_from_env(Some("off")), log::LevelFilter::Off);
    }
}
