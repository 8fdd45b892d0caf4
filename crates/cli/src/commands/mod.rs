//! One module per command; each has `Args` (clap) and `run(root, args) -> exit code`.

pub mod check;
pub mod exec;
pub mod gc;
pub mod images;
pub mod inspect;
pub mod kill;
pub mod load;
pub mod logs;
pub mod monitor;
pub mod ps;
pub mod pull;
pub mod rm;
pub mod rmi;
pub mod run;
pub mod vm;

/// The exit code of crx's own errors (as docker and podman).
pub const CRX_ERROR: u8 = 125;

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
        assert_eq!(parse_signal("2"), Ok(2));
        assert!(parse_signal("NOPE").unwrap_err().contains("unknown signal"));
        assert!(parse_signal("99").is_err());
    }
}
