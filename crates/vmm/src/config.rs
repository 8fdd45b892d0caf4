//! The VM configuration: a TOML file, overridden by command-line flags, validated before any
//! VM is created.

use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Kernel command line used when the configuration gives none.
pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=1 pci=off nomodule i8042.noaux i8042.nomux i8042.dumbkbd";

/// Largest guest RAM accepted (1 TiB): a typo guard, not a capacity claim.
pub const MAX_MEMORY_MIB: u64 = 1 << 20;
/// Most vCPUs: APIC ids are one byte in the MP table and 0xff is broadcast.
pub const MAX_VCPUS: u8 = 254;

/// A configuration error; `field` names the offending configuration key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}")]
    ReadFile {
        /// The path of the config file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The TOML did not parse or had unknown keys.
    #[error("cannot parse config file {path}")]
    Parse {
        /// The path of the config file.
        path: PathBuf,
        /// The parse error (names the key and line).
        #[source]
        source: Box<toml::de::Error>,
    },
    /// A required key is absent from both the file and the flags.
    #[error("config field `{field}` is required (set it in the config file or with --{flag})")]
    Missing {
        /// The config key.
        field: &'static str,
        /// The command-line flag that also sets it.
        flag: &'static str,
    },
    /// A value is out of range or inconsistent with another.
    #[error("config field `{field}`: {reason}")]
    Invalid {
        /// The config key (with an index for list entries, e.g. `disks[1].path`).
        field: String,
        /// What is wrong and what to do.
        reason: String,
    },
}

/// Where the guest's 8250 serial console goes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SerialOutput {
    /// The VMM's standard output.
    #[default]
    Stdout,
    /// Appended to a file (created if missing).
    File(PathBuf),
    /// Discarded (the device still exists, so the guest does not block).
    Off,
}

/// One virtio-blk disk.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// Host path of the raw disk image.
    pub path: PathBuf,
    /// Open the image read-only and refuse guest writes.
    #[serde(default)]
    pub read_only: bool,
}

/// The vsock device, Firecracker-style hybrid: the host side is a Unix socket.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// The guest's context id (3 or more).
    pub guest_cid: u32,
    /// The Unix socket the VMM listens on.
    pub uds_path: PathBuf,
}

/// One virtio-fs device whose requests a vhost-user backend (virtiofsd) serves.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    /// The tag the guest mounts (`mount -t virtiofs TAG DIR`): 1 to 36 bytes.
    pub tag: String,
    /// The backend's listening vhost-user socket (it must exist when the VMM starts).
    pub socket: PathBuf,
}

impl FsConfig {
    /// Parses the `--fs` flag: `TAG=SOCKET`.
    pub fn parse_flag(s: &str) -> Result<Self, ConfigError> {
        match s.split_once('=') {
            Some((tag, socket)) if !socket.is_empty() => Ok(FsConfig {
                tag: tag.to_owned(),
                socket: PathBuf::from(socket),
            }),
            _ => Err(invalid("fs", format!("`{s}` is not TAG=SOCKET"))),
        }
    }
}

/// Longest virtio-fs tag (the config space field).
pub const MAX_FS_TAG_LEN: usize = 36;

/// The `[serial]` table as written in TOML.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SerialToml {
    /// `stdout`, `file` or `off`.
    output: Option<String>,
    /// Required with `output = "file"`, refused otherwise.
    path: Option<PathBuf>,
}

/// The config file as written; every field optional so flags can fill gaps.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    memory_mib: Option<u64>,
    vcpus: Option<u8>,
    kernel: Option<PathBuf>,
    #[serde(default)]
    initrds: Vec<PathBuf>,
    cmdline: Option<String>,
    init_args: Option<String>,
    #[serde(default)]
    disks: Vec<DiskConfig>,
    vsock: Option<VsockConfig>,
    #[serde(default)]
    fs: Vec<FsConfig>,
    serial: Option<SerialToml>,
    boot_timer: Option<bool>,
    copy_boot_files: Option<bool>,
}

/// Values given on the command line; each one that is set replaces the file's.
/// List flags (`initrds`, `disks`) replace the file's whole list when non-empty.
#[derive(Debug, Clone, Default)]
pub struct ConfigOverrides {
    /// `--memory-mib`.
    pub memory_mib: Option<u64>,
    /// `--vcpus`.
    pub vcpus: Option<u8>,
    /// `--kernel`.
    pub kernel: Option<PathBuf>,
    /// `--initrd` (repeatable, in order).
    pub initrds: Vec<PathBuf>,
    /// `--cmdline`.
    pub cmdline: Option<String>,
    /// `--init-args`.
    pub init_args: Option<String>,
    /// `--disk` (repeatable).
    pub disks: Vec<DiskConfig>,
    /// `--vsock-cid`.
    pub vsock_cid: Option<u32>,
    /// `--vsock-uds`.
    pub vsock_uds: Option<PathBuf>,
    /// `--fs` (repeatable).
    pub fs: Vec<FsConfig>,
    /// `--serial`.
    pub serial: Option<SerialOutput>,
    /// `--boot-timer` / `--no-boot-timer`.
    pub boot_timer: Option<bool>,
    /// `--copy-boot-files`.
    pub copy_boot_files: Option<bool>,
}

/// A complete, validated VM configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// Number of vCPUs.
    pub vcpus: u8,
    /// ELF vmlinux (PVH or 64-bit entry) or bzImage.
    pub kernel: PathBuf,
    /// Initrds laid one after another in guest memory, in this order.
    pub initrds: Vec<PathBuf>,
    /// Kernel command line (before the init arguments).
    pub cmdline: String,
    /// Appended to the command line, e.g. `crxrun=/bin/x`.
    pub init_args: Option<String>,
    /// virtio-blk disks.
    pub disks: Vec<DiskConfig>,
    /// virtio-vsock device.
    pub vsock: Option<VsockConfig>,
    /// virtio-fs devices (vhost-user). With any, guest RAM is a shared memfd and the boot
    /// files are copied, not mapped (see README).
    pub fs: Vec<FsConfig>,
    /// Serial console destination.
    pub serial: SerialOutput,
    /// Log guest writes to the boot-timer port.
    pub boot_timer: bool,
    /// Copy the kernel and initrds into guest RAM instead of mapping them copy-on-write.
    pub copy_boot_files: bool,
}

impl SerialOutput {
    /// Parses the `--serial` flag: `stdout`, `off` or `file:PATH`.
    pub fn parse_flag(s: &str) -> Result<Self, ConfigError> {
        match s {
            "stdout" => Ok(SerialOutput::Stdout),
            "off" => Ok(SerialOutput::Off),
            _ => match s.strip_prefix("file:") {
                Some(p) if !p.is_empty() => Ok(SerialOutput::File(PathBuf::from(p))),
                _ => Err(invalid(
                    "serial",
                    format!("`{s}` is not one of stdout, off, file:PATH"),
                )),
            },
        }
    }
}

impl DiskConfig {
    /// Parses the `--disk` flag: `PATH` or `PATH:ro`.
    pub fn parse_flag(s: &str) -> Self {
        match s.strip_suffix(":ro") {
            Some(p) => DiskConfig {
                path: PathBuf::from(p),
                read_only: true,
            },
            None => DiskConfig {
                path: PathBuf::from(s),
                read_only: false,
            },
        }
    }
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

fn serial_from_toml(s: SerialToml) -> Result<SerialOutput, ConfigError> {
    match (s.output.as_deref(), s.path) {
        (None | Some("stdout"), None) => Ok(SerialOutput::Stdout),
        (Some("off"), None) => Ok(SerialOutput::Off),
        (Some("file") | None, Some(p)) => Ok(SerialOutput::File(p)),
        (Some("file"), None) => Err(invalid("serial.path", "required with output = \"file\"")),
        (Some(o @ ("stdout" | "off")), Some(_)) => Err(invalid(
            "serial.path",
            format!("overlaps with output = \"{o}\": set output = \"file\" or drop path"),
        )),
        (Some(o), _) => Err(invalid(
            "serial.output",
            format!("`{o}` is not one of stdout, file, off"),
        )),
    }
}

impl VmConfig {
    /// Reads `path` (if any), applies `overrides`, fills defaults and validates.
    pub fn load(path: Option<&Path>, overrides: ConfigOverrides) -> Result<Self, ConfigError> {
        let file = match path {
            Some(p) => {
                let text = fs::read_to_string(p).map_err(|source| ConfigError::ReadFile {
                    path: p.to_owned(),
                    source,
                })?;
                Self::parse_file(&text).map_err(|source| ConfigError::Parse {
                    path: p.to_owned(),
                    source: Box::new(source),
                })?
            }
            None => FileConfig::default(),
        };
        let cfg = Self::merge(file, overrides)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses TOML text and merges it with `overrides`, then validates.
    pub fn from_toml(text: &str, overrides: ConfigOverrides) -> Result<Self, ConfigError> {
        let file = Self::parse_file(text).map_err(|source| ConfigError::Parse {
            path: PathBuf::from("<inline>"),
            source: Box::new(source),
        })?;
        let cfg = Self::merge(file, overrides)?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn parse_file(text: &str) -> Result<FileConfig, toml::de::Error> {
        toml::from_str(text)
    }

    fn merge(f: FileConfig, o: ConfigOverrides) -> Result<Self, ConfigError> {
        let serial = match (o.serial, f.serial) {
            (Some(s), _) => s,
            (None, Some(s)) => serial_from_toml(s)?,
            (None, None) => SerialOutput::Stdout,
        };
        let vsock = match (o.vsock_cid, o.vsock_uds, f.vsock) {
            (None, None, v) => v,
            (Some(cid), Some(uds), _) => Some(VsockConfig {
                guest_cid: cid,
                uds_path: uds,
            }),
            (Some(cid), None, Some(v)) => Some(VsockConfig {
                guest_cid: cid,
                ..v
            }),
            (None, Some(uds), Some(v)) => Some(VsockConfig { uds_path: uds, ..v }),
            (Some(_), None, None) => {
                return Err(invalid("vsock.uds_path", "--vsock-cid needs --vsock-uds"))
            }
            (None, Some(_), None) => {
                return Err(invalid("vsock.guest_cid", "--vsock-uds needs --vsock-cid"))
            }
        };
        Ok(VmConfig {
            memory_mib: o.memory_mib.or(f.memory_mib).ok_or(ConfigError::Missing {
                field: "memory_mib",
                flag: "memory-mib",
            })?,
            vcpus: o.vcpus.or(f.vcpus).unwrap_or(1),
            kernel: o.kernel.or(f.kernel).ok_or(ConfigError::Missing {
                field: "kernel",
                flag: "kernel",
            })?,
            initrds: if o.initrds.is_empty() {
                f.initrds
            } else {
                o.initrds
            },
            cmdline: o
                .cmdline
                .or(f.cmdline)
                .unwrap_or_else(|| DEFAULT_CMDLINE.to_owned()),
            init_args: o.init_args.or(f.init_args),
            disks: if o.disks.is_empty() { f.disks } else { o.disks },
            vsock,
            fs: if o.fs.is_empty() { f.fs } else { o.fs },
            serial,
            boot_timer: o.boot_timer.or(f.boot_timer).unwrap_or(false),
            copy_boot_files: o.copy_boot_files.or(f.copy_boot_files).unwrap_or(false),
        })
    }

    /// Whether the kernel and initrds get mapped copy-on-write into guest RAM (not copied):
    /// unless `copy_boot_files`, or a virtio-fs device needs RAM shared with its backend.
    pub fn maps_boot_files(&self) -> bool {
        !self.copy_boot_files && self.fs.is_empty()
    }

    /// Checks ranges, file existence and overlaps. Called by [`VmConfig::load`]; public so a
    /// caller that builds a `VmConfig` by hand can check it too.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.memory_mib == 0 {
            return Err(invalid("memory_mib", "must be at least 1"));
        }
        if self.memory_mib > MAX_MEMORY_MIB {
            return Err(invalid(
                "memory_mib",
                format!("{} is over the limit of {MAX_MEMORY_MIB}", self.memory_mib),
            ));
        }
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(invalid(
                "vcpus",
                format!("{} is not in 1..={MAX_VCPUS}", self.vcpus),
            ));
        }
        check_file("kernel", &self.kernel)?;
        for (i, p) in self.initrds.iter().enumerate() {
            check_file(&format!("initrds[{i}]"), p)?;
        }
        for (i, d) in self.disks.iter().enumerate() {
            check_file(&format!("disks[{i}].path"), &d.path)?;
            // The same file by (device, inode), whatever its path: a symbolic or hard link.
            let id = file_id(&d.path);
            // A disk aliasing a boot file mapped copy-on-write into guest RAM would let disk
            // writes show through the guest's not-yet-copied pages (see README).
            let boot_files = std::iter::once(&self.kernel).chain(&self.initrds);
            for b in boot_files {
                if id.is_some() && file_id(b) == id {
                    return Err(invalid(
                        format!("disks[{i}].path"),
                        format!(
                            "{} is also the kernel or an initrd: use a copy",
                            d.path.display()
                        ),
                    ));
                }
            }
            for (j, e) in self.disks[..i].iter().enumerate() {
                if id.is_some() && file_id(&e.path) == id {
                    return Err(invalid(
                        format!("disks[{i}].path"),
                        format!("{} is also disks[{j}]", d.path.display()),
                    ));
                }
            }
        }
        if let Some(v) = &self.vsock {
            if v.guest_cid < 3 {
                return Err(invalid(
                    "vsock.guest_cid",
                    format!("{} is reserved (0-2): use 3 or more", v.guest_cid),
                ));
            }
            check_parent_dir("vsock.uds_path", &v.uds_path)?;
            if v.uds_path.exists() {
                return Err(invalid(
                    "vsock.uds_path",
                    format!(
                        "{} already exists (remove it or pick another path)",
                        v.uds_path.display()
                    ),
                ));
            }
            if self.disks.iter().any(|d| d.path == v.uds_path) {
                return Err(invalid("vsock.uds_path", "overlaps with a disk path"));
            }
        }
        for (i, f) in self.fs.iter().enumerate() {
            if f.tag.is_empty() || f.tag.len() > MAX_FS_TAG_LEN || f.tag.contains('\0') {
                return Err(invalid(
                    format!("fs[{i}].tag"),
                    format!(
                        "{:?} must be 1 to {MAX_FS_TAG_LEN} bytes without NUL",
                        f.tag
                    ),
                ));
            }
            if self.fs[..i].iter().any(|e| e.tag == f.tag) {
                return Err(invalid(
                    format!("fs[{i}].tag"),
                    format!("{:?} is used twice", f.tag),
                ));
            }
            if let Some(j) = self.fs[..i].iter().position(|e| e.socket == f.socket) {
                return Err(invalid(
                    format!("fs[{i}].socket"),
                    format!(
                        "{} is also fs[{j}].socket: one backend serves one device (start one \
                         virtiofsd per directory)",
                        f.socket.display()
                    ),
                ));
            }
            use std::os::unix::fs::FileTypeExt;
            match fs::metadata(&f.socket) {
                Ok(m) if m.file_type().is_socket() => {}
                Ok(_) => {
                    return Err(invalid(
                        format!("fs[{i}].socket"),
                        format!("{} is not a Unix socket", f.socket.display()),
                    ))
                }
                Err(e) => {
                    return Err(invalid(
                        format!("fs[{i}].socket"),
                        format!(
                            "{}: {e} (start the vhost-user backend, e.g. virtiofsd, first)",
                            f.socket.display()
                        ),
                    ))
                }
            }
        }
        if let SerialOutput::File(p) = &self.serial {
            check_parent_dir("serial.path", p)?;
            let id = file_id(p);
            let same_as_input = std::iter::once(&self.kernel)
                .chain(&self.initrds)
                .chain(self.disks.iter().map(|d| &d.path))
                .any(|q| q == p || (id.is_some() && file_id(q) == id));
            if same_as_input {
                return Err(invalid(
                    "serial.path",
                    "overlaps with the kernel, an initrd or a disk: the console would overwrite it",
                ));
            }
        }
        if self.cmdline.contains('\0') {
            return Err(invalid("cmdline", "contains a NUL byte"));
        }
        if let Some(a) = &self.init_args {
            if a.contains('\0') {
                return Err(invalid("init_args", "contains a NUL byte"));
            }
        }
        Ok(())
    }
}

/// The file `p` names, as (device, inode) after following symbolic links; `None` when it
/// cannot be read.
fn file_id(p: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

fn check_file(field: &str, p: &Path) -> Result<(), ConfigError> {
    match fs::metadata(p) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(invalid(
            field,
            format!("{} is not a regular file", p.display()),
        )),
        Err(e) => Err(invalid(field, format!("{}: {e}", p.display()))),
    }
}

fn check_parent_dir(field: &str, p: &Path) -> Result<(), ConfigError> {
    let parent = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => return Ok(()),
    };
    if parent.is_dir() {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("directory {} does not exist", parent.display()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn tmpfile(dir: &tempfile::TempDir, name: &str) -> PathBuf {
        let p = dir.path().join(name);
        fs::File::create(&p).unwrap().write_all(b"x").unwrap();
        p
    }

    fn field_of(e: ConfigError) -> String {
        match e {
            ConfigError::Invalid { field, .. } => field,
            ConfigError::Missing { field, .. } => field.to_owned(),
            other => panic!("unexpected error {other}"),
        }
    }

    #[test]
    fn full_file_parses() {
        let d = tempfile::tempdir().unwrap();
        let k = tmpfile(&d, "vmlinux");
        let i1 = tmpfile(&d, "a.cpio");
        let i2 = tmpfile(&d, "b.cpio");
        let disk = tmpfile(&d, "disk.img");
        let text = format!(
            r#"
memory_mib = 256
vcpus = 2
kernel = "{}"
initrds = ["{}", "{}"]
init_args = "crxrun=/bin/x"
boot_timer = true
[[disks]]
path = "{}"
read_only = true
[vsock]
guest_cid = 3
uds_path = "{}"
[serial]
output = "off"
"#,
            k.display(),
            i1.display(),
            i2.display(),
            disk.display(),
            d.path().join("v.sock").display()
        );
        let c = VmConfig::from_toml(&text, ConfigOverrides::default()).unwrap();
        assert_eq!(c.memory_mib, 256);
        assert_eq!(c.vcpus, 2);
        assert_eq!(c.initrds, vec![i1, i2]);
        assert_eq!(c.init_args.as_deref(), Some("crxrun=/bin/x"));
        assert!(c.disks[0].read_only);
        assert_eq!(c.vsock.unwrap().guest_cid, 3);
        assert_eq!(c.serial, SerialOutput::Off);
        assert!(c.boot_timer);
        assert_eq!(c.cmdline, DEFAULT_CMDLINE);
    }

    #[test]
    fn flags_override_file() {
        let d = tempfile::tempdir().unwrap();
        let k = tmpfile(&d, "vmlinux");
        let text = format!("memory_mib = 64\nkernel = \"{}\"\n", k.display());
        let o = ConfigOverrides {
            memory_mib: Some(128),
            vcpus: Some(4),
            serial: Some(SerialOutput::parse_flag("file:/tmp/x.log").unwrap()),
            boot_timer: Some(true),
            ..Default::default()
        };
        let c = VmConfig::from_toml(&text, o).unwrap();
        assert_eq!(c.memory_mib, 128);
        assert_eq!(c.vcpus, 4);
        assert_eq!(c.serial, SerialOutput::File("/tmp/x.log".into()));
        assert!(c.boot_timer);
    }

    #[test]
    fn zero_memory_and_vcpus_name_the_field() {
        let d = tempfile::tempdir().unwrap();
        let k = tmpfile(&d, "vmlinux");
        let t = format!("memory_mib = 0\nkernel = \"{}\"\n", k.display());
        let e = VmConfig::from_toml(&t, ConfigOverrides::default()).unwrap_err();
        assert_eq!(field_of(e), "memory_mib");
        let t = format!("memory_mib = 8\nvcpus = 0\nkernel = \"{}\"\n", k.display());
        let e = VmConfig::from_toml(&t, ConfigOverrides::default()).unwrap_err();
        assert_eq!(field_of(e), "vcpus");
    }

    #[test]
    fn missing_files_name_the_field() {
        let t = "memory_mib = 8\nkernel = \"/nonexistent/vmlinux\"\n";
        let e = VmConfig::from_toml(t, ConfigOverrides::default()).unwrap_err();
        assert!(e.to_string().contains("`kernel`"), "{e}");
        let d = tempfile::tempdir().unwrap();
        let k = tmpfile(&d, "vmlinux");
        let t = format!(
            "memory_mib = 8\nkernel = \"{}\"\ninitrds = [\"{}\", \"/nope.cpio\"]\n",
            k.display(),
            k.display()
        );
        let e = VmConfig::from_toml(&t, ConfigOverrides::default()).unwrap_err();
        assert_eq!(field_of(e), "initrds[1]");
        let t = format!(
            "memory_mib = 8\nkernel = \"{}\"\n[[disks]]\npath = \"/nope.img\"\n",
            k.display()
        );
        let e = VmConfig::from_toml(&t, ConfigOverrides::default()).unwrap_err();
        assert_eq!(field_of(e), "disks[0].path");
    }

    #[test]
    fn missing_required_field() {
        let e = VmConfig::from_toml("kernel = \"/x\"", ConfigOverrides::default()).unwrap_err();
        assert_eq!(field_of(e), "memory_mib");
        let e = VmConfig::from_toml("memory_mib = 4", ConfigOverrides::default()).unwrap_err();
        assert_eq!(field_of(e), "kernel");
    }

    #[test]
    fn overlapping_options_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let k = tmpfile(&d, "vmlinux");
        let disk = tmpfile(&d, "disk.img");
        let base = format!("memory_mib = 8\nkernel = \"{}\"\n", k.display());
        let t = format!("{base}[serial]\noutput = \"stdout\"\npath = \"/tmp/s.log\"\n");
        let e = VmConfig::from_toml(&t, ConfigOverrides::default()).unwrap_err();
        assert_eq!(field_of(e), "serial.path");
        let t = format!(
            "{base}[[disks]]\npath = \"{0}\"\n[[disks]]\npath = \"{0}\"\n",
            disk.display()
        );
        let e = VmConfig::from_toml(&t, ConfigOverrides::default()).unwrap_err();
        assert_eq!(field_of(e), "disks[1].path");
        let t = format!(
            "{base}[[disks]]\npath = \"{}\"\nread_only = true\n",
            k.display()
        );
        let e = VmConfig::from_toml(&t, ConfigOverrides::default()).unwrap_err();
        assert_eq!(field_of(e), "disks[0].path");
        let t = format!("{base}[serial]\npath = \"{}\"\n", k.display());
        let e = VmConfig::from_toml(&t, ConfigOverrides::default()).unwrap_err();
        assert_eq!(field_of(e), "serial.path");
        let o = ConfigOverrides {
            vsock_cid: Some(5),
            ..Default::default()
        };
        let e = VmConfig::from_toml(&base, o).unwrap_err();
        assert_eq!(field_of(e), "vsock.uds_path");
    }

    #[test]
    fn a_disk_that_is_a_boot_file_or_another_disk_by_any_name_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let k = tmpfile(&d, "vmlinux");
        let i = tmpfile(&d, "base.cpio");
        let disk = tmpfile(&d, "disk.img");
        let (k_link, i_link, disk_link) = (
            d.path().join("k-link.img"),
            d.path().join("i-link.img"),
            d.path().join("disk-link.img"),
        );
        fs::hard_link(&k, &k_link).unwrap();
        fs::hard_link(&i, &i_link).unwrap();
        fs::hard_link(&disk, &disk_link).unwrap();
        let base = format!(
            "memory_mib = 8\nkernel = \"{}\"\ninitrds = [\"{}\"]\n",
            k.display(),
            i.display()
        );
        for (links, field) in [
            (vec![&k_link], "disks[0].path"),
            (vec![&i_link], "disks[0].path"),
            (vec![&disk, &disk_link], "disks[1].path"),
        ] {
            let mut t = base.clone();
            for l in links {
                t.push_str(&format!("[[disks]]\npath = \"{}\"\n", l.display()));
            }
            let e = VmConfig::from_toml(&t, ConfigOverrides::default()).unwrap_err();
            assert_eq!(field_of(e), field, "{t}");
        }
        // A serial file that is a hard link of the kernel would be written into it.
        let t = format!("{base}[serial]\npath = \"{}\"\n", k_link.display());
        let e = VmConfig::from_toml(&t, ConfigOverrides::default()).unwrap_err();
        assert_eq!(field_of(e), "serial.path");
        // A distinct file is fine.
        let t = format!("{base}[[disks]]\npath = \"{}\"\n", disk.display());
        VmConfig::from_toml(&t, ConfigOverrides::default()).unwrap();
    }

    #[test]
    fn bad_values_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let k = tmpfile(&d, "vmlinux");
        let base = format!("memory_mib = 8\nkernel = \"{}\"\n", k.display());
        let t = format!("{base}[vsock]\nguest_cid = 2\nuds_path = \"/tmp/crx-x.sock\"\n");
        let e = VmConfig::from_toml(&t, ConfigOverrides::default()).unwrap_err();
        assert_eq!(field_of(e), "vsock.guest_cid");
        let t = format!("{base}bogus = 1\n");
        assert!(matches!(
            VmConfig::from_toml(&t, ConfigOverrides::default()),
            Err(ConfigError::Parse { .. })
        ));
        assert!(SerialOutput::parse_flag("tty").is_err());
        assert_eq!(
            DiskConfig::parse_flag("/a.img:ro"),
            DiskConfig {
                path: "/a.img".into(),
                read_only: true
            }
        );
    }

    #[test]
    fn fs_entries_parse_and_bad_ones_name_the_field() {
        let d = tempfile::tempdir().unwrap();
        let k = tmpfile(&d, "vmlinux");
        let sock = d.path().join("fs.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let base = format!("memory_mib = 8\nkernel = \"{}\"\n", k.display());
        let entry = |tag: &str, socket: &Path| {
            format!(
                "[[fs]]\ntag = \"{tag}\"\nsocket = \"{}\"\n",
                socket.display()
            )
        };
        let sock2 = d.path().join("fs2.sock");
        let _listener2 = std::os::unix::net::UnixListener::bind(&sock2).unwrap();
        let t = format!("{base}{}{}", entry("root", &sock), entry("data", &sock2));
        let cfg = VmConfig::from_toml(&t, ConfigOverrides::default()).unwrap();
        assert!(
            !cfg.maps_boot_files(),
            "RAM shared with a backend: boot files are copied"
        );
        assert!(VmConfig::from_toml(&base, ConfigOverrides::default())
            .unwrap()
            .maps_boot_files());
        assert_eq!(
            cfg.fs,
            [
                FsConfig {
                    tag: "root".into(),
                    socket: sock.clone()
                },
                FsConfig {
                    tag: "data".into(),
                    socket: sock2.clone()
                }
            ]
        );
        // The flag replaces the file's list.
        let o = ConfigOverrides {
            fs: vec![FsConfig::parse_flag(&format!("x={}", sock.display())).unwrap()],
            ..Default::default()
        };
        let cfg = VmConfig::from_toml(&t, o).unwrap();
        assert_eq!(cfg.fs.len(), 1);
        assert_eq!(cfg.fs[0].tag, "x");
        assert!(FsConfig::parse_flag("no-socket").is_err());
        assert!(FsConfig::parse_flag("tag=").is_err());

        let cases = [
            (entry("", &sock), "fs[0].tag"),
            (entry(&"t".repeat(37), &sock), "fs[0].tag"),
            (
                format!("{}{}", entry("a", &sock), entry("a", &sock)),
                "fs[1].tag",
            ),
            (entry("a", &d.path().join("missing.sock")), "fs[0].socket"),
            (
                format!("{}{}", entry("a", &sock), entry("b", &sock)),
                "fs[1].socket",
            ),
            (entry("a", &k), "fs[0].socket"),
        ];
        for (text, field) in cases {
            let e = VmConfig::from_toml(&format!("{base}{text}"), ConfigOverrides::default())
                .unwrap_err();
            assert_eq!(field_of(e), field, "{text}");
        }
        let t = format!(
            "{base}[[fs]]\ntag = \"a\"\nsocket = \"{}\"\nbogus = 1\n",
            sock.display()
        );
        assert!(matches!(
            VmConfig::from_toml(&t, ConfigOverrides::default()),
            Err(ConfigError::Parse { .. })
        ));
        // 36 bytes is the limit.
        let t = format!("{base}{}", entry(&"t".repeat(36), &sock));
        assert!(VmConfig::from_toml(&t, ConfigOverrides::default()).is_ok());
    }
}
