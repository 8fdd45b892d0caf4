//! The jail's file system: the root directory bound over itself (`nosuid,nodev`), the binds,
//! a private tmpfs `/dev` with only the named device nodes, then `pivot_root` into it with the
//! host's tree detached.

use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use nix::unistd::{chown, Gid, Uid};

use crate::{host_path, io, sys, Jail, JailError};

/// The root must be a directory owned by root or the jail's user, writable by nobody else.
pub(crate) fn check_root(root: &Path, uid: u32) -> Result<(), JailError> {
    let m = fs::metadata(root).map_err(io(format!("jail root {}", root.display())))?;
    let invalid = |why: &str| {
        Err(JailError::Invalid(format!(
            "jail root {} {why}",
            root.display()
        )))
    };
    if !m.is_dir() {
        return invalid("is not a directory");
    }
    if m.uid() != 0 && m.uid() != uid {
        return invalid("must be owned by root or by the jail's uid");
    }
    if m.mode() & 0o022 != 0 {
        return invalid("must not be writable by its group or by others");
    }
    Ok(())
}

pub(crate) fn open_ns(path: &Path) -> Result<OwnedFd, JailError> {
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(io(format!("opening network namespace {}", path.display())))?;
    Ok(f.into())
}

/// Builds the jail in the (new) mount namespace and pivots into it.
pub(crate) fn build(jail: &Jail) -> Result<(), JailError> {
    let none: Option<&str> = None;
    // Nothing done here propagates back to the host's mounts.
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_SLAVE, none)
        .map_err(sys("making / a slave mount"))?;
    let root = &jail.root;
    bind(root, root, false).map_err(sys(format!("binding {} over itself", root.display())))?;
    for b in &jail.binds {
        let target = host_path(root, &b.target);
        make_target(&b.source, &target)?;
        bind(&b.source, &target, b.read_only).map_err(sys(format!(
            "binding {} at {}",
            b.source.display(),
            b.target.display()
        )))?;
    }
    devices(jail)?;
    let proc = host_path(root, Path::new("/proc"));
    fs::create_dir_all(&proc).map_err(io(format!("creating {}", proc.display())))?;
    std::env::set_current_dir(root).map_err(io(format!("entering {}", root.display())))?;
    nix::unistd::pivot_root(".", ".").map_err(sys("pivot_root into the jail"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(sys("detaching the host's file system"))?;
    std::env::set_current_dir("/").map_err(io("entering the jail's /"))?;
    Ok(())
}

/// Binds `source` at `target`; the bind is `nosuid,nodev`, and read-only if asked.
fn bind(source: &Path, target: &Path, read_only: bool) -> nix::Result<()> {
    let none: Option<&str> = None;
    mount(Some(source), target, none, MsFlags::MS_BIND, none)?;
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    mount(none, target, none, flags, none)
}

/// An empty directory or file at `target` for a bind of `source`.
fn make_target(source: &Path, target: &Path) -> Result<(), JailError> {
    let what = || format!("creating bind target {}", target.display());
    if source.is_dir() {
        return fs::create_dir_all(target).map_err(io(what()));
    }
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent).map_err(io(what()))?;
    }
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(target)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && target.is_file() => Ok(()),
        Err(e) => Err(io(what())(e)),
    }
}

/// A tmpfs at the jail's `/dev` (private to this mount namespace: its nodes never appear on
/// the host's file system) holding only the named nodes, owned by the jail's user, 0600.
fn devices(jail: &Jail) -> Result<(), JailError> {
    let dev = host_path(&jail.root, Path::new("/dev"));
    fs::create_dir_all(&dev).map_err(io(format!("creating {}", dev.display())))?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
    mount(
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        flags,
        Some("mode=0755,size=64k"),
    )
    .map_err(sys("mounting the jail's /dev"))?;
    for d in &jail.devices {
        let (name, major, minor) = d.node();
        let path = dev.join(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io(format!("creating {}", parent.display())))?;
        }
        let what = || format!("creating /dev/{name}");
        mknod(
            &path,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o600),
            makedev(major, minor),
        )
        .map_err(sys(what()))?;
        chown(
            &path,
            Some(Uid::from_raw(jail.uid)),
            Some(Gid::from_raw(jail.gid)),
        )
        .map_err(sys(what()))?;
    }
    Ok(())
}
