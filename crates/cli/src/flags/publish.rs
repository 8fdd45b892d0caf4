//! `-p [IP:]HOST:CONTAINER[/tcp|udp]`: a container port published on the host (an IPv6
//! address in brackets: `[::1]:8080:80`).

use crx_runtime::net::cni::{PortMapping, Protocol};

/// Parses one `-p` value.
pub fn parse(s: &str) -> Result<PortMapping, String> {
    let bad =
        |why: &str| format!("{s:?}: {why} (expected [IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp])");
    let (ports, protocol) = match s.rsplit_once('/') {
        Some((p, "tcp")) => (p, Protocol::Tcp),
        Some((p, "udp")) => (p, Protocol::Udp),
        Some(_) => return Err(bad("the protocol must be tcp or udp")),
        None => (s, Protocol::Tcp),
    };
    let (rest, container) = ports
        .rsplit_once(':')
        .ok_or_else(|| bad("no container port"))?;
    let (ip, host) = match rest.rsplit_once(':') {
        Some((ip, host)) => (Some(ip), host),
        None => (None, rest),
    };
    let host_ip = match ip {
        None => None,
        Some(ip) => {
            let ip = ip
                .strip_prefix('[')
                .and_then(|i| i.strip_suffix(']'))
                .unwrap_or(ip);
            Some(ip.parse().map_err(|_| bad("bad host address"))?)
        }
    };
    let port = |p: &str| p.parse::<u16>().ok().filter(|&p| p != 0);
    Ok(PortMapping {
        host_port: port(host).ok_or_else(|| bad("bad host port"))?,
        container_port: port(container).ok_or_else(|| bad("bad container port"))?,
        protocol,
        host_ip,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_addresses_and_protocols() {
        let p = parse("8081:80").unwrap();
        assert_eq!((p.host_port, p.container_port, p.host_ip), (8081, 80, None));
        assert_eq!(p.protocol, Protocol::Tcp);
        let p = parse("127.0.0.1:53:5353/udp").unwrap();
        assert_eq!(p.host_ip, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(
            (p.host_port, p.container_port, p.protocol),
            (53, 5353, Protocol::Udp)
        );
        let p = parse("[::1]:8080:80/tcp").unwrap();
        assert_eq!(p.host_ip, Some("::1".parse().unwrap()));
    }

    #[test]
    fn bad_values_say_what_is_expected() {
        for s in [
            "80",
            "0:80",
            "8080:0",
            "x:80",
            "8080:70000",
            "8080:80/sctp",
            "h:1:2",
            ":80",
        ] {
            let e = parse(s).unwrap_err();
            assert!(e.contains("HOST_PORT:CONTAINER_PORT"), "{s}: {e}");
        }
    }
}
