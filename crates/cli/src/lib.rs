//! The `crx` crate's library: the two command lines over `crx-runtime`, each binary a thin
//! `main` over it.
//!
//! - [`commands`]: `crx` (docker-like), one small file per command.
//! - [`flags`]: parsers of `crx run`'s structured flags (`-p`, `--network`, `--add-host`).
//! - [`oci`]: `crx-runc`, the runc-compatible OCI runtime, one small file per command.
//! - [`signals`]: signals forwarded to a container's process, and dying by its signal.
#![forbid(unsafe_code)]

pub mod commands;
pub mod flags;
pub mod oci;
pub mod signals;

/// Parses a signal given as `KILL`, `SIGKILL` or `9`.
pub fn parse_signal(s: &str) -> Result<i32, String> {
    if let Ok(n) = s.parse::<i32>() {
        return nix::sys::signal::Signal::try_from(n)
            .map(|sig| sig as i32)
            .map_err(|_| format!("unknown signal {s:?}"));
    }
    let name = s.to_ascii_uppercase();
    let name = if name.starts_with("SIG") {
        name
    } else {
        format!("SIG{name}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .map(|sig| sig as i32)
        .map_err(|_| format!("unknown signal {s:?} (use a name like TERM or a number like 15)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_or_number() {
        assert_eq!(parse_signal("KILL"), Ok(9));
        assert_eq!(parse_signal("sigterm"), Ok(15));
        assert_eq!(parse_signal("SIGTERM"), Ok(15));
        assert_eq!(parse_signal("2"), Ok(2));
        assert!(parse_signal("NOPE").unwrap_err().contains("unknown signal"));
        assert!(parse_signal("99").is_err());
    }
}
