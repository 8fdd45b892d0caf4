//! containerd (Debian's 1.6) with its CRI plugin, on a socket and directories of the test's
//! own: runtime handlers `runc` (io.containerd.runc.v2) and `crx` (io.containerd.crx.v2, the
//! shim found on containerd's PATH), Debian's CNI plugins (bridge + host-local + portmap;
//! containerd adds loopback itself) with a configuration directory of the test's own, and
//! `registry.k8s.io` and `docker.io` mirrored to a loopback [`Registry`] holding the images.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::containerd::Containerd;
use crate::cri::Cri;
use crate::cri_images::{Registry, PAUSE_IMAGE};

/// Where Debian's containernetworking-plugins installs the CNI plugins.
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";
/// The pods' subnet (host-local) and the bridge CNI makes for it.
pub const POD_SUBNET: &str = "10.88.77.0/24";
pub const BRIDGE: &str = "crxcri0";
/// The name containerd's shim for `io.containerd.crx.v2` has on PATH.
pub const CRX_SHIM: &str = "containerd-shim-crx-v2";

/// The shim binary: `$CRX_SHIM_BINARY`, else `target/debug/containerd-shim-crx-v2` (`cargo
/// build -p containerd-shim-crx-v2`; crx-vmm and crx-jailer beside it).
pub fn shim_binary() -> PathBuf {
    let p = std::env::var_os("CRX_SHIM_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::env::workspace().join("target/debug").join(CRX_SHIM));
    assert!(
        p.is_file(),
        "{} is missing: `cargo build -p {CRX_SHIM} -p crx-vmm -p crx-jailer` (or set CRX_SHIM_BINARY)",
        p.display()
    );
    p
}

/// containerd with CRI and its registry, stopped (and its directory removed) when dropped.
#[derive(Debug)]
pub struct CriLab {
    /// Pods' log directories go under here.
    pub logs: PathBuf,
    containerd: Containerd,
    _registry: Registry,
    /// One CRI lab at a time per process: pods share the bridge, its subnet and the host's
    /// counted state.
    _one: std::sync::MutexGuard<'static, ()>,
}

impl CriLab {
    /// Starts the registry (test images pushed) and containerd, whose PATH starts with the
    /// directory of `shim` (a [`CRX_SHIM`] binary, found there by containerd; crx-vmm and
    /// crx-jailer are found beside it), when given.
    pub fn start(shim: Option<&Path>) -> CriLab {
        let one = crate::one_vm();
        // Under /var (the lab's ext4 root): overlayfs snapshots need a filesystem that has them.
        let dir = tempfile::Builder::new()
            .prefix("crx-cri-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let registry = Registry::start(dir.path());
        registry.push_test_images(dir.path());
        if let Some(shim) = shim {
            assert!(
                shim.is_file() && shim.file_name() == Some(CRX_SHIM.as_ref()),
                "{} is not a {CRX_SHIM} binary (`cargo build -p {CRX_SHIM}`)",
                shim.display()
            );
        }
        let cni = dir.path().join("cni");
        std::fs::create_dir_all(&cni).unwrap();
        std::fs::write(cni.join("10-crx-test.conflist"), cni_config(dir.path())).unwrap();
        let config = dir.path().join("containerd.toml");
        std::fs::write(&config, containerd_config(dir.path(), &registry.host())).unwrap();
        let logs = dir.path().join("pods");
        std::fs::create_dir_all(&logs).unwrap();
        let shim_dir = shim.map(|s| s.parent().unwrap());
        let containerd = Containerd::start_in(dir, shim_dir, Some(&config));
        let lab = CriLab {
            logs,
            containerd,
            _registry: registry,
            _one: one,
        };
        lab.wait_ready();
        lab
    }

    /// The lab's directory: containerd's, the registry's, CNI's configuration and state.
    pub fn dir(&self) -> &Path {
        self.containerd.dir()
    }

    /// containerd's log so far.
    pub fn containerd_log(&self) -> String {
        self.containerd.log()
    }

    /// containerd's root and state directories (snapshots, CRI's sandboxes, shims' bundles).
    pub fn containerd_dirs(&self) -> [PathBuf; 2] {
        [self.dir().join("root"), self.dir().join("state")]
    }

    /// A new CRI client.
    pub fn client(&self) -> Cri {
        Cri::connect(&self.containerd.address)
    }

    /// Waits until the CRI service answers `Version` (60 s at most; containerd's socket is
    /// there already).
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut cri = self.client();
        loop {
            match cri.version() {
                Ok(v) => {
                    assert_eq!(v.runtime_name, "containerd", "{v:?}");
                    return;
                }
                Err(e) => assert!(
                    Instant::now() < deadline,
                    "the CRI service did not answer within 60 s ({e}): {}",
                    self.containerd_log()
                ),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// containerd's configuration (version 2, containerd 1.6) for a lab under `dir` whose
/// images come from the registry at `registry` (`127.0.0.1:PORT`).
pub fn containerd_config(dir: &Path, registry: &str) -> String {
    let d = dir.display();
    let cri = "plugins.\"io.containerd.grpc.v1.cri\"";
    format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"

[grpc]
  address = "{d}/containerd.sock"

[ttrpc]
  address = "{d}/containerd.sock.ttrpc"

[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.crx]
  runtime_type = "io.containerd.crx.v2"

[{cri}.cni]
  bin_dir = "{CNI_BIN_DIR}"
  conf_dir = "{d}/cni"
  max_conf_num = 1

[{cri}.registry.mirrors."registry.k8s.io"]
  endpoint = ["http://{registry}"]

[{cri}.registry.mirrors."docker.io"]
  endpoint = ["http://{registry}"]
"#
    )
}

/// The pod network: a bridge with host-local addresses from [`POD_SUBNET`] (its state under
/// `dir`) and portmap for host ports.
pub fn cni_config(dir: &Path) -> String {
    let ipam_dir = dir.join("ipam");
    serde_json::json!({
        "cniVersion": "0.4.0",
        "name": "crx-test",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_SUBNET}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": ipam_dir,
                }
            },
            {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}
        ]
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_config_names_both_handlers_and_the_mirrors() {
        let c = containerd_config(Path::new("/x"), "127.0.0.1:5555");
        assert!(c.contains("runtime_type = \"io.containerd.crx.v2\""));
        assert!(c.contains("runtime_type = \"io.containerd.runc.v2\""));
        assert!(c.contains(
            "registry.mirrors.\"registry.k8s.io\"]\n  endpoint = [\"http://127.0.0.1:5555\"]"
        ));
        assert!(c.contains("address = \"/x/containerd.sock\""));
    }

    #[test]
    fn cni_config_chains_bridge_and_portmap() {
        let v: serde_json::Value = serde_json::from_str(&cni_config(Path::new("/x"))).unwrap();
        assert_eq!(v["plugins"][0]["type"], "bridge");
        assert_eq!(v["plugins"][0]["ipam"]["type"], "host-local");
        assert_eq!(v["plugins"][0]["ipam"]["dataDir"], "/x/ipam");
        assert_eq!(v["plugins"][1]["type"], "portmap");
    }
}
