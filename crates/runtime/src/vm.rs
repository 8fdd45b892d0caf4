//! Starting a `crx-vmm` process for an instance.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::error::{io, RuntimeError};
use crate::paths::BootFiles;

/// The VM of one instance.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub vmm: PathBuf,
    pub boot: BootFiles,
    pub memory_mib: u32,
    pub vcpus: u32,
    /// The image's read-only disk (`/dev/vda` in the guest); an empty path means no disk
    /// (a root filesystem shared over virtio-fs instead).
    pub disk: PathBuf,
    pub vsock_uds: PathBuf,
    pub console: PathBuf,
    /// Where the VMM's own stderr goes.
    pub vmm_log: PathBuf,
    /// SIGKILL the VMM when the thread that started it dies (a foreground `crx run` that is
    /// killed takes its VM along; `crx gc` then removes the home).
    pub die_with_parent: bool,
    /// Log the guest's boot-timer marks to `vmm_log` (`--boot-timer`).
    pub boot_timer: bool,
    /// virtio-fs devices (`crx-vmm --fs TAG=SOCKET`), each served by a running virtiofsd
    /// ([`crate::virtiofs::Daemon`]); see [`VmConfig::add_fs`].
    pub fs: Vec<FsShare>,
}

/// One virtio-fs device of a VM: the tag the guest mounts and the backend's socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsShare {
    /// `mount -t virtiofs TAG` in the guest; 1 to 36 bytes.
    pub tag: String,
    /// The vhost-user socket virtiofsd listens on (it must exist when the VMM starts).
    pub socket: PathBuf,
}

/// The guest CID of every instance (each VM has its own vsock device; the host side is a
/// Unix socket, so CIDs never meet).
pub const GUEST_CID: u32 = 3;

impl VmConfig {
    /// Adds a virtio-fs device: the guest sees the directory that the virtiofsd listening on
    /// `socket` shares as `tag` (`mount -t virtiofs TAG DIR`, or `Rootfs::virtiofs(TAG, ..)`).
    /// With any, crx-vmm backs guest RAM with a shared memfd and copies the boot files.
    pub fn add_fs(&mut self, tag: impl Into<String>, socket: impl Into<PathBuf>) {
        self.fs.push(FsShare {
            tag: tag.into(),
            socket: socket.into(),
        });
    }

    /// The crx-vmm arguments.
    pub fn args(&self) -> Vec<String> {
        let p = |p: &Path| p.display().to_string();
        let mut a = vec![
            "--memory-mib".into(),
            self.memory_mib.to_string(),
            "--vcpus".into(),
            self.vcpus.to_string(),
            "--kernel".into(),
            p(&self.boot.kernel),
            "--initrd".into(),
            p(&self.boot.initrd),
            "--vsock-cid".into(),
            GUEST_CID.to_string(),
            "--vsock-uds".into(),
            p(&self.vsock_uds),
            "--serial".into(),
            format!("file:{}", p(&self.console)),
            "--init-args".into(),
            "quiet".into(),
            if self.boot_timer {
                "--boot-timer"
            } else {
                "--no-boot-timer"
            }
            .into(),
        ];
        if !self.disk.as_os_str().is_empty() {
            a.push("--disk".into());
            a.push(format!("{}:ro", p(&self.disk)));
        }
        for f in &self.fs {
            a.push("--fs".into());
            a.push(format!("{}={}", f.tag, p(&f.socket)));
        }
        a
    }

    /// Starts crx-vmm in its own process group (a terminal's Ctrl-C reaches `crx`, which
    /// forwards it to the container, not the VMM).
    pub fn spawn(&self) -> Result<Child, RuntimeError> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.vmm_log)
            .map_err(io(&self.vmm_log))?;
        let mut cmd = Command::new(&self.vmm);
        if self.die_with_parent {
            crate::child::die_with_parent(&mut cmd);
        }
        cmd.args(self.args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(|source| RuntimeError::SpawnVmm {
                path: self.vmm.clone(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(disk: &str) -> VmConfig {
        VmConfig {
            vmm: "/bin/crx-vmm".into(),
            boot: BootFiles {
                kernel: "/k".into(),
                initrd: "/i".into(),
            },
            memory_mib: 256,
            vcpus: 1,
            disk: disk.into(),
            vsock_uds: "/run/v.sock".into(),
            console: "/run/console".into(),
            vmm_log: "/run/vmm.log".into(),
            die_with_parent: false,
            boot_timer: false,
            fs: Vec::new(),
        }
    }

    fn after<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn fs_shares_become_fs_flags_and_an_empty_disk_none() {
        let mut vm = config("/img/rootfs.erofs");
        assert_eq!(after(&vm.args(), "--disk"), ["/img/rootfs.erofs:ro"]);
        assert!(after(&vm.args(), "--fs").is_empty());
        vm.disk = PathBuf::new();
        vm.add_fs("root", "/run/c/root.sock");
        vm.add_fs("vol0", Path::new("/run/c/vol0.sock"));
        let a = vm.args();
        assert!(after(&a, "--disk").is_empty());
        assert_eq!(
            after(&a, "--fs"),
            ["root=/run/c/root.sock", "vol0=/run/c/vol0.sock"]
        );
    }
}
