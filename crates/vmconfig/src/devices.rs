//! The device sections: `[[disks]]`, `[vsock]`, `[[fs]]`. Each checks itself
//! (`validate`); checks across sections are in [`crate::VmConfig::validate`].

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{invalid, ConfigError};
use crate::validate::{check_file, check_parent_dir, check_socket};

/// One virtio-blk disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// Host path of the raw disk image.
    pub path: PathBuf,
    /// Open the image read-only and refuse guest writes.
    #[serde(default)]
    pub read_only: bool,
}

impl DiskConfig {
    /// Parses the command-line form: `PATH` or `PATH:ro`.
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

    /// Checks entry `i` alone: the image is a regular file.
    pub fn validate(&self, i: usize) -> Result<(), ConfigError> {
        check_file(&format!("disks[{i}].path"), &self.path)
    }
}

/// The vsock device, Firecracker-style hybrid: the host side is a Unix socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// The guest's context id (3 or more).
    pub guest_cid: u32,
    /// The Unix socket the VMM listens on (must not exist yet; its directory must).
    pub uds_path: PathBuf,
}

impl VsockConfig {
    /// Checks the section alone: a usable CID and a free socket path.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.guest_cid < 3 {
            return Err(invalid(
                "vsock.guest_cid",
                format!("{} is reserved (0-2): use 3 or more", self.guest_cid),
            ));
        }
        check_parent_dir("vsock.uds_path", &self.uds_path)?;
        if self.uds_path.exists() {
            return Err(invalid(
                "vsock.uds_path",
                format!(
                    "{} already exists (remove it or pick another path)",
                    self.uds_path.display()
                ),
            ));
        }
        Ok(())
    }
}

/// Longest virtio-fs tag (the config space field).
pub const MAX_FS_TAG_LEN: usize = 36;

/// One virtio-fs device whose requests a vhost-user backend (virtiofsd) serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    /// The tag the guest mounts (`mount -t virtiofs TAG DIR`): 1 to 36 bytes.
    pub tag: String,
    /// The backend's listening vhost-user socket (it must exist when the VMM starts).
    pub socket: PathBuf,
}

impl FsConfig {
    /// Parses the command-line form: `TAG=SOCKET`.
    pub fn parse_flag(s: &str) -> Result<Self, ConfigError> {
        match s.split_once('=') {
            Some((tag, socket)) if !socket.is_empty() => Ok(FsConfig {
                tag: tag.to_owned(),
                socket: PathBuf::from(socket),
            }),
            _ => Err(invalid("fs", format!("`{s}` is not TAG=SOCKET"))),
        }
    }

    /// Checks entry `i` alone: a valid tag and a listening socket.
    pub fn validate(&self, i: usize) -> Result<(), ConfigError> {
        let tag = &self.tag;
        if tag.is_empty() || tag.len() > MAX_FS_TAG_LEN || tag.contains('\0') {
            return Err(invalid(
                format!("fs[{i}].tag"),
                format!("{tag:?} must be 1 to {MAX_FS_TAG_LEN} bytes without NUL"),
            ));
        }
        check_socket(&format!("fs[{i}].socket"), &self.socket)
    }
}
