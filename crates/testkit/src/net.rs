//! A tap on the lab host, for a VM's virtio-net, and fetching from a container's server.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::text;

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

/// busybox `wget -O - url` from the lab host, retried for up to 120 s (the container boots).
pub fn fetch(url: &str) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        // (No `-T`: Debian's busybox 1.35 wget crashes on it; `timeout` bounds each try.)
        let out = Command::new("timeout")
            .args(["10", "/bin/busybox", "wget", "-q", "-O", "-", url])
            .output()
            .unwrap();
        if out.status.success() {
            return Ok(text(&out.stdout));
        }
        if Instant::now() > deadline {
            return Err(text(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
