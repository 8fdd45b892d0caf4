//! The files a container's name resolution reads, as docker and podman write them: its
//! `/etc/hosts` (localhost, its own name on its addresses, `--add-host` entries),
//! `/etc/resolv.conf` (`--dns` servers, else the host's minus loopback ones, which the
//! container cannot reach) and `/etc/hostname`; written in the instance's home and
//! bind-mounted into the container over the same virtio-fs share as volumes.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One `--add-host` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostEntry {
    pub name: String,
    pub ip: IpAddr,
}

/// What `crx run` says of name resolution (`--dns`, `--add-host`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolution {
    pub dns: Vec<IpAddr>,
    pub hosts: Vec<HostEntry>,
}

/// The container's `/etc/hosts`.
pub fn hosts_text(hostname: &str, own: &[IpAddr], extra: &[HostEntry]) -> String {
    let mut t = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    for ip in own {
        t.push_str(&format!("{ip}\t{hostname}\n"));
    }
    if own.is_empty() {
        t.push_str(&format!("127.0.1.1\t{hostname}\n"));
    }
    for h in extra {
        t.push_str(&format!("{}\t{}\n", h.ip, h.name));
    }
    t
}

/// The container's `/etc/resolv.conf`: `dns` if given, else the host's `host` without its
/// loopback name servers (and its `search`/`options` lines).
pub fn resolv_text(dns: &[IpAddr], host: &str) -> String {
    if !dns.is_empty() {
        return dns.iter().map(|d| format!("nameserver {d}\n")).collect();
    }
    host.lines()
        .filter(|l| {
            let mut w = l.split_whitespace();
            match (w.next(), w.next().and_then(|a| a.parse::<IpAddr>().ok())) {
                (Some("nameserver"), Some(ip)) => !ip.is_loopback(),
                (Some("nameserver"), None) => false,
                (Some("search" | "domain" | "options"), _) => true,
                _ => false,
            }
        })
        .map(|l| format!("{}\n", l.trim()))
        .collect()
}

/// Writes `hosts`, `resolv.conf` and `hostname` in `dir/etc` and returns each file with the
/// container path it is bind-mounted on.
pub fn write(
    dir: &Path,
    hostname: &str,
    own: &[IpAddr],
    r: &Resolution,
) -> std::io::Result<Vec<(PathBuf, &'static str)>> {
    let etc = dir.join("etc");
    crate::paths::create_private_dir_all(&etc)?;
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let files = [
        ("hosts", "/etc/hosts", hosts_text(hostname, own, &r.hosts)),
        (
            "resolv.conf",
            "/etc/resolv.conf",
            resolv_text(&r.dns, &host),
        ),
        ("hostname", "/etc/hostname", format!("{hostname}\n")),
    ];
    let mut out = Vec::new();
    for (name, dest, text) in files {
        let path = etc.join(name);
        std::fs::write(&path, text)?;
        crate::paths::set_mode(&path, 0o644)?;
        out.push((path, dest));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_name_the_container_and_the_added_hosts() {
        let t = hosts_text(
            "web",
            &["10.66.0.5".parse().unwrap()],
            &[HostEntry {
                name: "db".into(),
                ip: "10.0.0.9".parse().unwrap(),
            }],
        );
        assert!(t.starts_with("127.0.0.1\tlocalhost\n"), "{t}");
        assert!(
            t.contains("10.66.0.5\tweb\n") && t.ends_with("10.0.0.9\tdb\n"),
            "{t}"
        );
        assert!(hosts_text("n", &[], &[]).contains("127.0.1.1\tn\n"));
    }

    #[test]
    fn resolv_conf_is_the_given_servers_or_the_hosts_reachable_ones() {
        let dns = ["1.1.1.1".parse().unwrap(), "fd00::53".parse().unwrap()];
        assert_eq!(
            resolv_text(&dns, "x"),
            "nameserver 1.1.1.1\nnameserver fd00::53\n"
        );
        let host = "# c\nnameserver 127.0.0.53\nnameserver 192.168.1.1\nnameserver bad\n\
                    search lan\noptions edns0\nsortlist x\n";
        assert_eq!(
            resolv_text(&[], host),
            "nameserver 192.168.1.1\nsearch lan\noptions edns0\n"
        );
    }

    #[test]
    fn files_are_written_for_their_destinations() {
        let d = tempfile::tempdir().unwrap();
        let files = write(d.path(), "box", &[], &Resolution::default()).unwrap();
        let dests: Vec<&str> = files.iter().map(|f| f.1).collect();
        assert_eq!(dests, ["/etc/hosts", "/etc/resolv.conf", "/etc/hostname"]);
        assert_eq!(std::fs::read_to_string(&files[2].0).unwrap(), "box\n");
    }
}
