//! The network code against real namespaces (as root, no KVM): a "container" namespace with a
//! veth whose peer is in a "bridge" namespace, as CNI's bridge plugin leaves them; frames
//! sent from the bridge side come out of the tap and frames written to the tap reach it.
//! The parsers alone, on fabricated netlink messages.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

use futures_util::TryStreamExt;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use rtnetlink::packet_route::link::{
    InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkLayerType, LinkMessage,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteType,
};
use rtnetlink::packet_route::tc::{TcAttribute, TcMessage};
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};
use serde_json::json;

use super::addr::{self, Link};
use super::*;

/// A network namespace bound on a file (as `ip netns add` or podman make them), unbound and
/// removed when dropped.
struct Ns {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Ns {
    fn new() -> Ns {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ns");
        File::create(&path).unwrap();
        let target = path.clone();
        std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .unwrap();
        })
        .join()
        .unwrap();
        Ns { _dir: dir, path }
    }

    /// Runs `work` inside.
    fn run<T: Send + 'static, Fut: std::future::Future<Output = T>>(
        &self,
        work: impl FnOnce(Handle) -> Fut + Send + 'static,
    ) -> T {
        let f = File::open(&self.path).unwrap();
        run_in(f, &self.path, |h| async move { Ok(work(h).await) }).unwrap()
    }

    /// Removes the namespace as a tool would (unbound, file removed).
    fn remove(&self) {
        let _ = umount2(&self.path, MntFlags::MNT_DETACH);
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        self.remove();
    }
}

async fn index(h: &Handle, name: &str) -> u32 {
    let links: Vec<LinkMessage> = h
        .link()
        .get()
        .match_name(name)
        .execute()
        .try_collect()
        .await
        .unwrap();
    links[0].header.index
}

/// The container side: `eth0` (10.99.0.2/24, fd99::2/64, MTU 1400, default route via
/// 10.99.0.1), its peer `peer0` (10.99.0.1/24) in `bridge`.
fn container_with_veth(bridge: &Ns) -> Ns {
    let c = Ns::new();
    let bridge_fd = File::open(&bridge.path).unwrap();
    c.run(move |h| async move {
        h.link()
            .add(LinkVeth::new("eth0", "peer0").build())
            .execute()
            .await
            .unwrap();
        let peer = index(&h, "peer0").await;
        h.link()
            .set(
                LinkUnspec::new_with_index(peer)
                    .setns_by_fd(bridge_fd.as_raw_fd())
                    .build(),
            )
            .execute()
            .await
            .unwrap();
        let eth0 = index(&h, "eth0").await;
        h.link()
            .set(LinkUnspec::new_with_index(eth0).mtu(1400).up().build())
            .execute()
            .await
            .unwrap();
        for (ip, len) in [("10.99.0.2", 24), ("fd99::2", 64)] {
            h.address()
                .add(eth0, ip.parse().unwrap(), len)
                .execute()
                .await
                .unwrap();
        }
        h.route()
            .add(
                RouteMessageBuilder::<Ipv4Addr>::new()
                    .gateway(Ipv4Addr::new(10, 99, 0, 1))
                    .output_interface(eth0)
                    .build(),
            )
            .execute()
            .await
            .unwrap();
    });
    bridge.run(|h| async move {
        let peer = index(&h, "peer0").await;
        h.link()
            .set(LinkUnspec::new_with_index(peer).mtu(1400).up().build())
            .execute()
            .await
            .unwrap();
        h.address()
            .add(peer, "10.99.0.1".parse().unwrap(), 24)
            .execute()
            .await
            .unwrap();
    });
    c
}

/// `(qdisc kinds on eth0's ingress, filter count on eth0's ingress, tap present)` in `ns`.
fn tc_state(ns: &Ns) -> (usize, usize, bool) {
    ns.run(|h| async move {
        let eth0 = index(&h, "eth0").await;
        let qdiscs: Vec<TcMessage> = h.qdisc().get().execute().try_collect().await.unwrap();
        let ingress = qdiscs
            .iter()
            .filter(|q| {
                q.header.index == eth0 as i32
                    && q.attributes.contains(&TcAttribute::Kind("ingress".into()))
            })
            .count();
        let filters: Vec<TcMessage> = h
            .traffic_filter(eth0 as i32)
            .get()
            .ingress()
            .execute()
            .try_collect()
            .await
            .unwrap_or_default();
        // A filter is listed once per priority and once per handle: count the priorities.
        let mut prios: Vec<u32> = filters.iter().map(|f| f.header.info >> 16).collect();
        prios.dedup();
        let links: Vec<LinkMessage> = h.link().get().execute().try_collect().await.unwrap();
        let tap = links.iter().any(|l| {
            l.attributes
                .contains(&LinkAttribute::IfName(format!("{TAP_PREFIX}0")))
        });
        (ingress, prios.len(), tap)
    })
}

/// A raw packet socket in `ns` that sees every frame of its interfaces.
fn packet_socket(ns: &Ns) -> std::os::fd::OwnedFd {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockProtocol, SockType};
    ns.run(|_| async move {
        socket(
            AddressFamily::Packet,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::EthAll,
        )
        .unwrap()
    })
}

/// Reads one frame from the tap (after its 10-byte virtio-net header), within 10 s.
fn read_frame(tap: &std::os::fd::OwnedFd) -> Vec<u8> {
    let mut fds = [PollFd::new(tap.as_fd(), PollFlags::POLLIN)];
    let n = poll(&mut fds, PollTimeout::from(10_000u16)).unwrap();
    assert_eq!(n, 1, "no frame came out of the tap");
    let mut buf = vec![0u8; 65536];
    let mut f = File::from(tap.try_clone().unwrap());
    let len = f.read(&mut buf).unwrap();
    buf[10..len].to_vec()
}

#[test]
fn a_veth_is_joined_to_a_tap_both_ways_and_left_as_found() {
    let bridge = Ns::new();
    let c = container_with_veth(&bridge);
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join(RECORD);
    assert_eq!(tc_state(&c), (0, 0, false));

    let attached = attach(&c.path, &record).unwrap();
    assert_eq!(attached.nics.len(), 1);
    let nic = &attached.nics[0];
    assert_eq!(nic.mtu, 1400);
    let g = &attached.guest;
    assert_eq!(g.interfaces.len(), 1, "{g:?}");
    let i = &g.interfaces[0];
    assert_eq!(
        (i.name.as_str(), i.mac.as_str()),
        ("eth0", nic.mac.as_str())
    );
    assert_eq!(i.mtu, Some(1400));
    let addrs: Vec<String> = i
        .addresses
        .iter()
        .map(|a| format!("{}/{}", a.addr, a.prefix_len))
        .collect();
    assert!(addrs.contains(&"10.99.0.2/24".to_owned()), "{addrs:?}");
    assert!(addrs.contains(&"fd99::2/64".to_owned()), "{addrs:?}");
    assert_eq!(
        g.routes,
        [crx_proto::network::Route {
            destination: None,
            gateway: Some(IpAddr::from([10, 99, 0, 1])),
            interface: "eth0".into()
        }]
    );
    g.validate().unwrap();
    assert_eq!(tc_state(&c), (1, 1, true));
    let saved: Record = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    assert_eq!(saved.links[0].tap, "crxtap0");
    assert!(saved.links[0].added_qdisc);

    // Bridge side -> tap: a datagram to the container's address starts with an ARP request.
    bridge.run(|_| async move {
        let s = std::net::UdpSocket::bind("10.99.0.1:0").unwrap();
        s.send_to(b"hello", "10.99.0.2:9").unwrap();
    });
    // (IPv6 chatter of the bridge side, e.g. MLD reports, may come first.)
    let mut frames = Vec::new();
    while frames.len() < 20 {
        let f = read_frame(&nic.tap);
        let arp = f.get(12..14) == Some(&[0x08, 0x06][..]);
        frames.push(f);
        if arp {
            break;
        }
    }
    assert_eq!(
        frames.last().unwrap()[12..14],
        [8, 6],
        "no ARP: {frames:02x?}"
    );
    // And the tap has said nothing of its own (no IPv6 link-local address, no MLD or DAD).
    let tap_v6 = c.run(|h| async move {
        let tap = index(&h, "crxtap0").await;
        let addrs: Vec<AddressMessage> = h.address().get().execute().try_collect().await.unwrap();
        addrs.iter().filter(|a| a.header.index == tap).count()
    });
    assert_eq!(tap_v6, 0);
    // Tap -> bridge side: a frame the guest sends leaves through eth0.
    let sock = packet_socket(&bridge);
    let mut frame = vec![0u8; 10];
    frame.extend([0xff; 6]);
    frame.extend(crx_proto::network::parse_mac(&nic.mac).unwrap());
    frame.extend([0x88, 0xb5]);
    frame.extend(b"from the guest");
    frame.extend([0u8; 40]);
    let mut tap = File::from(nic.tap.try_clone().unwrap());
    tap.write_all(&frame).unwrap();
    let mut seen = File::from(sock);
    let got = (0..50).find_map(|_| {
        let mut fds = [PollFd::new(seen.as_fd(), PollFlags::POLLIN)];
        if poll(&mut fds, PollTimeout::from(10_000u16)).unwrap() == 0 {
            return Some(Vec::new());
        }
        let mut buf = vec![0u8; 2048];
        let n = seen.read(&mut buf).unwrap();
        buf.truncate(n);
        (buf.get(12..14) == Some(&[0x88, 0xb5][..])).then_some(buf)
    });
    let got = got.unwrap_or_default();
    assert_eq!(got.get(14..28), Some(&b"from the guest"[..]), "{got:02x?}");

    drop(tap);
    drop(attached);
    detach(&record).unwrap();
    assert!(!record.exists());
    assert_eq!(tc_state(&c), (0, 0, false));
    // The veth keeps what the tool gave it.
    let again = c.run(|h| async move {
        let msgs: Vec<LinkMessage> = h.link().get().execute().try_collect().await.unwrap();
        let links: Vec<Link> = msgs.iter().filter_map(addr::link_of).collect();
        links.len()
    });
    assert_eq!(again, 1);
    detach(&record).unwrap();
}

#[test]
fn an_ingress_qdisc_that_was_there_stays() {
    let bridge = Ns::new();
    let c = container_with_veth(&bridge);
    c.run(|h| async move {
        let eth0 = index(&h, "eth0").await;
        h.qdisc()
            .add(eth0 as i32)
            .ingress()
            .execute()
            .await
            .unwrap();
    });
    assert_eq!(tc_state(&c), (1, 0, false));
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join(RECORD);
    let attached = attach(&c.path, &record).unwrap();
    assert_eq!(tc_state(&c), (1, 1, true));
    drop(attached);
    detach(&record).unwrap();
    assert_eq!(tc_state(&c), (1, 0, false));
}

#[test]
fn a_namespace_already_removed_is_detached_quietly() {
    let bridge = Ns::new();
    let c = container_with_veth(&bridge);
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join(RECORD);
    let attached = attach(&c.path, &record).unwrap();
    drop(attached);
    c.remove();
    detach(&record).unwrap();
    assert!(!record.exists());
    // No record at all: nothing to do.
    detach(&record).unwrap();
}

#[test]
fn a_namespace_with_only_lo_gives_no_nics() {
    let c = Ns::new();
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join(RECORD);
    let attached = attach(&c.path, &record).unwrap();
    assert!(attached.nics.is_empty());
    assert_eq!(attached.guest, NetworkConfig::default());
    detach(&record).unwrap();
}

/// A record whose path names another namespace by the time it is detached (the
/// `/proc/PID/ns/net` of a monitor that died, its pid reused) leaves that namespace alone.
#[test]
fn a_path_that_names_another_namespace_by_then_is_left_alone() {
    let bridge = Ns::new();
    let c = container_with_veth(&bridge);
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join(RECORD);
    drop(attach(&c.path, &record).unwrap());
    let other_bridge = Ns::new();
    let other = container_with_veth(&other_bridge);
    let theirs = dir.path().join("theirs.json");
    drop(attach(&other.path, &theirs).unwrap());
    let joined = tc_state(&other);
    assert_eq!((joined.0, joined.1), (1, 1), "{joined:?}");
    let mut rec: Record = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    assert!(rec.id.is_some());
    rec.netns = other.path.clone();
    std::fs::write(&record, serde_json::to_vec(&rec).unwrap()).unwrap();
    detach(&record).unwrap();
    assert!(!record.exists());
    assert_eq!(tc_state(&other), joined, "the other namespace untouched");
    detach(&theirs).unwrap();
    assert_eq!(tc_state(&other), (0, 0, false));
}

#[test]
fn a_file_that_is_no_namespace_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let not_ns = dir.path().join("plain");
    std::fs::write(&not_ns, b"").unwrap();
    let e = attach(&not_ns, &dir.path().join(RECORD)).unwrap_err();
    assert!(matches!(e, NetError::Netns { .. }), "{e}");
    let e = attach(Path::new("/nonexistent/ns"), &dir.path().join(RECORD)).unwrap_err();
    assert!(matches!(e, NetError::Netns { .. }), "{e}");
}

#[test]
fn the_hosts_own_namespace_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let spec = |p: &str| json!({"linux": {"namespaces": [{"type": "network", "path": p}]}});
    // (init's, where this test may look: some sandboxes hide /proc/1/ns.)
    let init = Some("/proc/1/ns/net").filter(|p| File::open(p).is_ok());
    for host in std::iter::once("/proc/self/ns/net").chain(init) {
        let e = join(&spec(host), dir.path()).unwrap_err();
        assert!(matches!(e, NetError::HostNamespace(_)), "{e}");
        assert!(e
            .to_string()
            .contains("cannot share the host's network stack"));
    }
    assert!(!dir.path().join(RECORD).exists());
    let e = join(&json!({}), dir.path()).unwrap_err();
    assert!(matches!(e, NetError::HostNetwork), "{e}");
    assert!(join(
        &json!({"linux": {"namespaces": [{"type": "network"}]}}),
        dir.path()
    )
    .unwrap()
    .nics
    .is_empty());
}

#[test]
fn the_spec_says_host_loopback_or_a_namespace() {
    assert_eq!(
        from_spec(&json!({"linux": {"namespaces": [{"type": "pid"}]}})),
        SpecNetwork::Host
    );
    assert_eq!(from_spec(&json!({})), SpecNetwork::Host);
    for ns in [
        json!({"type": "network"}),
        json!({"type": "network", "path": ""}),
    ] {
        assert_eq!(
            from_spec(&json!({"linux": {"namespaces": [ns]}})),
            SpecNetwork::Loopback
        );
    }
    assert_eq!(
        from_spec(&json!({"linux": {"namespaces": [{"type": "network", "path": "/run/netns/x"}]}})),
        SpecNetwork::Namespace("/run/netns/x".into())
    );
    assert!(NetError::HostNetwork
        .to_string()
        .contains("a VM cannot share the host's network stack"));
}

fn link_msg(name: &str, mac: &[u8], kind: Option<InfoKind>) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = 7;
    m.header.link_layer_type = LinkLayerType::Ether;
    m.attributes = vec![
        LinkAttribute::IfName(name.into()),
        LinkAttribute::Address(mac.to_vec()),
        LinkAttribute::Mtu(9000),
    ];
    if let Some(k) = kind {
        m.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(k)]));
    }
    m
}

#[test]
fn links_lo_taps_tunnels_and_macless_ones_are_not_connected() {
    let mac = [2, 0, 0, 0, 0, 9];
    let l = addr::link_of(&link_msg("eth0", &mac, Some(InfoKind::Veth))).unwrap();
    assert_eq!(
        (l.index, l.name.as_str(), l.mac, l.mtu),
        (7, "eth0", mac, 9000)
    );
    assert_eq!(l.mac_string(), "02:00:00:00:00:09");
    assert!(addr::link_of(&link_msg("crxtap0", &mac, Some(InfoKind::Tun))).is_none());
    assert!(addr::link_of(&link_msg("eth1", &[0; 6], None)).is_none());
    assert!(addr::link_of(&link_msg("eth1", &[1, 2, 3], None)).is_none());
    let mut lo = link_msg("lo", &mac, None);
    lo.header.flags = LinkFlags::Loopback;
    assert!(addr::link_of(&lo).is_none());
    let mut sit = link_msg("sit0", &mac, None);
    sit.header.link_layer_type = LinkLayerType::Sit;
    assert!(addr::link_of(&sit).is_none());
    let big = Link {
        mtu: 70000,
        ..l.clone()
    };
    assert_eq!(big.mtu_u16(), u16::MAX);
}

#[test]
fn only_global_addresses_are_handed_on() {
    let msg = |ip: &str, len: u8, scope: AddressScope| {
        let mut m = AddressMessage::default();
        m.header.index = 3;
        m.header.prefix_len = len;
        m.header.scope = scope;
        m.attributes = vec![AddressAttribute::Address(ip.parse().unwrap())];
        m
    };
    let a = addr::address_of(&msg("10.0.0.2", 16, AddressScope::Universe)).unwrap();
    assert_eq!(
        (a.0, a.1.addr.to_string(), a.1.prefix_len),
        (3, "10.0.0.2".into(), 16)
    );
    assert!(addr::address_of(&msg("fe80::1", 64, AddressScope::Link)).is_none());
    assert!(addr::address_of(&msg("127.0.0.1", 8, AddressScope::Host)).is_none());
    assert!(addr::address_of(&msg("10.0.0.2", 33, AddressScope::Universe)).is_none());
    // Point-to-point: the local address is ours, the other the peer's.
    let mut p2p = msg("10.0.0.9", 32, AddressScope::Universe);
    p2p.attributes
        .push(AddressAttribute::Local("10.0.0.2".parse().unwrap()));
    assert_eq!(
        addr::address_of(&p2p).unwrap().1.addr.to_string(),
        "10.0.0.2"
    );
}

#[test]
fn routes_the_kernel_made_or_that_cannot_be_said_are_left_out() {
    let links = [Link {
        index: 4,
        name: "eth0".into(),
        mac: [2, 0, 0, 0, 0, 1],
        mtu: 1500,
    }];
    let route = |dst: Option<(&str, u8)>, gw: Option<&str>, oif: u32| {
        let mut m = RouteMessage::default();
        m.header.table = 254;
        m.header.kind = RouteType::Unicast;
        m.header.protocol = RouteProtocol::Boot;
        let ip = |s: &str| match s.parse::<IpAddr>().unwrap() {
            IpAddr::V4(a) => RouteAddress::Inet(a),
            IpAddr::V6(a) => RouteAddress::Inet6(a),
        };
        if let Some((d, len)) = dst {
            m.header.destination_prefix_length = len;
            m.attributes.push(RouteAttribute::Destination(ip(d)));
        }
        if let Some(g) = gw {
            m.attributes.push(RouteAttribute::Gateway(ip(g)));
        }
        m.attributes.push(RouteAttribute::Oif(oif));
        m
    };
    let default = addr::route_of(&route(None, Some("10.0.0.1"), 4), &links).unwrap();
    assert_eq!(default.destination, None);
    assert_eq!(default.gateway, Some("10.0.0.1".parse().unwrap()));
    assert_eq!(default.interface, "eth0");
    let net = addr::route_of(
        &route(Some(("192.168.0.0", 16)), Some("10.0.0.1"), 4),
        &links,
    )
    .unwrap();
    assert_eq!(net.destination.unwrap().prefix_len, 16);
    let direct = addr::route_of(&route(Some(("172.16.0.0", 12)), None, 4), &links).unwrap();
    assert_eq!(direct.gateway, None);
    let v6 = addr::route_of(&route(None, Some("fe80::1"), 4), &links).unwrap();
    assert!(v6.gateway.unwrap().is_ipv6());
    // Out of an interface not connected, device-only default, kernel-made, other tables.
    assert!(addr::route_of(&route(None, Some("10.0.0.1"), 5), &links).is_none());
    assert!(addr::route_of(&route(None, None, 4), &links).is_none());
    let mut kernel = route(Some(("10.0.0.0", 24)), None, 4);
    kernel.header.protocol = RouteProtocol::Kernel;
    assert!(addr::route_of(&kernel, &links).is_none());
    let mut local = route(Some(("10.0.0.2", 32)), None, 4);
    local.header.table = 255;
    local.header.kind = RouteType::Local;
    assert!(addr::route_of(&local, &links).is_none());
    let mut other = route(None, Some("10.0.0.1"), 4);
    other.attributes.push(RouteAttribute::Table(100));
    assert!(addr::route_of(&other, &links).is_none());
    // Direct routes are listed before those through a gateway.
    let d = addr::describe(
        &links,
        &[],
        &[
            route(None, Some("10.0.0.1"), 4),
            route(Some(("10.0.0.0", 8)), None, 4),
        ],
    );
    assert_eq!(d.routes[0].gateway, None);
    d.validate().unwrap();
}

/// The `iptables -t nat -S OUTPUT` of namespace `ns`.
fn nat_output(ns: &Ns) -> String {
    let f = File::open(&ns.path).unwrap();
    std::thread::spawn(move || {
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let out = std::process::Command::new("iptables")
            .args(["-w", "-t", "nat", "-S", "OUTPUT"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    })
    .join()
    .unwrap()
}

/// A stand-in for crx-vmm's vsock socket and the agent behind it: each connection's
/// `CONNECT`, then its `PortHeader`; port 81 is refused, others answered with what came in.
fn fake_port_agent(uds: &Path, connections: usize) -> std::thread::JoinHandle<Vec<u16>> {
    use crx_proto::{AgentError, ErrorKind, PortHeader, Response, ResponseFrame};
    let listener = std::os::unix::net::UnixListener::bind(uds).unwrap();
    std::thread::spawn(move || {
        let mut ports = Vec::new();
        for _ in 0..connections {
            let (mut s, _) = listener.accept().unwrap();
            let mut line = Vec::new();
            let mut b = [0u8; 1];
            while s.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
                line.push(b[0]);
            }
            assert_eq!(line, b"CONNECT 1024");
            s.write_all(b"OK 1\n").unwrap();
            let h: PortHeader = crx_proto::read_message(&mut s).unwrap().unwrap();
            ports.push(h.forward_port);
            let response = if h.forward_port == 81 {
                Response::Error(AgentError::new(ErrorKind::NotFound, "refused"))
            } else {
                Response::Ok
            };
            let refused = response != Response::Ok;
            crx_proto::write_message(&mut s, &ResponseFrame { id: 0, response }).unwrap();
            if refused {
                continue;
            }
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            s.write_all(b"guest got: ").unwrap();
            s.write_all(&got).unwrap();
        }
        ports
    })
}

#[test]
fn loopback_dials_in_a_pod_namespace_reach_the_guest_through_the_agent() {
    use std::net::{Shutdown, TcpStream};
    let pod = Ns::new();
    pod.run(|h| async move {
        let lo = index(&h, "lo").await;
        h.link()
            .set(LinkUnspec::new_with_index(lo).up().build())
            .execute()
            .await
            .unwrap();
    });
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let agent = fake_port_agent(&uds, 2);
    let fwd = portfwd::PortForward::start(&pod.path, crate::agent::Agent::new(&uds)).unwrap();
    assert!(nat_output(&pod).contains("crx port-forward"));
    // What containerd's CRI does for PortForward: dial localhost:PORT in the pod's namespace.
    let f = File::open(&pod.path).unwrap();
    let (answer, refused) = std::thread::spawn(move || {
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let mut c = TcpStream::connect("127.0.0.1:80").unwrap();
        c.write_all(b"hello").unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut answer = String::new();
        c.read_to_string(&mut answer).unwrap();
        let mut r = TcpStream::connect("127.0.0.1:81").unwrap();
        let refused = r.read(&mut [0u8; 8]).map_err(|e| e.kind());
        (answer, refused)
    })
    .join()
    .unwrap();
    assert_eq!(answer, "guest got: hello");
    assert_eq!(refused, Err(std::io::ErrorKind::ConnectionReset));
    assert_eq!(agent.join().unwrap(), [80, 81]);
    fwd.stop();
    assert!(!nat_output(&pod).contains("crx port-forward"));
}
