//! [`VmConfig::validate`]: each section, then what sections must not share.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{invalid, ConfigError};
use crate::{SerialOutput, VmConfig, MAX_MEMORY_MIB, MAX_VCPUS};

impl VmConfig {
    /// Checks ranges, file existence and overlaps, naming the offending field. crx-vmm calls
    /// it before creating anything; a front-end may call it to fail early.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_machine()?;
        self.validate_boot()?;
        for (i, d) in self.disks.iter().enumerate() {
            d.validate(i)?;
        }
        self.validate_disks_distinct()?;
        if let Some(v) = &self.vsock {
            v.validate()?;
            if self.disks.iter().any(|d| d.path == v.uds_path) {
                return Err(invalid("vsock.uds_path", "overlaps with a disk path"));
            }
        }
        for (i, f) in self.fs.iter().enumerate() {
            f.validate(i)?;
        }
        self.validate_fs_distinct()?;
        for (i, n) in self.net.iter().enumerate() {
            n.validate(i)?;
        }
        crate::net::validate_distinct(&self.net)?;
        self.validate_serial()
    }

    /// `memory_mib` and `vcpus`.
    fn validate_machine(&self) -> Result<(), ConfigError> {
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
        Ok(())
    }

    /// The kernel, the initrds and the command line.
    fn validate_boot(&self) -> Result<(), ConfigError> {
        if self.kernel.as_os_str().is_empty() {
            return Err(ConfigError::Missing { field: "kernel" });
        }
        check_file("kernel", &self.kernel)?;
        for (i, p) in self.initrds.iter().enumerate() {
            check_file(&format!("initrds[{i}]"), p)?;
        }
        if self.cmdline.contains('\0') {
            return Err(invalid("cmdline", "contains a NUL byte"));
        }
        if self.init_args.as_deref().is_some_and(|a| a.contains('\0')) {
            return Err(invalid("init_args", "contains a NUL byte"));
        }
        Ok(())
    }

    /// No disk is a boot file or another disk, by (device, inode): whatever its path.
    fn validate_disks_distinct(&self) -> Result<(), ConfigError> {
        for (i, d) in self.disks.iter().enumerate() {
            let Some(id) = file_id(&d.path) else { continue };
            // A disk aliasing a boot file mapped copy-on-write into guest RAM would let disk
            // writes show through the guest's not-yet-copied pages (see crates/vmm/README.md).
            if self.boot_files().any(|b| file_id(b) == Some(id)) {
                return Err(invalid(
                    format!("disks[{i}].path"),
                    format!(
                        "{} is also the kernel or an initrd: use a copy",
                        d.path.display()
                    ),
                ));
            }
            if let Some(j) = self.disks[..i]
                .iter()
                .position(|e| file_id(&e.path) == Some(id))
            {
                return Err(invalid(
                    format!("disks[{i}].path"),
                    format!("{} is also disks[{j}]", d.path.display()),
                ));
            }
        }
        Ok(())
    }

    /// Tags and sockets are each used once (one backend serves one device).
    fn validate_fs_distinct(&self) -> Result<(), ConfigError> {
        for (i, f) in self.fs.iter().enumerate() {
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
        }
        Ok(())
    }

    /// A console file must be creatable and must not be an input the console would overwrite.
    fn validate_serial(&self) -> Result<(), ConfigError> {
        let SerialOutput::File(p) = &self.serial else {
            return Ok(());
        };
        check_parent_dir("serial.path", p)?;
        let id = file_id(p);
        let same_as_input = self
            .boot_files()
            .chain(self.disks.iter().map(|d| &d.path))
            .any(|q| q == p || (id.is_some() && file_id(q) == id));
        if same_as_input {
            return Err(invalid(
                "serial.path",
                "overlaps with the kernel, an initrd or a disk: the console would overwrite it",
            ));
        }
        Ok(())
    }

    /// The kernel, then the initrds.
    fn boot_files(&self) -> impl Iterator<Item = &PathBuf> {
        std::iter::once(&self.kernel).chain(&self.initrds)
    }
}

/// The file `p` names, as (device, inode) after following symbolic links; `None` when it
/// cannot be read.
fn file_id(p: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

/// `p` is a regular file.
pub(crate) fn check_file(field: &str, p: &Path) -> Result<(), ConfigError> {
    match fs::metadata(p) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(invalid(
            field,
            format!("{} is not a regular file", p.display()),
        )),
        Err(e) => Err(invalid(field, format!("{}: {e}", p.display()))),
    }
}

/// `p` is a Unix socket (a backend listening on it).
pub(crate) fn check_socket(field: &str, p: &Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::FileTypeExt;
    match fs::metadata(p) {
        Ok(m) if m.file_type().is_socket() => Ok(()),
        Ok(_) => Err(invalid(
            field,
            format!("{} is not a Unix socket", p.display()),
        )),
        Err(e) => Err(invalid(
            field,
            format!(
                "{}: {e} (start the vhost-user backend, e.g. virtiofsd, first)",
                p.display()
            ),
        )),
    }
}

/// The directory `p` would be created in exists.
pub(crate) fn check_parent_dir(field: &str, p: &Path) -> Result<(), ConfigError> {
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
