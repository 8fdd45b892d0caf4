//! `--network bridge|none`: crx's CNI network (the default) or loopback only.

use crx_runtime::net::run::NetworkMode;

/// Parses one `--network` value.
pub fn parse(s: &str) -> Result<NetworkMode, String> {
    match s {
        "bridge" | "crx" => Ok(NetworkMode::Bridge),
        "none" => Ok(NetworkMode::None),
        "host" => Err(
            "host networking is impossible in a VM (it has a kernel and network \
                       stack of its own): use bridge with -p, or none"
                .into(),
        ),
        _ => Err(format!("unknown network {s:?} (bridge or none)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_none_and_host_refused_with_the_reason() {
        assert_eq!(parse("bridge"), Ok(NetworkMode::Bridge));
        assert_eq!(parse("none"), Ok(NetworkMode::None));
        assert!(parse("host").unwrap_err().contains("VM"));
        assert!(parse("x").unwrap_err().contains("bridge or none"));
    }
}
