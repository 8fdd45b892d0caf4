//! `--add-host NAME:IP`: an entry of the container's `/etc/hosts` (docker's syntax; an IPv6
//! address may be in brackets).

use std::net::IpAddr;

use crx_runtime::net::etc::HostEntry;

/// Parses one `--add-host` value.
pub fn parse(s: &str) -> Result<HostEntry, String> {
    let bad = || format!("{s:?}: expected NAME:IP");
    let (name, ip) = s.split_once(':').ok_or_else(bad)?;
    let ip = ip
        .strip_prefix('[')
        .and_then(|i| i.strip_suffix(']'))
        .unwrap_or(ip);
    let ip: IpAddr = ip.parse().map_err(|_| bad())?;
    let name_ok = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    if !name_ok {
        return Err(format!("{s:?}: {name:?} is not a host name"));
    }
    Ok(HostEntry {
        name: name.to_owned(),
        ip,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_addresses() {
        let h = parse("db:10.0.0.5").unwrap();
        assert_eq!(
            (h.name.as_str(), h.ip.to_string()),
            ("db", "10.0.0.5".into())
        );
        assert_eq!(parse("v6:[fd00::1]").unwrap().ip.to_string(), "fd00::1");
        assert_eq!(parse("v6:fd00::1").unwrap().ip.to_string(), "fd00::1");
        for s in ["db", "db:x", ":10.0.0.1", "a b:10.0.0.1", "a\n:10.0.0.1"] {
            assert!(parse(s).is_err(), "{s}");
        }
    }
}
