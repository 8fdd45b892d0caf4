//! containerd's rootfs mounts (the snapshotter's: overlay with lowerdirs and an upperdir, or a
//! bind) mounted on the host at the bundle's `rootfs`, as runc's shim does.

use std::path::{Path, PathBuf};

use containerd_shim::protos::types::mount::Mount;
use nix::mount::{umount2, MntFlags};

/// The bundle's rootfs directory: the spec's `root.path` (relative to the bundle), else
/// `rootfs`.
pub fn rootfs_dir(bundle: &Path, spec: &serde_json::Value) -> PathBuf {
    let root = spec["root"]["path"].as_str().unwrap_or("rootfs");
    bundle.join(root)
}

/// Mounts `mounts` in order at `target` (made if missing).
pub fn mount_all(mounts: &[Mount], target: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(target)?;
    for m in mounts {
        let typ = (!m.type_.is_empty()).then_some(m.type_.as_str());
        let src = (!m.source.is_empty()).then_some(m.source.as_str());
        containerd_shim::mount::mount_rootfs(typ, src, &m.options, target).map_err(|e| {
            anyhow::anyhow!(
                "mounting {} ({:?}) on {}: {e}",
                m.source,
                m.type_,
                target.display()
            )
        })?;
    }
    Ok(())
}

/// Unmounts the bundle's rootfs (whatever is mounted there, detached); not mounted is fine.
pub fn unmount_rootfs(bundle: &Path) {
    let spec = crate::actions::read_spec(bundle);
    let dir = rootfs_dir(bundle, &spec);
    while umount2(&dir, MntFlags::MNT_DETACH).is_ok() {}
}
