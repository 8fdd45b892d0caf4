//! How a bundle's rootfs and bind mounts reach the guest: one function, [`deliver`].
//!
//! virtio-fs, at most two virtiofsd per container, each a `crx-vmm --fs` device: the rootfs
//! (tag `root`, mounted as it is, no overlay: writes land in the bundle, as with runc;
//! `root.readonly` is applied by libcontainer in the guest, a read-only remount after the
//! mounts, as runc), and every bind mount through one staging directory (tag `binds`). Each
//! bind source, directory or single file (podman's `/etc/hosts`, Kubernetes' volumes and
//! `/dev/termination-log`), is bind-mounted on the host onto `DIR/binds/dN` or `fN` (`ro`
//! ones remounted read-only there, so virtiofsd's writes fail too), and the guest bind-mounts
//! it from the share (`crx_proto::share_file_mount`, read-only for `ro`). Writes on either
//! side are seen on the other, on one inode as with runc's bind mount; virtiofsd announces
//! the directories as submounts, so each keeps its own device number in the guest.
//! [`unbind_all`] undoes the host mounts before the state is removed.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crx_proto::{share_file_mount, Rootfs, WritableLayer};
use serde_json::Value;

use super::bundle::is_bind;
use super::container::ContainerDir;
use super::error::{io, OciError};
use crate::virtiofs::Daemon;

/// The shares of a VM: `(tag, daemon)`.
pub type Shares = Vec<(String, Daemon)>;

/// What the VM gets: its shares (kept running while the VM runs: dropping one kills its
/// virtiofsd), and what the agent mounts as the root.
#[derive(Debug)]
pub struct Delivery {
    pub rootfs: Rootfs,
    /// `(tag, daemon)` per share.
    pub shares: Shares,
    /// Destinations of the bind mounts left out (single files, missing sources).
    pub left_out: Vec<String>,
}

/// Shares the bundle's `rootfs` and the bind-mounted directories of `spec` (the guest's spec,
/// whose bind mounts are rewritten into virtio-fs mounts of their shares).
pub fn deliver(rootfs: &Path, spec: &mut Value, c: &ContainerDir) -> Result<Delivery, OciError> {
    let share = |tag: &str, dir: &Path, ro: bool| -> Result<Daemon, OciError> {
        let socket = c.dir.join(format!("{tag}.fs.sock"));
        Daemon::spawn(dir, &socket, ro).map_err(|source| OciError::Share {
            dir: dir.to_owned(),
            source,
        })
    };
    // `root.readonly` is libcontainer's to apply in the guest (a read-only remount after the
    // mounts, as runc does): mount points may still have to be made in the rootfs.
    let mut shares = vec![("root".to_owned(), share("root", rootfs, false)?)];
    let mut left_out = Vec::new();
    let (mut files, mut dirs) = (0, 0);
    if let Some(mounts) = spec["mounts"].as_array_mut() {
        let mut kept = Vec::new();
        for m in mounts.drain(..) {
            if !is_bind(&m) {
                kept.push(m);
                continue;
            }
            let dest = m["destination"].as_str().unwrap_or("?").to_owned();
            let src = PathBuf::from(m["source"].as_str().unwrap_or_default());
            let ro = m["options"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|o| o == "ro");
            if !src.exists() {
                left_out.push(dest);
                continue;
            }
            let name = if src.is_dir() {
                dirs += 1;
                format!("d{}", dirs - 1)
            } else {
                files += 1;
                format!("f{}", files - 1)
            };
            bind(&src, &c.dir.join(BINDS_DIR).join(&name), ro)?;
            kept.push(share_file_mount(BINDS_DIR, &name, &dest, ro));
        }
        *mounts = kept;
    }
    if files + dirs > 0 {
        let dir = c.dir.join(BINDS_DIR);
        shares.push((BINDS_DIR.to_owned(), share(BINDS_DIR, &dir, false)?));
    }
    Ok(Delivery {
        rootfs: Rootfs::virtiofs("root", WritableLayer::Direct),
        shares,
        left_out,
    })
}

/// The directory in a container's state (and the share tag) for its bind mounts.
const BINDS_DIR: &str = "binds";

/// Bind-mounts the host file or directory `src` (with its submounts) onto `target` (made as
/// an empty file or directory), read-only if `ro` (the top mount: as runc's `ro` bind).
fn bind(src: &Path, target: &Path, ro: bool) -> Result<(), OciError> {
    if let Some(dir) = target.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    if src.is_dir() {
        std::fs::create_dir(target).map_err(io(target))?;
    } else {
        std::fs::File::create(target).map_err(io(target))?;
    }
    let flags = MsFlags::MS_BIND | MsFlags::MS_REC;
    mount(Some(src), target, None::<&str>, flags, None::<&str>).map_err(|e| io(src)(e.into()))?;
    if ro {
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        if let Err(e) = mount(None::<&str>, target, None::<&str>, flags, None::<&str>) {
            let _ = umount2(target, MntFlags::MNT_DETACH);
            return Err(io(target)(e.into()));
        }
    }
    Ok(())
}

/// Undoes the host bind mounts of a container's bind sources (any left by a killed command
/// too) and removes their mount points, one by one and never recursively: an error, not a
/// recursive removal, is what a mount that would not go away gets, so that removing the
/// state directory can never reach into a user's volume.
pub fn unbind_all(container_dir: &Path) -> Result<(), OciError> {
    // `files`: single-file binds, as crx-runc kept them before 2026-11-29.
    for name in [BINDS_DIR, "files"] {
        unbind_dir(&container_dir.join(name))?;
    }
    Ok(())
}

fn unbind_dir(binds: &Path) -> Result<(), OciError> {
    let entries = match std::fs::read_dir(binds) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(binds)(e)),
    };
    for e in entries {
        let path = e.map_err(io(binds))?.path();
        // EINVAL: not (or no longer) a mount point.
        let _ = umount2(&path, MntFlags::MNT_DETACH);
        let removed = match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => std::fs::remove_dir(&path),
            Ok(_) => std::fs::remove_file(&path),
            Err(e) => Err(e),
        };
        removed.map_err(io(&path))?;
    }
    std::fs::remove_dir(binds).map_err(io(binds))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs root (bind mounts), as the test tiers run.
    #[test]
    fn removing_the_state_never_reaches_into_a_bound_volume() {
        let t = tempfile::tempdir().unwrap();
        let (volume, state) = (t.path().join("volume"), t.path().join("state"));
        std::fs::create_dir_all(volume.join("sub")).unwrap();
        std::fs::write(volume.join("sub/precious"), "data").unwrap();
        let file = t.path().join("hosts");
        std::fs::write(&file, "127.0.0.1 localhost\n").unwrap();
        bind(&volume, &state.join(BINDS_DIR).join("d0"), false).unwrap();
        bind(&volume, &state.join(BINDS_DIR).join("d1"), true).unwrap();
        bind(&file, &state.join(BINDS_DIR).join("f0"), true).unwrap();
        // The binds are live: written through d0, refused through the read-only d1.
        std::fs::write(state.join("binds/d0/through"), "x").unwrap();
        assert!(volume.join("through").exists());
        assert!(std::fs::write(state.join("binds/d1/nope"), "x").is_err());
        assert!(std::fs::write(state.join("binds/f0"), "x").is_err());

        unbind_all(&state).unwrap();
        std::fs::remove_dir_all(&state).unwrap();
        assert_eq!(
            std::fs::read_to_string(volume.join("sub/precious")).unwrap(),
            "data"
        );
        assert!(file.exists());
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains(&*state.to_string_lossy()), "{mounts}");
        // Nothing left to undo: fine.
        unbind_all(&state).unwrap();
    }

    #[test]
    fn a_mount_point_that_is_not_empty_is_an_error_not_a_removal() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join(BINDS_DIR).join("d0");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("keep"), "x").unwrap();
        assert!(unbind_all(t.path()).is_err());
        assert!(d.join("keep").exists());
    }
}
