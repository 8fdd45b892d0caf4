//! The VM description `crx-vmm --config vm.toml` reads: one typed struct both sides of the
//! process boundary use. The runtime builds a [`VmConfig`] and writes it
//! ([`VmConfig::write_private`]); crx-vmm reads it ([`VmConfig::read`]) and checks it
//! ([`VmConfig::validate`]) before any VM is created.
//!
//! Adding a device option means adding a field to its section struct (with a serde default, so
//! older files still parse), checking it in that section's `validate`, and using it in crx-vmm.
//! A new device kind is a new section: a struct, an `Option` or `Vec` field of [`VmConfig`], and a
//! line in [`VmConfig::validate`].

mod devices;
mod error;
mod net;
mod serial;
mod validate;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use devices::{DiskConfig, FsConfig, VsockConfig, MAX_FS_TAG_LEN};
pub use error::ConfigError;
pub use net::{parse_mac, NetConfig, MAX_TAP_NAME_LEN, MIN_MTU};
pub use serial::SerialOutput;

/// Kernel command line used when the configuration gives none.
pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=1 pci=off nomodule i8042.noaux i8042.nomux i8042.dumbkbd";

/// Largest guest RAM accepted (1 TiB): a typo guard, not a capacity claim.
pub const MAX_MEMORY_MIB: u64 = 1 << 20;
/// Most vCPUs: APIC ids are one byte in the MP table and 0xff is broadcast.
pub const MAX_VCPUS: u8 = 254;

/// One microVM: its machine size, what it boots, and its devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Guest RAM in MiB (required).
    pub memory_mib: u64,
    /// Number of vCPUs.
    #[serde(default = "one_vcpu")]
    pub vcpus: u8,
    /// ELF vmlinux (PVH or 64-bit entry) or bzImage. Required: empty means "not given" (a
    /// front-end such as `crx vm run` fills in the project's kernel), which validation refuses.
    #[serde(default, skip_serializing_if = "path_is_empty")]
    pub kernel: PathBuf,
    /// Initrds laid one after another in guest memory, in this order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub initrds: Vec<PathBuf>,
    /// Kernel command line (before the device and init arguments).
    #[serde(default = "default_cmdline")]
    pub cmdline: String,
    /// Appended to the command line, e.g. `crxrun=/bin/x`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_args: Option<String>,
    /// Log guest writes to the boot-timer port.
    #[serde(default)]
    pub boot_timer: bool,
    /// Copy the kernel and initrds into guest RAM instead of mapping them copy-on-write.
    #[serde(default)]
    pub copy_boot_files: bool,
    /// Serial console destination (`[serial]`).
    #[serde(default)]
    pub serial: SerialOutput,
    /// virtio-blk disks (`[[disks]]`): `/dev/vda`, `/dev/vdb`, ... in this order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<DiskConfig>,
    /// The virtio-vsock device (`[vsock]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<VsockConfig>,
    /// virtio-fs devices (`[[fs]]`, vhost-user). With any, guest RAM is a shared memfd and the
    /// boot files are copied, not mapped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fs: Vec<FsConfig>,
    /// virtio-net devices (`[[net]]`): `eth0`, `eth1`, ... in this order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub net: Vec<NetConfig>,
}

fn one_vcpu() -> u8 {
    1
}

fn default_cmdline() -> String {
    DEFAULT_CMDLINE.to_owned()
}

fn path_is_empty(p: &Path) -> bool {
    p.as_os_str().is_empty()
}

impl VmConfig {
    /// A VM of `memory_mib` MiB booting `kernel`, one vCPU, the default command line, the
    /// console on stdout and no devices.
    pub fn new(memory_mib: u64, kernel: impl Into<PathBuf>) -> Self {
        VmConfig {
            memory_mib,
            vcpus: 1,
            kernel: kernel.into(),
            initrds: Vec::new(),
            cmdline: default_cmdline(),
            init_args: None,
            boot_timer: false,
            copy_boot_files: false,
            serial: SerialOutput::Stdout,
            disks: Vec::new(),
            vsock: None,
            fs: Vec::new(),
            net: Vec::new(),
        }
    }

    /// Parses TOML text (not validated: see [`VmConfig::validate`]).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Self::parse(text, Path::new("<inline>"))
    }

    /// Reads and parses the file at `path` (not validated).
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    /// The TOML text of this configuration ([`VmConfig::from_toml`] reads it back equal).
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        toml::to_string(self).map_err(|e| ConfigError::Serialize(Box::new(e)))
    }

    /// Writes the TOML to `path` atomically (a private temporary file in the same directory,
    /// renamed over it): readable by its owner only (0600), never seen half-written.
    pub fn write_private(&self, path: &Path) -> Result<(), ConfigError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let text = self.to_toml()?;
        let err = |source| ConfigError::WriteFile {
            path: path.to_owned(),
            source,
        };
        let mut tmp_name = path.as_os_str().to_owned();
        tmp_name.push(format!(".tmp{}", std::process::id()));
        let tmp = PathBuf::from(tmp_name);
        // A stale temporary file (a crash of a process that had this pid) is replaced.
        let _ = std::fs::remove_file(&tmp);
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| {
                f.write_all(text.as_bytes())?;
                f.sync_data()
            })
            .and_then(|()| std::fs::rename(&tmp, path));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written.map_err(err)
    }

    /// Whether the kernel and initrds get mapped copy-on-write into guest RAM (not copied):
    /// unless `copy_boot_files`, or a virtio-fs device needs RAM shared with its backend.
    pub fn maps_boot_files(&self) -> bool {
        !self.copy_boot_files && self.fs.is_empty()
    }
}

#[cfg(test)]
mod tests;
