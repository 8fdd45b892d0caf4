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
//! `CRX_JAIL=0` runs VMMs unconfined (for debugging; `crx check` says which is in force).
//! The jail needs root: as another user VMMs run unconfined.

use std::os::unix::fs::{chown, DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{io, RuntimeError};

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
        })
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

    /// `crx-jailer ... -- /crx-vmm ARGS`.
    pub fn command(&self, vmm_args: &[String]) -> Command {
        let mut cmd = Command::new(&self.jailer);
        let id = self.uid.to_string();
        cmd.arg("--root")
            .arg(&self.root)
            .args(["--uid", &id, "--gid", &id, "--hostname", "crx-vmm"])
            .args(["--device", "kvm", "--max-files", "4096"]);
        for b in &self.binds {
            cmd.arg("--bind").arg(b);
        }
        cmd.arg("--").arg("/crx-vmm").args(vmm_args);
        cmd
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
