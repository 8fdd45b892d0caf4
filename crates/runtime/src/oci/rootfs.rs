//! How a bundle's rootfs and bind mounts reach the guest: one function, [`deliver`].
//!
//! virtio-fs: one virtiofsd per shared host directory (the rootfs as tag `root`, each
//! bind-mounted directory as `m0`, `m1`...), each a `crx-vmm --fs` device. Writes on either
//! side are seen on the other; `ro` bind mounts are read-only shares (virtiofsd `--readonly`)
//! and read-only mounts in the guest; `root.readonly` is applied by libcontainer in the guest
//! (a read-only remount after the mounts, as runc). The rootfs is mounted as it is (no
//! overlay: writes land in the bundle, as with runc). Bind mounts of single files (podman's
//! `/etc/hosts`, Kubernetes' `/dev/termination-log`): virtio-fs shares directories, so each file
//! is bind-mounted on the host onto `DIR/files/fN` (read-only bind mounts remounted read-only
//! there, so virtiofsd's writes fail too), `DIR/files` is one more share (tag `files`), and the
//! guest bind-mounts `fN` from it (`crx_proto::share_file_mount`). Both sides see one inode, as
//! with runc's bind mount. [`unbind_files`] undoes the host mounts before the state is removed.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crx_proto::{share_file_mount, virtiofs_mount, Rootfs, WritableLayer};
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
    let mut files = 0;
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
            if !src.is_dir() {
                if !src.exists() {
                    left_out.push(dest);
                    continue;
                }
                let file = format!("f{files}");
                bind_file(&src, &c.dir.join(FILES_DIR).join(&file), ro)?;
                files += 1;
                kept.push(share_file_mount(FILES_DIR, &file, &dest, ro));
                continue;
            }
            let tag = format!("m{}", shares.len() - 1);
            shares.push((tag.clone(), share(&tag, &src, ro)?));
            kept.push(virtiofs_mount(&tag, &dest, ro));
        }
        *mounts = kept;
    }
    if files > 0 {
        let dir = c.dir.join(FILES_DIR);
        shares.push((FILES_DIR.to_owned(), share(FILES_DIR, &dir, false)?));
    }
    Ok(Delivery {
        rootfs: Rootfs::virtiofs("root", WritableLayer::Direct),
        shares,
        left_out,
    })
}

/// The directory in a container's state (and the share tag) for its single-file bind mounts.
const FILES_DIR: &str = "files";

/// Bind-mounts the host file `src` onto `target` (made as an empty file), read-only if `ro`.
fn bind_file(src: &Path, target: &Path, ro: bool) -> Result<(), OciError> {
    if let Some(dir) = target.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    std::fs::File::create(target).map_err(io(target))?;
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

/// Undoes the host bind mounts of a container's single files (any left by a killed command
/// too), so that its state directory can be removed.
pub fn unbind_files(container_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(container_dir.join(FILES_DIR)) else {
        return;
    };
    for e in entries.flatten() {
        let _ = umount2(&e.path(), MntFlags::MNT_DETACH);
    }
}
