//! Starting a `crx-vmm` process for an instance.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::boot_files::VerifiedBoot;
use crate::error::{io, RuntimeError};

/// The VM of one instance.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub vmm: PathBuf,
    /// The kernel and base initrd, verified and held open: crx-vmm inherits them and opens
    /// them as `/proc/self/fd/N`, so it boots the files that were verified (ADR 0008).
    pub boot: VerifiedBoot,
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
            p(&self.boot.kernel.vmm_path()),
            "--initrd".into(),
            p(&self.boot.initrd.vmm_path()),
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
        crate::child::keep_fds(&mut cmd, self.boot.fds().to_vec());
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

    /// A boot directory holding `kernel` and `initrd` (and their manifest), verified.
    fn boot(dir: &Path, kernel: &[u8], initrd: &[u8]) -> VerifiedBoot {
        std::fs::write(dir.join("vmlinux"), kernel).unwrap();
        std::fs::write(dir.join("base.cpio"), initrd).unwrap();
        crate::boot_files::write_manifest(dir).unwrap();
        let files = crate::paths::BootFiles {
            kernel: dir.join("vmlinux"),
            initrd: dir.join("base.cpio"),
        };
        crate::boot_files::verify(&files, None).unwrap()
    }

    fn config(disk: &str) -> VmConfig {
        let d = tempfile::tempdir().unwrap();
        VmConfig {
            vmm: "/bin/crx-vmm".into(),
            boot: boot(d.path(), b"k", b"i"),
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

    #[test]
    fn the_vmm_is_handed_the_open_verified_files() {
        let vm = config("");
        let a = vm.args();
        assert_eq!(
            after(&a, "--kernel"),
            [format!("/proc/self/fd/{}", vm.boot.kernel.fd())]
        );
        assert_eq!(
            after(&a, "--initrd"),
            [format!("/proc/self/fd/{}", vm.boot.initrd.fd())]
        );
    }

    /// A file renamed over the verified initrd after verification is not what the VMM boots:
    /// it reads the verified file through the descriptor it inherits.
    #[test]
    fn a_rename_over_a_verified_file_does_not_reach_the_vmm() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("seen");
        // A stand-in VMM: copies what its --kernel and --initrd arguments open.
        let script = d.path().join("fake-vmm");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nwhile [ $# -gt 0 ]; do\n\
                 case $1 in --kernel|--initrd) cat \"$2\" >> {out}; echo >> {out};; esac\n\
                 shift\ndone\n",
                out = out.display()
            ),
        )
        .unwrap();
        crate::paths::set_mode(&script, 0o755).unwrap();
        let boot_dir = d.path().join("boot");
        std::fs::create_dir(&boot_dir).unwrap();
        let mut vm = config("");
        vm.boot = boot(&boot_dir, b"good kernel", b"good initrd");
        vm.vmm = script;
        vm.vmm_log = d.path().join("vmm.log");
        vm.console = d.path().join("console");
        let evil = boot_dir.join("evil");
        std::fs::write(&evil, b"evil initrd").unwrap();
        std::fs::rename(&evil, boot_dir.join("base.cpio")).unwrap();
        let mut child = loop {
            match vm.spawn() {
                // The script was just written: another test's fork may briefly hold it open.
                Err(RuntimeError::SpawnVmm { source, .. }) if source.raw_os_error() == Some(26) => {
                    std::thread::sleep(std::time::Duration::from_millis(50))
                }
                r => break r.unwrap(),
            }
        };
        assert!(child.wait().unwrap().success());
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "good kernel\ngood initrd\n"
        );
    }
}
