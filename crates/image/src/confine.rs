//! Device nodes from image layers never become usable host devices.
//!
//! A layer may carry character and block device nodes (`/dev/console`, or a hostile
//! `/dev/sda`). The guest needs them in its disk image, and mkfs copies them only from a tree
//! on a host filesystem, so the unpacker creates them on the host; but it creates them only on
//! a mount with `nodev` (opening such a node fails with EACCES), and `nosuid` (a set-user-ID
//! file of the image runs with no privilege on the host). The store unpacks into a
//! [`NodevMount`] of its scratch tree; anywhere else a device node is left out, as when the
//! caller cannot create one at all (without root; the guest's devtmpfs provides `/dev`).

use std::io;
use std::path::{Path, PathBuf};

use rustix::fs::StatVfsMountFlags;
use rustix::io::Errno;
use rustix::mount::{MountFlags, UnmountFlags};

/// `dir` as a `nodev,nosuid` bind mount of itself, unmounted (lazily) on drop.
#[derive(Debug)]
pub struct NodevMount {
    path: PathBuf,
}

impl NodevMount {
    /// Mounts `dir` over itself with `nodev,nosuid`. Needs CAP_SYS_ADMIN: without it the error
    /// is returned, and the tree simply gets no device nodes.
    pub fn new(dir: &Path) -> io::Result<Self> {
        rustix::mount::mount_bind(dir, dir)?;
        let mount = Self {
            path: dir.to_owned(),
        };
        let flags = MountFlags::BIND | MountFlags::NODEV | MountFlags::NOSUID;
        rustix::mount::mount_remount(dir, flags, c"")?;
        Ok(mount)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for NodevMount {
    fn drop(&mut self) {
        // Detached: a reader that still holds a file open does not keep the mount busy.
        let _ = unmount_detached(&self.path);
    }
}

/// Unmounts whatever is mounted on `path` (lazily); `Ok(false)` when nothing was.
pub fn unmount_detached(path: &Path) -> io::Result<bool> {
    match rustix::mount::unmount(path, UnmountFlags::DETACH) {
        Ok(()) => Ok(true),
        // Not a mount point, no such path, or no privilege to have mounted one.
        Err(Errno::INVAL | Errno::NOENT | Errno::NOTDIR | Errno::PERM) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Whether a device node created in `dir` is inert on the host: `dir` is on a mount with both
/// `nodev` and `nosuid`.
pub fn is_inert(dir: &Path) -> bool {
    let want = StatVfsMountFlags::NODEV | StatVfsMountFlags::NOSUID;
    rustix::fs::statvfs(dir).is_ok_and(|s| s.f_flag.contains(want))
}
