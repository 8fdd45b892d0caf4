//! A tap on the lab host, for a VM's virtio-net.

use std::process::Command;

/// Runs `ip args`, which must succeed.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("running `ip` (apt package iproute2)");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A persistent tap `name` with the host's address `cidr` (`10.77.0.1/24`), up; deleted when
/// dropped.
#[derive(Debug)]
pub struct HostTap {
    pub name: String,
}

impl HostTap {
    pub fn create(name: &str, cidr: &str) -> HostTap {
        // A leftover from an earlier, killed run.
        let _ = Command::new("ip").args(["link", "del", name]).output();
        ip(&["tuntap", "add", "dev", name, "mode", "tap"]);
        let tap = HostTap {
            name: name.to_owned(),
        };
        ip(&["addr", "add", cidr, "dev", name]);
        ip(&["link", "set", name, "up"]);
        tap
    }
}

impl Drop for HostTap {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.name])
            .output();
    }
}
