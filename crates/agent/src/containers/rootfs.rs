//! A container's root filesystem: the image (a disk, a directory or a virtio-fs share) under a
//! writable overlay, or mounted as it is.
//!
//! ```text
//! with a tmpfs or disk writable layer:
//! DIR/lower   <- rootfs.device (read-only, rootfs.fs_type); a directory is bind-mounted;
//!                fs_type "virtiofs": device is the virtio-fs tag
//! DIR/rw      <- tmpfs, or the writable disk
//! DIR/rootfs  <- overlay lowerdir=lower, upperdir=rw/upper, workdir=rw/work
//!
//! writable ReadOnly / Direct:
//! DIR/rootfs  <- rootfs.device itself, read-only / writable (a virtio-fs share written
//!                directly: the container's writes land in the host directory, as with runc)
//! ```

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use crx_proto::{shared_file_tag, Rootfs, WritableLayer, SHARES_DIR};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use serde_json::Value;

/// Mounts `r` under `dir` and returns the container's root directory.
pub fn mount_rootfs(dir: &Path, r: &Rootfs) -> Result<PathBuf> {
    let lower = dir.join("lower");
    let rw = dir.join("rw");
    let root = dir.join("rootfs");
    let (source, fs_type, data) = match &r.writable {
        WritableLayer::ReadOnly | WritableLayer::Direct => {
            mkdir(&root)?;
            mount_source(r, &root, r.writable == WritableLayer::ReadOnly)?;
            return Ok(root);
        }
        WritableLayer::Tmpfs { size_bytes } => {
            ("tmpfs", "tmpfs", size_bytes.map(|s| format!("size={s}")))
        }
        WritableLayer::Disk { device, fs_type } => (device.as_str(), fs_type.as_str(), None),
    };
    for d in [&lower, &rw, &root] {
        mkdir(d)?;
    }
    mount_source(r, &lower, true)?;
    do_mount(
        Some(Path::new(source)),
        &rw,
        Some(fs_type),
        MsFlags::empty(),
        data.as_deref(),
    )?;
    let (upper, work) = (rw.join("upper"), rw.join("work"));
    mkdir(&upper)?;
    mkdir(&work)?;
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    do_mount(
        Some(Path::new("overlay")),
        &root,
        Some("overlay"),
        MsFlags::empty(),
        Some(&data),
    )?;
    Ok(root)
}

/// Mounts the image itself at `target`: a virtio-fs tag, a directory (bind) or a device.
fn mount_source(r: &Rootfs, target: &Path, read_only: bool) -> Result<()> {
    let ro = if read_only {
        MsFlags::MS_RDONLY
    } else {
        MsFlags::empty()
    };
    let device = Path::new(&r.device);
    // A directory of a VM-wide share (a pod's containers, ADR 0019): the share first.
    if let Some(tag) = shared_file_tag(&r.device).filter(|_| !r.is_virtiofs()) {
        mount_share(tag)?;
    }
    if !r.is_virtiofs() && device.is_dir() {
        do_mount(Some(device), target, None, MsFlags::MS_BIND, None)?;
        if read_only {
            do_mount(
                None::<&Path>,
                target,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None,
            )?;
        }
        return Ok(());
    }
    do_mount(Some(device), target, Some(&r.fs_type), ro, None)
}

/// Mounts every virtio-fs share whose files `spec` bind-mounts (`crx_proto::share_file_mount`)
/// at `SHARES_DIR/TAG`, once per VM: the shares belong to the VM, not to one container.
pub fn mount_file_shares(spec: &Value) -> Result<()> {
    let sources = spec["mounts"].as_array().into_iter().flatten();
    let sources = sources.filter(|m| m["type"] == "bind");
    for tag in sources.filter_map(|m| shared_file_tag(m["source"].as_str()?)) {
        mount_share(tag)?;
    }
    Ok(())
}

/// Mounts the virtio-fs share `tag` at `SHARES_DIR/TAG` unless it is mounted already.
fn mount_share(tag: &str) -> Result<()> {
    let dir = Path::new(SHARES_DIR).join(tag);
    mkdir(&dir)?;
    if is_mount_point(&dir)? {
        return Ok(());
    }
    do_mount(
        Some(Path::new(tag)),
        &dir,
        Some("virtiofs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None,
    )
}

/// Whether `dir` is on another file system than its parent.
fn is_mount_point(dir: &Path) -> Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let dev = |p: &Path| fs::metadata(p).map(|m| m.dev());
    let parent = dir.parent().unwrap_or(Path::new("/"));
    Ok(dev(dir).with_context(|| format!("stat {}", dir.display()))? != dev(parent)?)
}

/// The mount points [`mount_rootfs`] makes under a container's directory, outermost first.
const MOUNT_POINTS: [&str; 3] = ["rootfs", "rw", "lower"];

/// Unmounts what [`mount_rootfs`] mounted (lazily, ignoring what is not mounted) and removes
/// `dir`. The mount points are removed one by one, never recursively: one still mounted (a
/// virtio-fs rootfs is the host's bundle directory) is left, with a message, rather than
/// emptied.
pub fn unmount_rootfs(dir: &Path) {
    for sub in MOUNT_POINTS {
        let _ = umount2(&dir.join(sub), MntFlags::MNT_DETACH);
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let mount_point = MOUNT_POINTS.iter().any(|m| e.file_name() == *m);
        let removed = if mount_point {
            fs::remove_dir(&path)
        } else if e.file_type().is_ok_and(|t| t.is_dir()) {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        if let Err(err) = removed {
            eprintln!("crx-init: removing {}: {err}", path.display());
        }
    }
    let _ = fs::remove_dir(dir);
}

fn mkdir(p: &Path) -> Result<()> {
    fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))
}

fn do_mount(
    src: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<()> {
    mount(src, target, fstype, flags, data).with_context(|| {
        format!(
            "mounting {} ({}) on {}",
            src.map_or("-".into(), |s| s.display().to_string()),
            fstype.unwrap_or("bind"),
            target.display()
        )
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn unmounting_never_empties_a_mount_point_that_stayed() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("c1");
        // "rootfs" as if still mounted: not empty. The bundle and a stray file go.
        std::fs::create_dir_all(dir.join("rootfs/etc")).unwrap();
        std::fs::write(dir.join("rootfs/etc/passwd"), "root").unwrap();
        std::fs::create_dir_all(dir.join("bundle")).unwrap();
        std::fs::write(dir.join("bundle/config.json"), "{}").unwrap();
        std::fs::create_dir_all(dir.join("rw")).unwrap();
        super::unmount_rootfs(&dir);
        assert!(dir.join("rootfs/etc/passwd").exists());
        assert!(!dir.join("bundle").exists() && !dir.join("rw").exists());
        std::fs::remove_dir_all(dir.join("rootfs")).unwrap();
        super::unmount_rootfs(&dir);
        assert!(!dir.exists());
    }
}
