//! Lab tier: crx-init configures the guest's network as the host describes it
//! (`configure_network`) on a virtio-net device attached to a tap on the lab host, and the lab
//! host reaches the guest at the address it gave.
//!
//! Run inside the nested lab after `cargo xtask boot` (see lab_agent.rs):
//! `target/debug/xtask lab -- target/debug/deps/lab_agent_net-HASH lab_ --test-threads 1`.

use std::process::Command;
use std::time::Duration;

use crx_proto::network::{Interface, IpPrefix, NetworkConfig, Route};
use crx_proto::{ClientError, ErrorKind, Request, Response};
use crx_testkit::net::HostTap;
use crx_testkit::vm::{Vm, VmOpts};

const BOOT: Duration = Duration::from_secs(120);
const TAP: &str = "crxnet1";
const MAC: &str = "02:00:00:78:00:02";

fn prefix(s: &str) -> IpPrefix {
    let (a, l) = s.split_once('/').unwrap();
    IpPrefix {
        addr: a.parse().unwrap(),
        prefix_len: l.parse().unwrap(),
    }
}

fn network(mac: &str) -> NetworkConfig {
    NetworkConfig {
        interfaces: vec![Interface {
            mac: mac.into(),
            name: "net0".into(),
            mtu: Some(1400),
            addresses: vec![prefix("10.78.0.2/24"), prefix("fd78::2/64")],
            template_mac: None,
        }],
        routes: vec![Route {
            destination: None,
            gateway: Some("10.78.0.1".parse().unwrap()),
            interface: "net0".into(),
        }],
    }
}

/// The lab host pings the guest at the address `configure_network` gave it.
#[test]
fn lab_agent_configures_the_network() {
    let _tap = HostTap::create(TAP, "10.78.0.1/24");
    let dir = tempfile::tempdir().unwrap();
    let mut vm = Vm::spawn(
        dir.path(),
        VmOpts {
            vsock: true,
            net: vec![format!("tap={TAP},mac={MAC}")],
            ..VmOpts::default()
        },
    );
    let mut c = vm.client(BOOT);
    // A MAC the VM has no NIC for: not found, nothing changed.
    match c.call(Request::ConfigureNetwork {
        network: network("02:00:00:78:00:99"),
    }) {
        Err(ClientError::Agent(e)) => assert_eq!(e.kind, ErrorKind::NotFound, "{e:?}"),
        other => panic!("unknown MAC: {other:?}\n{}", vm.logs()),
    }
    let r = c.call(Request::ConfigureNetwork {
        network: network(MAC),
    });
    assert!(matches!(r, Ok(Response::Ok)), "{r:?}\n{}", vm.logs());
    let ping = Command::new("/bin/busybox")
        .args(["ping", "-c", "3", "-W", "10", "10.78.0.2"])
        .output()
        .expect("busybox ping");
    let out = String::from_utf8_lossy(&ping.stdout);
    assert!(
        ping.status.success() && out.contains("3 packets received"),
        "ping the guest: {out}{}\n{}",
        String::from_utf8_lossy(&ping.stderr),
        vm.logs()
    );
    assert_eq!(c.call(Request::Shutdown).unwrap(), Response::Ok);
    drop(c);
    let st = vm.wait(Duration::from_secs(60));
    assert!(st.success(), "crx-vmm: {st}\n{}", vm.logs());
}
