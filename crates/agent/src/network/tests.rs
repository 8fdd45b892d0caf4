//! Against the host kernel, as root: each test in a fresh network namespace of its own thread,
//! with a tap standing in for the guest's NIC.

use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;

use crx_proto::network::{Interface, IpPrefix, NetworkConfig, Route};

use super::netlink::Link;
use super::*;

fn in_fresh_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: unshare takes no pointers; it moves only this thread to a new namespace.
        let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            r,
            0,
            "unshare(CLONE_NEWNET): {} (these tests need root; run the tiers as root)",
            io::Error::last_os_error()
        );
        f()
    })
    .join()
    .unwrap()
}

/// A tap named `name` (gone when the file closes).
fn tap(name: &str) -> std::fs::File {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .unwrap();
    // SAFETY: all zeroes is a valid ifreq.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one ifreq, valid for the call.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), libc::TUNSETIFF, &mut req) };
    assert!(r >= 0, "TUNSETIFF: {}", io::Error::last_os_error());
    f
}

fn prefix(s: &str) -> IpPrefix {
    let (a, l) = s.split_once('/').unwrap();
    IpPrefix {
        addr: a.parse().unwrap(),
        prefix_len: l.parse().unwrap(),
    }
}

fn mac_string(b: [u8; 6]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn find(nl: &mut Netlink, name: &str) -> Link {
    nl.links()
        .unwrap()
        .into_iter()
        .find(|l| l.name == name)
        .unwrap_or_else(|| panic!("no link {name}"))
}

#[test]
fn loopback_comes_up() {
    in_fresh_netns(|| {
        let mut nl = Netlink::open().unwrap();
        assert!(!find(&mut nl, "lo").up);
        loopback_up().unwrap();
        assert!(find(&mut nl, "lo").up);
    });
}

#[test]
fn interface_found_by_mac_renamed_addressed_and_routed() {
    in_fresh_netns(|| {
        let _t = tap("crxt0");
        let mut nl = Netlink::open().unwrap();
        let mac = find(&mut nl, "crxt0").mac.unwrap();
        let cfg = NetworkConfig {
            interfaces: vec![Interface {
                mac: mac_string(mac),
                name: "eth7".into(),
                mtu: Some(1400),
                addresses: vec![prefix("10.9.0.2/24"), prefix("fd00:9::2/64")],
                template_mac: None,
            }],
            routes: vec![
                Route {
                    destination: None,
                    gateway: Some("10.9.0.1".parse().unwrap()),
                    interface: "eth7".into(),
                },
                Route {
                    destination: Some(prefix("192.168.5.0/24")),
                    gateway: None,
                    interface: "eth7".into(),
                },
            ],
        };
        apply(&cfg).unwrap();
        // Applying twice is fine (addresses and routes are replaced).
        apply(&cfg).unwrap();
        let link = find(&mut nl, "eth7");
        assert!(link.up);
        assert_eq!(link.mtu, Some(1400));
        let addrs = nl.addresses(link.index).unwrap();
        for want in &cfg.interfaces[0].addresses {
            assert!(addrs.contains(want), "{want:?} not in {addrs:?}");
        }
        let routes = nl.routes(link.index).unwrap();
        let gw: IpAddr = "10.9.0.1".parse().unwrap();
        assert!(routes.contains(&(None, Some(gw))), "{routes:?}");
        assert!(
            routes.contains(&(Some(prefix("192.168.5.0/24")), None)),
            "{routes:?}"
        );
    });
}

#[test]
fn unknown_mac_and_invalid_descriptions_change_nothing() {
    in_fresh_netns(|| {
        let _t = tap("crxt1");
        let iface = |mac: &str, name: &str| Interface {
            mac: mac.into(),
            name: name.into(),
            mtu: None,
            addresses: vec![prefix("10.1.0.2/24")],
            template_mac: None,
        };
        let missing = NetworkConfig {
            interfaces: vec![iface("02:de:ad:be:ef:00", "eth0")],
            routes: Vec::new(),
        };
        assert!(matches!(apply(&missing), Err(NetworkError::NoSuchMac(_))));
        let mut nl = Netlink::open().unwrap();
        let mac = mac_string(find(&mut nl, "crxt1").mac.unwrap());
        let invalid = NetworkConfig {
            interfaces: vec![iface(&mac, "lo")],
            routes: Vec::new(),
        };
        assert!(matches!(apply(&invalid), Err(NetworkError::Invalid(_))));
        let link = find(&mut nl, "crxt1");
        assert!(!link.up);
        assert!(nl.addresses(link.index).unwrap().is_empty());
    });
}

/// A NIC of a VM restored from a template has the template's MAC: found by it, it takes the
/// clone's own; the same description applied again finds it by the new one.
#[test]
fn a_template_nic_takes_the_clones_mac() {
    in_fresh_netns(|| {
        let _t = tap("crxt2");
        let mut nl = Netlink::open().unwrap();
        let template = mac_string(find(&mut nl, "crxt2").mac.unwrap());
        let own = "02:11:22:33:44:55";
        let cfg = NetworkConfig {
            interfaces: vec![Interface {
                mac: own.into(),
                name: "eth0".into(),
                mtu: None,
                addresses: vec![prefix("10.7.0.2/24")],
                template_mac: Some(template),
            }],
            routes: Vec::new(),
        };
        apply(&cfg).unwrap();
        apply(&cfg).unwrap();
        let link = find(&mut nl, "eth0");
        assert_eq!(link.mac.map(mac_string).as_deref(), Some(own));
        assert!(link.up);
        assert!(nl
            .addresses(link.index)
            .unwrap()
            .contains(&prefix("10.7.0.2/24")));
    });
}
