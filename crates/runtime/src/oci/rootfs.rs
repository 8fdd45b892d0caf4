//! How a bundle's rootfs and bind mounts reach the guest: one function, [`deliver`].
//!
//! virtio-fs: one virtiofsd per shared host directory (the rootfs as tag `root`, each
//! bind-mounted directory as `m0`, `m1`...), each a `crx-vmm --fs` device. Writes on either
//! side are seen on the other; `ro` bind mounts are read-only shares (virtiofsd `--readonly`)
//! and read-only mounts in the guest; `root.readonly` is applied by libcontainer in the guest
//! (a read-only remount after the mounts, as runc). The rootfs is mounted as it is (no
//! overlay: writes land in the bundle, as with runc). Bind mounts of single files (such as
//! podman's `/etc/hosts`) cannot be shared alone and are left out.

use std::path::{Path, PathBuf};

use crx_proto::{virtiofs_mount, Rootfs, WritableLayer};
use serde_json::Value;

use super::bundle::is_bind;
use super::container::ContainerDir;
use super::error::OciError;
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
    if let Some(mounts) = spec["mounts"].as_array_mut() {
        let mut kept = Vec::new();
        for m in mounts.drain(..) {
            if !is_bind(&m) {
                kept.push(m);
                continue;
            }
            let dest = m["destination"].as_str().unwrap_or("?").to_owned();
            let src = PathBuf::from(m["source"].as_str().unwrap_or_default());
            if !src.is_dir() {
                left_out.push(dest);
                continue;
            }
            let ro = m["options"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|o| o == "ro");
            let tag = format!("m{}", shares.len() - 1);
            shares.push((tag.clone(), share(&tag, &src, ro)?));
            kept.push(virtiofs_mount(&tag, &dest, ro));
        }
        *mounts = kept;
    }
    Ok(Delivery {
        rootfs: Rootfs::virtiofs("root", WritableLayer::Direct),
        shares,
        left_out,
    })
}
