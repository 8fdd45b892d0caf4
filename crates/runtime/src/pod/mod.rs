//! A pod: one microVM holding every container of a Kubernetes pod (the containerd shim's
//! sandbox, `containerd-shim-crx-v2`; ADR 0019). The VM shares ONE directory with the guest
//! through ONE virtiofsd ([`share`]): each container's root filesystem and bind mounts are
//! mounted under it on the host as the container is created, and reach the virtiofsd (started
//! before them) by mount propagation. The VM joins the network namespace of the pod's spec
//! (the tap + tc path of [`crate::net`]); its containers share its network and IPC. Dials to
//! the loopback of that namespace (the CRI's `PortForward`) reach the guest's
//! ([`crate::net::portfwd`]).
//!
//! ```text
//! DIR/                 the pod's directory (0700): state.json (the record), vm.toml, logs
//! DIR/vm/vsock.sock    the agent's socket (the jailed VMM's root)
//! DIR/pod.fs.sock      the virtiofsd's socket
//! DIR/share/           shared mount, served as the virtio-fs tag `pod`
//! DIR/share/CID/rootfs the container's rootfs (a bind of its bundle's rootfs)
//! DIR/share/CID/binds  its bind mounts, staged (`crate::oci::rootfs::stage_binds`)
//! ```

pub mod share;

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use serde_json::Value;

use crate::agent::Agent;
use crate::error::RuntimeError;
use crate::net::portfwd::PortForward;
use crate::net::NetError;
use crate::oci::bundle::{vm_size, DEFAULT_VM_MIB, VM_OVERHEAD_MIB};
use crate::oci::OciError;
use crate::record::{Record, RecordError, SandboxFiles};
use crate::virtiofs::{Daemon, DaemonOptions, VirtiofsError};
use crate::vm::VmConfig;

/// The virtio-fs tag of a pod's one share.
pub const SHARE_TAG: &str = "pod";
/// The pod's memory when its spec asks for none: the default VM size, as `crx run`.
pub const POD_DEFAULT_MIB: u32 = DEFAULT_VM_MIB;
/// The annotation giving a pod's memory in MiB (e.g. set from a RuntimeClass's overhead plus
/// the pod's summed limits by an admission hook); read from the sandbox's spec.
pub const MEMORY_ANNOTATION: &str = "io.crx.pod.memory-mib";
/// The annotation giving a pod's vCPUs.
pub const VCPUS_ANNOTATION: &str = "io.crx.pod.vcpus";

/// What failed in a pod.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("pod directory {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("mounting {what}")]
    Mount {
        what: String,
        #[source]
        source: nix::Error,
    },
    #[error("the pod's share")]
    Share(#[source] VirtiofsError),
    #[error("the pod's network")]
    Net(#[source] NetError),
    #[error("the pod's record")]
    Record(#[source] RecordError),
    #[error("the pod's container")]
    Oci(#[source] OciError),
    #[error("the pod's VM")]
    Runtime(#[source] RuntimeError),
    #[error("{0:?} already exists in the pod")]
    Exists(String),
    #[error("bad container id {0:?}")]
    BadId(String),
}

impl From<RuntimeError> for PodError {
    fn from(e: RuntimeError) -> Self {
        PodError::Runtime(e)
    }
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PodError + '_ {
    move |source| PodError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A pod's directory.
#[derive(Debug, Clone)]
pub struct PodDir {
    /// The sandbox id (the pod's).
    pub id: String,
    pub dir: PathBuf,
}

impl SandboxFiles for PodDir {
    fn dir(&self) -> &Path {
        &self.dir
    }
}

impl PodDir {
    /// The pod `id` of containerd namespace `namespace` under `root`: a short name (a digest
    /// of both), as socket paths under it must stay short.
    pub fn new(root: &Path, namespace: &str, id: &str) -> PodDir {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(format!("{namespace}/{id}").as_bytes());
        let name: String = digest.iter().take(10).map(|b| format!("{b:02x}")).collect();
        PodDir {
            id: id.to_owned(),
            dir: root.join(name),
        }
    }

    /// The shared directory (`DIR/share`).
    pub fn share(&self) -> PathBuf {
        self.dir.join("share")
    }

    /// The virtiofsd's socket.
    pub fn fs_socket(&self) -> PathBuf {
        self.dir.join("pod.fs.sock")
    }
}

/// A booted pod VM: crx-vmm and the virtiofsd are children of the thread that booted it
/// (they die with that thread: keep it alive as long as the pod).
#[derive(Debug)]
pub struct PodVm {
    pub dir: PodDir,
    pub vmm: Child,
    pub agent: Agent,
    daemon: Option<Daemon>,
    port_forward: Option<PortForward>,
}

/// The pod's VM size: the annotations' (`MEMORY_ANNOTATION`, `VCPUS_ANNOTATION`), else the
/// sandbox spec's `linux.resources` as a container's ([`vm_size`]: limit + overhead).
pub fn size(spec: &Value, host_cpus: u32) -> (u32, u32) {
    let (memory, vcpus) = vm_size(spec, host_cpus);
    let ann = |k: &str| {
        spec["annotations"][k]
            .as_str()
            .and_then(|v| v.trim().parse::<u32>().ok())
            .filter(|v| *v > 0)
    };
    let memory = ann(MEMORY_ANNOTATION)
        .map(|m| m.clamp(VM_OVERHEAD_MIB, 1 << 20))
        .unwrap_or(memory);
    let vcpus = ann(VCPUS_ANNOTATION)
        .map(|v| v.clamp(1, host_cpus.max(1)))
        .unwrap_or(vcpus);
    (memory, vcpus)
}

/// Boots the pod `dir` for the sandbox spec `spec` (its network namespace, size): makes the
/// directory, the shared mount and its virtiofsd, joins the network and boots the VM, the
/// record naming this process and the VMM. On error what was started is stopped (the
/// directory stays for [`cleanup`]).
pub fn boot(dir: &PodDir, spec: &Value) -> Result<PodVm, PodError> {
    crate::paths::create_private_dir_all(&dir.dir).map_err(io(&dir.dir))?;
    let mut rec = Record::new(&dir.id, Default::default());
    rec.set_monitor(std::process::id());
    dir.write_record(&rec).map_err(PodError::Record)?;
    let boot = crate::paths::verified_boot_files()?;
    share::prepare(&dir.share())?;
    let opts = DaemonOptions {
        announce_submounts: false,
        ..DaemonOptions::default()
    };
    let mut daemon =
        Daemon::spawn_with(&dir.share(), &dir.fs_socket(), &opts).map_err(PodError::Share)?;
    let network = crate::net::join(spec, &dir.dir).map_err(PodError::Net)?;
    let host_cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let (memory_mib, vcpus) = size(spec, host_cpus);
    let mut vm = VmConfig {
        vmm: crate::paths::find_vmm()?,
        boot,
        memory_mib,
        vcpus,
        disk: PathBuf::new(),
        vsock_uds: dir.vsock_path(),
        console: dir.console_path(),
        vmm_log: dir.vmm_log(),
        die_with_parent: true,
        boot_timer: false,
        fs: Vec::new(),
        net: network.nics,
    };
    vm.add_fs(SHARE_TAG, dir.fs_socket());
    rec.boot = Some(vm.boot.digests());
    let mut sandbox = crate::sandbox::boot(&vm, &mut [&mut daemon], |pid| {
        rec.set_vmm(pid);
        dir.write_record(&rec).map_err(PodError::Record)
    })?;
    vm.net.clear();
    if let Err(e) = sandbox.configure_network(network.guest) {
        let _ = sandbox.vmm.kill();
        let _ = sandbox.vmm.wait();
        return Err(e.into());
    }
    Ok(PodVm {
        dir: dir.clone(),
        port_forward: port_forward(spec, &sandbox.agent),
        vmm: sandbox.vmm,
        agent: sandbox.agent,
        daemon: Some(daemon),
    })
}

/// Port forwarding for the pod's namespace, if it has one (a pod without it still runs: why
/// goes to the shim's log).
fn port_forward(spec: &Value, agent: &Agent) -> Option<PortForward> {
    let crate::net::SpecNetwork::Namespace(ns) = crate::net::from_spec(spec) else {
        return None;
    };
    PortForward::start(&ns, agent.clone())
        .map_err(|e| eprintln!("crx: the pod has no port forwarding: {}", crate::chain(&e)))
        .ok()
}

impl PodVm {
    /// The VMM's pid.
    pub fn vmm_pid(&self) -> u32 {
        self.vmm.id()
    }

    /// The pod's host processes below its shim: the VMM and the virtiofsd daemon (whose own
    /// children [`crate::trim::release_later`] finds).
    pub fn host_pids(&self) -> Vec<u32> {
        std::iter::once(self.vmm.id())
            .chain(self.daemon.as_ref().map(Daemon::pid))
            .collect()
    }

    /// Powers the VM off (killed after `grace`), stops the virtiofsd and port forwarding.
    pub fn shutdown(&mut self, grace: Duration) {
        if let Some(f) = self.port_forward.take() {
            f.stop();
        }
        crate::instance::shutdown(&self.agent, self.vmm.id(), grace);
        let _ = self.vmm.wait();
        if let Some(d) = self.daemon.take() {
            d.stop(Duration::from_secs(2));
        }
    }
}

/// Removes what a pod left (after [`PodVm::shutdown`], or after its shim died): kills its VMM
/// if it still runs, undoes the network redirects, unmounts every container's mounts and the
/// share, and removes the directory (and the VMM's cgroup). A missing pod is not an error.
pub fn cleanup(dir: &PodDir) -> Result<(), PodError> {
    if !dir.dir.exists() {
        return Ok(());
    }
    if let Ok(rec) = dir.read_record() {
        if let Some(pid) = rec.vmm_pid.filter(|_| rec.vmm_alive()) {
            let p = nix::unistd::Pid::from_raw(pid as i32);
            let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL);
            crate::instance::wait_gone(pid, Duration::from_secs(5));
        }
    }
    crate::net::detach(&dir.dir.join(crate::net::RECORD)).map_err(PodError::Net)?;
    share::remove_all(&dir.share())?;
    let _ = crate::jail::cgroup::remove(&dir.dir.join("vm"));
    match std::fs::remove_dir_all(&dir.dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(&dir.dir)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pod_dirs_are_short_and_distinct() {
        let root = Path::new("/run/crx-shim");
        let a = PodDir::new(root, "k8s.io", &"a".repeat(64));
        let b = PodDir::new(root, "default", &"a".repeat(64));
        assert_ne!(a.dir, b.dir);
        assert!(
            a.vsock_path().as_os_str().len() < 100,
            "{:?}",
            a.vsock_path()
        );
    }

    #[test]
    fn size_from_annotations_or_resources() {
        let s = json!({"linux": {"resources": {"memory": {"limit": 128 << 20}}}});
        assert_eq!(size(&s, 4), (128 + VM_OVERHEAD_MIB, 1));
        let s = json!({"annotations": {MEMORY_ANNOTATION: "512", VCPUS_ANNOTATION: "3"}});
        assert_eq!(size(&s, 2), (512, 2));
        let s = json!({"annotations": {MEMORY_ANNOTATION: "x", VCPUS_ANNOTATION: "0"}});
        assert_eq!(size(&s, 2), (POD_DEFAULT_MIB, 1));
    }
}
