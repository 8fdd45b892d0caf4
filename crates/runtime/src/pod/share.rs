//! A pod's one shared directory: a shared mount (so that what is mounted under it after its
//! virtiofsd started propagates into the daemon's own mount namespace, a slave of it), with a
//! directory per container holding its rootfs (a bind of the bundle's) and its staged binds.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use serde_json::Value;

use crx_proto::{Rootfs, WritableLayer, SHARES_DIR};

use super::{io, PodError, SHARE_TAG};
use crate::paths::is_mount_point;

/// The guest's file system type of a rootfs that is a directory of a share (the agent
/// bind-mounts it once the share is mounted).
pub const FS_TYPE_SHARED_DIR: &str = "bind";

/// Makes `share` a directory that is a shared mount of its own (idempotent).
pub fn prepare(share: &Path) -> Result<(), PodError> {
    crate::paths::create_private_dir_all(share).map_err(io(share))?;
    if !is_mount_point(share) {
        mount(
            Some(share),
            share,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|source| PodError::Mount {
            what: share.display().to_string(),
            source,
        })?;
    }
    mount(
        None::<&str>,
        share,
        None::<&str>,
        MsFlags::MS_SHARED,
        None::<&str>,
    )
    .map_err(|source| PodError::Mount {
        what: format!("{} (shared)", share.display()),
        source,
    })
}

/// The guest path of container `cid`'s directory in the share.
pub fn guest_dir(cid: &str) -> String {
    format!("{SHARES_DIR}/{SHARE_TAG}/{cid}")
}

/// Adds container `cid` to the pod's `share`: its `rootfs` (a host directory) bind-mounted
/// (recursively) as `CID/rootfs`, the bind mounts of `gspec` (the guest's spec) staged under
/// `CID/binds` and rewritten into mounts of the share. Returns the guest's rootfs and the
/// destinations of binds left out (missing sources). On error nothing stays mounted.
pub fn add(
    share: &Path,
    cid: &str,
    rootfs: &Path,
    gspec: &mut Value,
) -> Result<(Rootfs, Vec<String>), PodError> {
    if !crate::oci::container::valid_id(cid) {
        return Err(PodError::BadId(cid.to_owned()));
    }
    let dir = share.join(cid);
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(PodError::Exists(cid.to_owned()))
        }
        Err(e) => return Err(io(&dir)(e)),
    }
    let added = add_in(&dir, cid, rootfs, gspec);
    if added.is_err() {
        let _ = remove(share, cid);
    }
    added
}

fn add_in(
    dir: &Path,
    cid: &str,
    rootfs: &Path,
    gspec: &mut Value,
) -> Result<(Rootfs, Vec<String>), PodError> {
    let root = dir.join("rootfs");
    std::fs::create_dir(&root).map_err(io(&root))?;
    let flags = MsFlags::MS_BIND | MsFlags::MS_REC;
    mount(Some(rootfs), &root, None::<&str>, flags, None::<&str>).map_err(|source| {
        PodError::Mount {
            what: format!("{} on {}", rootfs.display(), root.display()),
            source,
        }
    })?;
    let prefix = format!("{cid}/binds/");
    let (_, left_out) =
        crate::oci::rootfs::stage_binds(gspec, &dir.join("binds"), SHARE_TAG, &prefix)
            .map_err(PodError::Oci)?;
    let rootfs = Rootfs {
        device: format!("{}/rootfs", guest_dir(cid)),
        fs_type: FS_TYPE_SHARED_DIR.into(),
        writable: WritableLayer::Direct,
    };
    Ok((rootfs, left_out))
}

/// Removes container `cid` from the share: its binds and rootfs unmounted, its directory
/// removed without recursing through a mount that stayed (an error instead).
pub fn remove(share: &Path, cid: &str) -> Result<(), PodError> {
    let dir = share.join(cid);
    if !dir.exists() {
        return Ok(());
    }
    crate::oci::rootfs::unbind_all(&dir).map_err(PodError::Oci)?;
    let root = dir.join("rootfs");
    // Recursive bind: its submounts go with it (detached).
    let _ = umount2(&root, MntFlags::MNT_DETACH);
    if is_mount_point(&root) {
        return Err(io(&root)(std::io::Error::from_raw_os_error(
            nix::libc::EBUSY,
        )));
    }
    match std::fs::remove_dir(&root) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&root)(e)),
    }
    match std::fs::remove_dir(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&dir)(e)),
        _ => Ok(()),
    }
}

/// Removes every container of the share, then the share's own mount and directory.
pub fn remove_all(share: &Path) -> Result<(), PodError> {
    let entries: Vec<PathBuf> = match std::fs::read_dir(share) {
        Ok(e) => e.filter_map(Result::ok).map(|e| e.path()).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(share)(e)),
    };
    for p in entries {
        if let Some(cid) = p.file_name().and_then(|n| n.to_str()) {
            remove(share, cid)?;
        }
    }
    while is_mount_point(share) {
        umount2(share, MntFlags::MNT_DETACH).map_err(|source| PodError::Mount {
            what: format!("unmounting {}", share.display()),
            source,
        })?;
    }
    std::fs::remove_dir(share).map_err(io(share))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_paths_are_under_the_share() {
        assert_eq!(guest_dir("c1"), format!("{SHARES_DIR}/pod/c1"));
        assert_eq!(
            crx_proto::shared_file_tag(&format!("{}/rootfs", guest_dir("c1"))),
            Some(SHARE_TAG)
        );
    }

    #[test]
    fn bad_ids_are_refused_before_any_mount() {
        let t = tempfile::tempdir().unwrap();
        let mut spec = serde_json::json!({});
        for bad in ["../x", "a/b", ""] {
            assert!(add(t.path(), bad, t.path(), &mut spec).is_err());
        }
        assert!(std::fs::read_dir(t.path()).unwrap().next().is_none());
    }

    #[test]
    fn removing_a_missing_container_is_fine() {
        let t = tempfile::tempdir().unwrap();
        remove(t.path(), "nope").unwrap();
        std::fs::create_dir(t.path().join("c1")).unwrap();
        remove(t.path(), "c1").unwrap();
        assert!(!t.path().join("c1").exists());
    }
}
