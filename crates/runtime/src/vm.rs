//! Starting a `crx-vmm` process for an instance: the typed VM description (`crx-vmconfig`)
//! written to the instance's `vm.toml`, then `crx-vmm --config vm.toml`.

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
    /// Log the guest's boot-timer marks to `vmm_log` (`boot_timer`).
    pub boot_timer: bool,
    /// virtio-fs devices (`[[fs]]` in the VM config), each served by a running virtiofsd
    /// ([`crate::virtiofs::Daemon`]); see [`VmConfig::add_fs`].
    pub fs: Vec<FsShare>,
    /// virtio-net devices (`[[net]]`), each over a tap crx-vmm inherits (`tap_fd`): made in
    /// the container's network namespace by [`crate::net::attach`].
    pub net: Vec<crate::net::Nic>,
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
    /// Whether the VM has the image's read-only disk (an empty `disk` path: none).
    pub fn has_disk(&self) -> bool {
        !self.disk.as_os_str().is_empty()
    }

    /// Adds a virtio-fs device: the guest sees the directory that the virtiofsd listening on
    /// `socket` shares as `tag` (`mount -t virtiofs TAG DIR`, or `Rootfs::virtiofs(TAG, ..)`).
    /// With any, crx-vmm backs guest RAM with a shared memfd and copies the boot files.
    pub fn add_fs(&mut self, tag: impl Into<String>, socket: impl Into<PathBuf>) {
        self.fs.push(FsShare {
            tag: tag.into(),
            socket: socket.into(),
        });
    }

    /// The VM as crx-vmm reads it (`crx-vmm --config`).
    pub fn vmm_config(&self) -> crx_vmconfig::VmConfig {
        use crx_vmconfig::{DiskConfig, FsConfig, SerialOutput, VsockConfig};
        let disks = self.has_disk().then(|| DiskConfig {
            path: self.disk.clone(),
            read_only: true,
        });
        crx_vmconfig::VmConfig {
            // Out of range on purpose when too large: crx-vmm refuses it naming the field.
            vcpus: u8::try_from(self.vcpus).unwrap_or(u8::MAX),
            initrds: vec![self.boot.initrd.vmm_path()],
            init_args: Some("quiet".into()),
            boot_timer: self.boot_timer,
            serial: SerialOutput::File(self.console.clone()),
            disks: disks.into_iter().collect(),
            vsock: Some(VsockConfig {
                guest_cid: GUEST_CID,
                uds_path: self.vsock_uds.clone(),
            }),
            fs: self
                .fs
                .iter()
                .map(|f| FsConfig {
                    tag: f.tag.clone(),
                    socket: f.socket.clone(),
                })
                .collect(),
            net: self
                .net
                .iter()
                .map(|n| crx_vmconfig::NetConfig {
                    tap_fd: Some(std::os::fd::AsRawFd::as_raw_fd(&*n.tap)),
                    mac: Some(n.mac.clone()),
                    mtu: Some(n.mtu),
                    ..Default::default()
                })
                .collect(),
            ..crx_vmconfig::VmConfig::new(self.memory_mib.into(), self.boot.kernel.vmm_path())
        }
    }

    /// Where [`VmConfig::spawn`] writes the VM's description: `vm.toml` next to the VMM's log,
    /// in the instance's home (state) directory.
    pub fn config_path(&self) -> PathBuf {
        self.vmm_log.with_file_name("vm.toml")
    }

    /// Writes the VM's description ([`VmConfig::config_path`], 0600, atomically: the record of
    /// what was started) and starts crx-vmm on it in its own process group (a terminal's Ctrl-C
    /// reaches `crx`, which forwards it to the container, not the VMM), jailed as root
    /// ([`crate::jail`]). Its inputs reach it as inherited descriptors (`/proc/self/fd/N`: the
    /// boot files, the disk, the description itself), its console as stdout, its log as stderr.
    pub fn spawn(&self) -> Result<Child, RuntimeError> {
        self.spawn_with(crate::jail::enabled(), crate::jail::seccomp_enabled())
    }

    /// [`VmConfig::spawn`], jailed or not, with crx-vmm's seccomp filters or not.
    pub(crate) fn spawn_with(&self, jailed: bool, seccomp: bool) -> Result<Child, RuntimeError> {
        self.spawn_as(jailed, seccomp, &crate::template::Launch::Boot)
    }

    /// [`VmConfig::spawn_with`], booting or building or restoring a template (`launch`).
    pub(crate) fn spawn_as(
        &self,
        jailed: bool,
        seccomp: bool,
        launch: &crate::template::Launch,
    ) -> Result<Child, RuntimeError> {
        let vm_dir = self.vsock_uds.parent().unwrap_or(Path::new("."));
        crate::paths::create_private_dir_all(vm_dir).map_err(io(vm_dir))?;
        let mut jail = match jailed {
            true => Some(crate::jail::VmJail::prepare(vm_dir, &self.vmm)?),
            false => None,
        };
        if let Some(j) = &mut jail {
            // A process in the sandbox's host cgroup (crx-runc's cgroupsPath) keeps the VMM there.
            let own = !crate::oci::cgroup::joined();
            j.limit(self.memory_mib, self.vcpus, own)?;
        }
        let mut cfg = self.vmm_config();
        launch.describe(&mut cfg);
        let mut fds = self.boot.fds().to_vec();
        fds.extend(launch.fds());
        let disk = match cfg.disks.first_mut() {
            Some(d) => {
                let f = std::fs::File::open(&d.path).map_err(io(&d.path))?;
                d.path = fd_path(&f);
                Some(f)
            }
            None => None,
        };
        fds.extend(disk.iter().map(std::os::fd::AsRawFd::as_raw_fd));
        // Each tap as itself: `tap_fd` in the description is its number.
        fds.extend(
            self.net
                .iter()
                .map(|n| std::os::fd::AsRawFd::as_raw_fd(&*n.tap)),
        );
        cfg.serial = crx_vmconfig::SerialOutput::Stdout;
        if let Some(j) = &mut jail {
            if let Some(v) = &mut cfg.vsock {
                v.uds_path = j.inside(&v.uds_path);
            }
            for (i, f) in cfg.fs.iter_mut().enumerate() {
                f.socket = j.bind_socket(&f.socket, i)?;
            }
        }
        let record = self.config_path();
        cfg.write_private(&record)
            .map_err(|source| RuntimeError::VmConfig {
                path: record.clone(),
                source,
            })?;
        let config = ConfigFile::new(&cfg)?;
        fds.push(config.fd());
        let open_private = |p: &Path| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(p)
                .map_err(io(p))
        };
        let console = open_private(&self.console)?;
        let log = open_private(&self.vmm_log)?;
        let mut args = vec![
            "--config".to_owned(),
            config.vmm_path().display().to_string(),
        ];
        if !seccomp {
            args.push("--no-seccomp".to_owned());
        }
        args.extend(launch.args());
        // What confines this VMM, recorded beside vm.toml (`crx inspect`, `crx check`).
        crate::jail::Confinement::of(jail.as_ref(), seccomp)
            .save(record.parent().unwrap_or(Path::new(".")))?;
        let (mut cmd, program) = match &jail {
            Some(j) => (j.command(&args)?, j.jailer().to_owned()),
            None => {
                let mut c = Command::new(&self.vmm);
                c.args(args);
                (c, self.vmm.clone())
            }
        };
        if self.die_with_parent {
            crate::child::die_with_parent(&mut cmd);
        }
        crate::child::keep_fds(&mut cmd, fds);
        cmd.stdin(Stdio::null())
            .stdout(console)
            .stderr(log)
            .process_group(0);
        // Jailed: the jailer is PID 1 of the VM's PID namespace and becomes crx-vmm.
        match &jail {
            Some(_) => crate::jail::spawn_as_init(&mut cmd),
            None => cmd.spawn(),
        }
        .map_err(|source| RuntimeError::SpawnVmm {
            path: program,
            source,
        })
    }
}

/// `/proc/self/fd/N` of an open file: the path crx-vmm opens it by once it inherits it.
fn fd_path(f: &impl std::os::fd::AsRawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()))
}

/// A VM description in an anonymous file (a memfd), for a VM with no home directory of its
/// own (`crx vm run`): crx-vmm inherits the descriptor ([`crate::child::keep_fds`]) and
/// reads `--config /proc/self/fd/N` ([`ConfigFile::vmm_path`]); nothing is left on disk.
#[derive(Debug)]
pub struct ConfigFile {
    fd: std::os::fd::OwnedFd,
}

impl ConfigFile {
    /// Writes `cfg` into a new anonymous file.
    pub fn new(cfg: &crx_vmconfig::VmConfig) -> Result<Self, RuntimeError> {
        use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
        let name = Path::new("vm.toml");
        let text = cfg.to_toml().map_err(|source| RuntimeError::VmConfig {
            path: name.to_owned(),
            source,
        })?;
        let fd = memfd_create(c"vm.toml", MemFdCreateFlag::MFD_CLOEXEC)
            .map_err(|e| io(name)(e.into()))?;
        let mut f = std::fs::File::from(fd);
        std::io::Write::write_all(&mut f, text.as_bytes()).map_err(io(name))?;
        Ok(ConfigFile { fd: f.into() })
    }

    /// The descriptor crx-vmm must inherit.
    pub fn fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.fd)
    }

    /// The path crx-vmm opens: the inherited descriptor (a fresh open, from offset 0).
    pub fn vmm_path(&self) -> PathBuf {
        fd_path(&self.fd)
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
            net: Vec::new(),
        }
    }

    #[test]
    fn fs_shares_become_fs_sections_and_an_empty_disk_none() {
        let mut vm = config("/img/rootfs.erofs");
        let c = vm.vmm_config();
        assert_eq!(
            c.disks,
            [crx_vmconfig::DiskConfig {
                path: "/img/rootfs.erofs".into(),
                read_only: true
            }]
        );
        assert!(c.fs.is_empty());
        vm.disk = PathBuf::new();
        vm.add_fs("root", "/run/c/root.sock");
        vm.add_fs("vol0", Path::new("/run/c/vol0.sock"));
        let c = vm.vmm_config();
        assert!(c.disks.is_empty());
        let fs: Vec<_> = c.fs.iter().map(|f| (&*f.tag, &*f.socket)).collect();
        assert_eq!(
            fs,
            [
                ("root", Path::new("/run/c/root.sock")),
                ("vol0", Path::new("/run/c/vol0.sock"))
            ]
        );
    }

    #[test]
    fn the_vmm_is_handed_the_open_verified_files() {
        let vm = config("");
        let c = vm.vmm_config();
        assert_eq!(
            c.kernel,
            PathBuf::from(format!("/proc/self/fd/{}", vm.boot.kernel.fd()))
        );
        assert_eq!(
            c.initrds,
            [PathBuf::from(format!(
                "/proc/self/fd/{}",
                vm.boot.initrd.fd()
            ))]
        );
        assert_eq!(c.memory_mib, 256);
        assert_eq!(
            c.serial,
            crx_vmconfig::SerialOutput::File("/run/console".into())
        );
        assert_eq!(
            c.vsock.map(|v| (v.guest_cid, v.uds_path)),
            Some((GUEST_CID, "/run/v.sock".into()))
        );
    }

    /// A stand-in VMM: copies the files its `--config` names as `/proc/self/fd/N` (kernel,
    /// initrds, disk), in order, and keeps the config it read.
    fn fake_vmm(d: &Path, out: &Path) -> PathBuf {
        let script = d.join("fake-vmm");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\n[ \"$1\" = --config ] || exit 9\ncp \"$2\" {out}.toml\n\
                 for f in $(grep -o '/proc/self/fd/[0-9]*' \"$2\"); do\n\
                 cat \"$f\" >> {out}; echo >> {out}\ndone\n",
                out = out.display()
            ),
        )
        .unwrap();
        crate::paths::set_mode(&script, 0o755).unwrap();
        script
    }

    fn spawn_retrying(vm: &VmConfig, jailed: bool, seccomp: bool) -> Child {
        loop {
            match vm.spawn_with(jailed, seccomp) {
                // The script was just written: another test's fork may briefly hold it open.
                Err(RuntimeError::SpawnVmm { source, .. }) if source.raw_os_error() == Some(26) => {
                    std::thread::sleep(std::time::Duration::from_millis(50))
                }
                r => break r.unwrap(),
            }
        }
    }

    /// A file renamed over the verified initrd after verification is not what the VMM boots:
    /// it reads the verified file through the descriptor it inherits; so is the disk.
    #[test]
    fn a_rename_over_a_verified_file_does_not_reach_the_vmm() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("seen");
        let boot_dir = d.path().join("boot");
        std::fs::create_dir(&boot_dir).unwrap();
        let disk = d.path().join("disk.erofs");
        std::fs::write(&disk, b"disk").unwrap();
        let mut vm = config(&disk.display().to_string());
        vm.boot = boot(&boot_dir, b"good kernel", b"good initrd");
        vm.vmm = fake_vmm(d.path(), &out);
        vm.vmm_log = d.path().join("vmm.log");
        vm.console = d.path().join("console");
        vm.vsock_uds = d.path().join("vm/v.sock");
        let evil = boot_dir.join("evil");
        std::fs::write(&evil, b"evil initrd").unwrap();
        std::fs::rename(&evil, boot_dir.join("base.cpio")).unwrap();
        let mut child = spawn_retrying(&vm, false, true);
        assert!(child.wait().unwrap().success());
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "good kernel\ngood initrd\ndisk\n"
        );
        // The config it was given is the one recorded next to its log, private.
        use std::os::unix::fs::PermissionsExt;
        let written = vm.config_path();
        assert_eq!(written, d.path().join("vm.toml"));
        let mode = std::fs::metadata(&written).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let seen = crx_vmconfig::VmConfig::read(&out.with_extension("toml")).unwrap();
        assert_eq!(seen, crx_vmconfig::VmConfig::read(&written).unwrap());
        assert_eq!(seen.serial, crx_vmconfig::SerialOutput::Stdout);
        // What confined it is recorded beside: nothing but its filters.
        let rec = crate::jail::Confinement::load(d.path()).unwrap();
        assert!(
            rec.seccomp && rec.jail.is_none() && rec.cgroup.is_none(),
            "{rec:?}"
        );
        assert_eq!(rec.missing(), ["jail"]);
        let mode = std::fs::metadata(d.path().join(crate::jail::CONFINEMENT_FILE)).unwrap();
        assert_eq!(mode.permissions().mode() & 0o777, 0o600);
    }

    /// Jailed, the runtime starts crx-jailer with the VM's own directory, given to the
    /// sandbox's user, and the VMM sees its socket from the jail's root.
    #[test]
    fn a_jailed_vmm_is_started_through_the_jailer() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("seen");
        let boot_dir = d.path().join("boot");
        std::fs::create_dir(&boot_dir).unwrap();
        let mut vm = config("");
        vm.boot = boot(&boot_dir, b"kernel", b"initrd");
        vm.vmm = fake_vmm(d.path(), &out);
        vm.vmm_log = d.path().join("vmm.log");
        vm.console = d.path().join("console");
        vm.vsock_uds = d.path().join("vm/v.sock");
        // A stand-in jailer: records its arguments, then runs the VMM bound at /crx-vmm.
        let jailer = d.path().join("crx-jailer");
        std::fs::write(
            &jailer,
            format!(
                "#!/bin/sh\necho \"$@\" > {args}\nwhile [ \"$1\" != -- ]; do shift; done\n\
                 shift; shift; exec {vmm} \"$@\"\n",
                args = d.path().join("args").display(),
                vmm = vm.vmm.display()
            ),
        )
        .unwrap();
        crate::paths::set_mode(&jailer, 0o755).unwrap();
        let mut child = spawn_retrying(&vm, true, false);
        assert!(child.wait().unwrap().success());
        let args = std::fs::read_to_string(d.path().join("args")).unwrap();
        let vm_dir = d.path().join("vm");
        let uid = crate::jail::uid_for(&vm_dir);
        for want in [
            format!("--root {}", vm_dir.display()),
            format!("--uid {uid} --gid {uid}"),
            "--device kvm".into(),
            format!("--bind {}:/crx-vmm:ro", vm.vmm.display()),
            "-- /crx-vmm --config /proc/self/fd/".into(),
            // Started without its filters (CRX_SECCOMP=0): passed on, and recorded.
            " --no-seccomp".into(),
        ] {
            assert!(args.contains(&want), "{want:?} not in {args}");
        }
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(&vm_dir).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (uid, uid, 0o700));
        let seen = crx_vmconfig::VmConfig::read(&out.with_extension("toml")).unwrap();
        assert_eq!(seen.vsock.unwrap().uds_path, Path::new("/v.sock"));
        let rec = crate::jail::Confinement::load(d.path()).unwrap();
        let jail = rec.jail.as_ref().unwrap();
        assert_eq!((jail.uid, &jail.root), (uid, &vm_dir));
        assert_eq!(rec.missing(), ["seccomp"]);
        // This host's cgroup2 decides whether it got a cgroup; either way the record says.
        assert!(rec.cgroup.is_some() != rec.cgroup_off.is_some(), "{rec:?}");
        if let Some(cg) = &rec.cgroup {
            let _ = crate::jail::cgroup::remove_dir(&cg.path);
        }
    }

    /// Only a directory named `vm` is ever given to a jail's user.
    #[test]
    fn a_state_directory_is_never_a_jail() {
        let d = tempfile::tempdir().unwrap();
        let err = crate::jail::VmJail::prepare(d.path(), Path::new("/bin/true")).unwrap_err();
        assert!(matches!(err, RuntimeError::JailDir { .. }), "{err}");
    }

    /// A NIC's tap reaches crx-vmm as the descriptor it inherits (`tap_fd`: its number, kept
    /// across exec), with the container interface's MAC and MTU.
    #[test]
    fn nics_become_net_sections_over_inherited_taps() {
        let mut vm = config("");
        let tap: std::os::fd::OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&tap);
        vm.net.push(crate::net::Nic {
            tap: std::sync::Arc::new(tap),
            mac: "02:00:00:00:00:07".into(),
            mtu: 1400,
        });
        let c = vm.vmm_config();
        assert_eq!(
            c.net,
            [crx_vmconfig::NetConfig {
                tap: None,
                tap_fd: Some(fd),
                mac: Some("02:00:00:00:00:07".into()),
                mtu: Some(1400),
            }]
        );
        c.validate().unwrap();
    }

    #[test]
    fn a_config_file_reads_back_through_its_descriptor() {
        let vm = config("/img/rootfs.erofs");
        let f = ConfigFile::new(&vm.vmm_config()).unwrap();
        let seen = crx_vmconfig::VmConfig::read(&f.vmm_path()).unwrap();
        assert_eq!(seen, vm.vmm_config());
    }
}
