//! Every crx-vmm in a jail (ADR 0011): the runtime starts `crx-jailer`, which confines
//! crx-vmm to the VM's own directory (the parent of its vsock socket, `HOME/vm`) as a
//! per-sandbox unprivileged user with no capabilities, in its own namespaces.
//!
//! What the VMM needs reaches it without widening that: the boot files, the disk and the VM
//! description as inherited descriptors (`/proc/self/fd/N`), its console and log as stdout
//! and stderr, `/dev/kvm` as a node of the jail's private `/dev`, each virtio-fs socket bound
//! into the jail (and given to the jail's user), crx-vmm and the host's shared libraries bound
//! read-only. The vsock socket it creates in its directory, where the runtime connects to it
//! without following links ([`crate::agent::connect_port`]).
//!
//! The jailer is started as PID 1 of a new PID namespace ([`spawn_as_init`]) and execs
//! crx-vmm in its own place (`--as-init`, ADR 0018): the VMM is the runtime's child, with no
//! jailer process waiting between them.
//!
//! The VMM is born in a cgroup v2 of its own, sized from its VM ([`crate::jail::cgroup`]),
//! unless the runtime already runs the sandbox in its host cgroup (crx-runc's `cgroupsPath`).
//!
//! `CRX_JAIL=0` runs VMMs unconfined and `CRX_SECCOMP=0` without crx-vmm's seccomp filters
//! (`--no-seccomp`), both for debugging only; what confined each VMM is recorded beside its
//! `vm.toml` ([`Confinement`]: `crx inspect` shows it, `crx check` names the instances that ran
//! without a layer). The jail needs root: as another user VMMs run unconfined.

pub mod cgroup;

use std::os::unix::fs::{chown, DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use nix::sched::CloneFlags;

use serde::{Deserialize, Serialize};

use crate::error::{io, RuntimeError};
use cgroup::{CgroupRecord, VmCgroup};

/// The first uid (and gid) of the range jailed VMMs run as; each sandbox gets one of
/// [`UID_COUNT`] by a hash of its directory.
pub const UID_BASE: u32 = 0x5000_0000;
pub const UID_COUNT: u32 = 1 << 20;

/// Host directories of shared libraries bound read-only into every jail (crx-vmm is linked
/// dynamically); those that do not exist are skipped.
const LIBRARY_DIRS: [&str; 4] = ["/lib", "/lib64", "/usr/lib", "/usr/lib64"];

/// Whether VMMs are jailed: as root, unless `CRX_JAIL=0` (for debugging).
pub fn enabled() -> bool {
    std::env::var_os("CRX_JAIL").is_none_or(|v| v != "0") && nix::unistd::geteuid().is_root()
}

/// Whether crx-vmm runs with its seccomp filters (ADR 0010): unless `CRX_SECCOMP=0`, which
/// makes the runtime pass `--no-seccomp` (for debugging only: it is recorded and shown).
pub fn seccomp_enabled() -> bool {
    std::env::var_os("CRX_SECCOMP").is_none_or(|v| v != "0")
}

/// The file beside a VM's `vm.toml` recording what confined its VMM.
pub const CONFINEMENT_FILE: &str = "confinement.json";

/// What confined one VM's VMM, as the runtime started it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confinement {
    /// crx-vmm's seccomp filters; `false`: started with `--no-seccomp` (`CRX_SECCOMP=0`).
    pub seccomp: bool,
    /// The jail; `None`: unconfined (`CRX_JAIL=0`, or the runtime was not root).
    pub jail: Option<JailRecord>,
    /// The VMM's own cgroup; `None`: see `cgroup_off`.
    pub cgroup: Option<CgroupRecord>,
    /// Why the VMM has no cgroup of its own, when it has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_off: Option<String>,
}

/// The jail a VMM ran in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JailRecord {
    pub jailer: PathBuf,
    /// Its user and group.
    pub uid: u32,
    pub root: PathBuf,
}

impl Confinement {
    /// The record of a VMM started with `jail` (or none) and its filters on or off.
    pub fn of(jail: Option<&VmJail>, seccomp: bool) -> Self {
        Confinement {
            seccomp,
            jail: jail.map(|j| JailRecord {
                jailer: j.jailer.clone(),
                uid: j.uid,
                root: j.root.clone(),
            }),
            cgroup: jail.and_then(|j| j.cgroup.as_ref()).map(VmCgroup::record),
            cgroup_off: match jail {
                Some(j) => j.cgroup_off.clone(),
                None => Some("not jailed".into()),
            },
        }
    }

    /// Writes the record into the state directory `dir` (0600).
    pub fn save(&self, dir: &Path) -> Result<(), RuntimeError> {
        let path = dir.join(CONFINEMENT_FILE);
        let text = serde_json::to_vec_pretty(self).expect("record serializes");
        crate::paths::write_private(&path, &text).map_err(io(path))
    }

    /// The record in the state directory `dir`, if any (a VM not yet started has none).
    pub fn load(dir: &Path) -> Option<Self> {
        let text = std::fs::read(dir.join(CONFINEMENT_FILE)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// The layers this VMM ran without, for `crx check` (empty: fully confined).
    pub fn missing(&self) -> Vec<&'static str> {
        let mut m = Vec::new();
        if !self.seccomp {
            m.push("seccomp");
        }
        if self.jail.is_none() {
            m.push("jail");
        }
        m
    }
}

/// `$CRX_JAILER`, else `crx-jailer` next to crx-vmm.
pub fn find_jailer(vmm: &Path) -> Result<PathBuf, RuntimeError> {
    if let Some(p) = std::env::var_os("CRX_JAILER") {
        return Ok(p.into());
    }
    let p = vmm.with_file_name("crx-jailer");
    if p.is_file() {
        return Ok(p);
    }
    Err(RuntimeError::JailerMissing { looked: p })
}

/// The uid and gid of the sandbox whose VM directory is `dir` (FNV-1a of its path).
pub fn uid_for(dir: &Path) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in dir.as_os_str().as_encoded_bytes() {
        h = (h ^ u32::from(*b)).wrapping_mul(0x0100_0193);
    }
    UID_BASE + h % UID_COUNT
}

/// One VM's jail, made before the VMM starts.
#[derive(Debug)]
pub struct VmJail {
    pub root: PathBuf,
    pub uid: u32,
    jailer: PathBuf,
    binds: Vec<String>,
    /// The VMM's own cgroup, made by [`VmJail::limit`]; `cgroup_off` says why there is none.
    cgroup: Option<VmCgroup>,
    cgroup_off: Option<String>,
}

impl VmJail {
    /// Creates `root` (0700, owned by the sandbox's user; an existing one is taken over).
    pub fn prepare(root: &Path, vmm: &Path) -> Result<Self, RuntimeError> {
        // Never hand a state directory (config.json holds the container's environment) to the
        // jail's user: only the VM's own directory.
        if root.file_name() != Some(std::ffi::OsStr::new("vm")) {
            return Err(RuntimeError::JailDir {
                dir: root.to_owned(),
            });
        }
        // A missing VMM is named as such, not as a missing jailer next to it.
        if !vmm.is_file() {
            return Err(RuntimeError::SpawnVmm {
                path: vmm.to_owned(),
                source: std::io::ErrorKind::NotFound.into(),
            });
        }
        let jailer = find_jailer(vmm)?;
        let uid = uid_for(root);
        match std::fs::DirBuilder::new().mode(0o700).create(root) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(root)(e)),
        }
        chown(root, Some(uid), Some(uid)).map_err(io(root))?;
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700)).map_err(io(root))?;
        let mut binds = vec![format!("{}:/crx-vmm:ro", vmm.display())];
        for dir in LIBRARY_DIRS.iter().filter(|d| Path::new(d).is_dir()) {
            binds.push(format!("{dir}:{dir}:ro"));
        }
        Ok(Self {
            root: root.to_owned(),
            uid,
            jailer,
            binds,
            cgroup: None,
            cgroup_off: Some("not made".into()),
        })
    }

    /// Makes the VMM's own cgroup, sized for `memory_mib` and `vcpus`, unless `own` is false
    /// (the runtime runs the sandbox in its host cgroup) or the host has no usable cgroup2
    /// (the documented degrade: recorded, and `crx check` says so).
    pub fn limit(&mut self, memory_mib: u32, vcpus: u32, own: bool) -> Result<(), RuntimeError> {
        if !own {
            self.cgroup_off = Some("in the sandbox's host cgroup (linux.cgroupsPath)".into());
            return Ok(());
        }
        match VmCgroup::create(&self.root, memory_mib, vcpus)? {
            Ok(cg) => {
                self.cgroup = Some(cg);
                self.cgroup_off = None;
            }
            Err(why) => self.cgroup_off = Some(why),
        }
        Ok(())
    }

    pub fn jailer(&self) -> &Path {
        &self.jailer
    }

    /// The path inside the jail of `host`, a path in the jail's directory.
    pub fn inside(&self, host: &Path) -> PathBuf {
        match host.strip_prefix(&self.root) {
            Ok(rel) => Path::new("/").join(rel),
            Err(_) => host.to_owned(),
        }
    }

    /// Binds the vhost-user socket `socket` into the jail (writable: connecting needs it) and
    /// gives it to the jail's user; returns its path inside.
    pub fn bind_socket(&mut self, socket: &Path, index: usize) -> Result<PathBuf, RuntimeError> {
        chown(socket, Some(self.uid), Some(self.uid)).map_err(io(socket))?;
        let inside = PathBuf::from(format!("/fs-{index}.sock"));
        self.binds
            .push(format!("{}:{}:rw", socket.display(), inside.display()));
        Ok(inside)
    }

    /// `crx-jailer --as-init ... -- /crx-vmm ARGS`, joining the VMM's cgroup before it execs;
    /// to be started with [`spawn_as_init`].
    pub fn command(&self, vmm_args: &[String]) -> Result<Command, RuntimeError> {
        let mut cmd = Command::new(&self.jailer);
        let id = self.uid.to_string();
        cmd.arg("--as-init")
            .arg("--root")
            .arg(&self.root)
            .args(["--uid", &id, "--gid", &id, "--hostname", "crx-vmm"])
            .args(["--device", "kvm", "--max-files", "4096"]);
        for b in &self.binds {
            cmd.arg("--bind").arg(b);
        }
        cmd.arg("--").arg("/crx-vmm").args(vmm_args);
        if let Some(cg) = &self.cgroup {
            crate::child::join_cgroup(&mut cmd, cg.procs()?);
        }
        Ok(cmd)
    }
}

/// Spawns `cmd` as PID 1 of a new PID namespace (the jailer's `--as-init`). This thread
/// enters a new PID namespace for its children (`unshare(CLONE_NEWPID)` changes only where
/// the calling thread's next child is born, and is allowed in a threaded process), spawns,
/// and goes back to its own (`setns` into its active namespace), whatever the spawn gave.
pub fn spawn_as_init(cmd: &mut Command) -> std::io::Result<Child> {
    let own = std::fs::File::open("/proc/thread-self/ns/pid")?;
    nix::sched::unshare(CloneFlags::CLONE_NEWPID)?;
    let spawned = cmd.spawn();
    if let Err(e) = nix::sched::setns(&own, CloneFlags::CLONE_NEWPID) {
        // Not expected (root entering its own namespace); the child is not left behind.
        if let Ok(mut c) = spawned {
            let _ = c.kill();
            let _ = c.wait();
        }
        return Err(e.into());
    }
    spawned
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The child is PID 1 of a namespace of its own, and this thread's next child is born in
    /// ours again (as root, as the tiers run; the jail needs root anyway).
    #[test]
    fn a_child_spawned_as_init_is_pid_1_and_the_next_is_not() {
        let pid_of = |out: std::process::Output| String::from_utf8(out.stdout).unwrap();
        let mut sh = Command::new("sh");
        sh.args(["-c", "echo $$"])
            .stdout(std::process::Stdio::piped());
        let first = spawn_as_init(&mut sh).unwrap().wait_with_output().unwrap();
        assert_eq!(pid_of(first).trim(), "1");
        let second = sh.spawn().unwrap();
        let id = second.id();
        assert_eq!(
            pid_of(second.wait_with_output().unwrap()).trim(),
            id.to_string()
        );
        // Twice in a row on one thread: the namespace was given back each time.
        let again = spawn_as_init(&mut sh).unwrap().wait_with_output().unwrap();
        assert_eq!(pid_of(again).trim(), "1");
    }

    #[test]
    fn uids_are_in_the_range_and_differ_by_directory() {
        let a = uid_for(Path::new("/var/lib/crx/instances/a/vm"));
        let b = uid_for(Path::new("/var/lib/crx/instances/b/vm"));
        assert_ne!(a, b);
        for u in [a, b] {
            assert!((UID_BASE..UID_BASE + UID_COUNT).contains(&u), "{u:#x}");
        }
        assert_eq!(a, uid_for(Path::new("/var/lib/crx/instances/a/vm")));
    }

    #[test]
    fn paths_in_the_jail_directory_are_seen_from_its_root() {
        let j = VmJail {
            root: "/s/x/vm".into(),
            uid: UID_BASE,
            jailer: "/bin/crx-jailer".into(),
            binds: vec![],
            cgroup: None,
            cgroup_off: None,
        };
        assert_eq!(
            j.inside(Path::new("/s/x/vm/vsock.sock")),
            Path::new("/vsock.sock")
        );
        assert_eq!(j.inside(Path::new("/elsewhere")), Path::new("/elsewhere"));
    }

    /// A jailed VMM owns its socket's directory: a link put there in place of the socket (to
    /// another VM's) is refused, the socket itself is connected to.
    #[test]
    fn the_runtime_connects_to_the_socket_never_through_a_link() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("real.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        assert!(crate::agent::connect_no_follow(&sock).is_ok());
        let link = d.path().join("vsock.sock");
        std::os::unix::fs::symlink(&sock, &link).unwrap();
        let err = crate::agent::connect_no_follow(&link).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{err}");
        let file = d.path().join("file");
        std::fs::write(&file, b"").unwrap();
        assert!(crate::agent::connect_no_follow(&file).is_err());
    }
}
