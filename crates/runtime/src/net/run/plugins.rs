//! [`setup`] and [`teardown`] with Debian's real CNI plugins (bridge, host-local, portmap,
//! firewall), as root, in a network namespace of the test's own that stands for the host (its
//! bridge, iptables rules and leases stay there): the instance's namespace gets the veth and
//! its address, the VM's tap is made next to it, and after teardown nothing is left.

use std::process::Command;

use serde_json::json;

use super::*;
use crate::net::cni::Protocol;

const PLUGINS: &str = "/usr/lib/cni";

/// Runs `cmd` with `args` (in this thread's network namespace) and returns its stdout.
fn out(cmd: &str, args: &[&str]) -> String {
    let o = Command::new(cmd).args(args).output().unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The leases host-local keeps (files named by address) in `dir`.
fn leases(dir: &Path) -> Vec<String> {
    let list = std::fs::read_dir(dir.join("crxtest")).into_iter().flatten();
    list.filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
        .collect()
}

#[test]
fn real_plugins_network_the_namespace_and_teardown_leaves_nothing() {
    assert!(
        Path::new(PLUGINS).join("bridge").exists(),
        "needs Debian's containernetworking-plugins (.ci/apt-packages)"
    );
    // This test's thread (and the plugins it runs) in a namespace of its own: the "host".
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
    let _ = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status();
    let state = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let list = json!({
        "cniVersion": "1.0.0",
        "name": "crxtest",
        "plugins": [
            {"type": "bridge", "bridge": "crxt0", "isGateway": true, "ipMasq": true,
             "ipam": {"type": "host-local", "dataDir": state.path(),
                      "routes": [{"dst": "0.0.0.0/0"}],
                      "ranges": [[{"subnet": "10.79.0.0/24", "gateway": "10.79.0.1"}]]}},
            {"type": "portmap", "capabilities": {"portMappings": true}},
            {"type": "firewall"}
        ]
    });
    let list = ConfList::parse(list.to_string().as_bytes(), Path::new("t")).unwrap();
    let ports = [PortMapping {
        host_port: 18081,
        container_port: 80,
        protocol: Protocol::Tcp,
        host_ip: None,
    }];
    let before_rules = out("iptables-save", &[]);
    let a = setup_with(home.path(), "crxtestid", &ports, list, vec![PLUGINS.into()]).unwrap();

    assert_eq!(a.nics.len(), 1, "{a:?}");
    let iface = &a.guest.interfaces[0];
    assert_eq!(iface.name, IFNAME);
    assert_eq!(iface.addresses[0].addr.to_string(), "10.79.0.2");
    assert!(
        a.guest
            .routes
            .iter()
            .any(|r| r.destination.is_none() && r.gateway == Some("10.79.0.1".parse().unwrap())),
        "{:?}",
        a.guest.routes
    );
    assert_eq!(
        addresses(home.path())[0].address.addr.to_string(),
        "10.79.0.2"
    );
    assert_eq!(leases(state.path()), ["10.79.0.2"]);
    let rules = out("iptables-save", &[]);
    assert!(
        rules.contains("--dport 18081") && rules.contains("10.79.0.2"),
        "{rules}"
    );
    assert!(out("ip", &["-o", "link"]).contains("master crxt0"));

    drop(a); // the tap, as crx-vmm's exit closes it
    teardown(home.path()).unwrap();
    assert!(leases(state.path()).is_empty());
    let rules = out("iptables-save", &[]);
    assert!(
        !rules.contains("10.79.0.2") && !rules.contains("18081"),
        "{rules}"
    );
    assert!(!out("ip", &["-o", "link"]).contains("master crxt0"));
    assert_eq!(
        std::fs::read_dir(home.path()).unwrap().count(),
        0,
        "home left clean"
    );
    // A second teardown (gc after rm) finds nothing to do.
    teardown(home.path()).unwrap();
    let _ = before_rules;
}
