//! containerd's rootfs mounts (the snapshotter's: overlay with lowerdirs and an upperdir, or a
//! bind) mounted on the host at the bundle's `rootfs`, as runc's shim does. Mounted here, in
//! the calling thread: the `containerd-shim` crate's `mount_rootfs` forks and waits for its
//! child through the crate's reaper, which this shim does not run (it reaps its own children).

use std::path::{Path, PathBuf};

use containerd_shim::protos::types::mount::Mount;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// The bundle's rootfs directory: the spec's `root.path` (relative to the bundle), else
/// `rootfs`.
pub fn rootfs_dir(bundle: &Path, spec: &serde_json::Value) -> PathBuf {
    let root = spec["root"]["path"].as_str().unwrap_or("rootfs");
    bundle.join(root)
}

/// A mount option that is a flag: whether it sets or clears it.
fn flag(option: &str) -> Option<(MsFlags, bool)> {
    Some(match option {
        "ro" => (MsFlags::MS_RDONLY, true),
        "rw" => (MsFlags::MS_RDONLY, false),
        "bind" => (MsFlags::MS_BIND, true),
        "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, true),
        "nosuid" => (MsFlags::MS_NOSUID, true),
        "suid" => (MsFlags::MS_NOSUID, false),
        "nodev" => (MsFlags::MS_NODEV, true),
        "dev" => (MsFlags::MS_NODEV, false),
        "noexec" => (MsFlags::MS_NOEXEC, true),
        "exec" => (MsFlags::MS_NOEXEC, false),
        "noatime" => (MsFlags::MS_NOATIME, true),
        "nodiratime" => (MsFlags::MS_NODIRATIME, true),
        "relatime" => (MsFlags::MS_RELATIME, true),
        "strictatime" => (MsFlags::MS_STRICTATIME, true),
        "sync" => (MsFlags::MS_SYNCHRONOUS, true),
        "async" => (MsFlags::MS_SYNCHRONOUS, false),
        "defaults" => (MsFlags::empty(), true),
        _ => return None,
    })
}

/// A mount's flags and its file-system data (the options that are not flags).
pub fn parse_options(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        match flag(o) {
            Some((f, true)) => flags |= f,
            Some((f, false)) => flags &= !f,
            None => data.push(o.as_str()),
        }
    }
    (flags, data.join(","))
}

/// Mounts `mounts` in order at `target` (made if missing).
pub fn mount_all(mounts: &[Mount], target: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(target)?;
    for m in mounts {
        mount_one(m, target).map_err(|e| {
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

fn mount_one(m: &Mount, target: &Path) -> nix::Result<()> {
    let (flags, data) = parse_options(&m.options);
    let typ = (!m.type_.is_empty() && m.type_ != "bind").then_some(m.type_.as_str());
    let data = (!data.is_empty()).then_some(data.as_str());
    let src = (!m.source.is_empty()).then_some(m.source.as_str());
    if flags.contains(MsFlags::MS_BIND) {
        // A bind takes no data and ignores MS_RDONLY on the first call: remounted after.
        mount(
            src,
            target,
            None::<&str>,
            flags & !MsFlags::MS_RDONLY,
            None::<&str>,
        )?;
        if flags.contains(MsFlags::MS_RDONLY) {
            let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
            mount(None::<&str>, target, None::<&str>, ro, None::<&str>)?;
        }
        return Ok(());
    }
    mount(src, target, typ, flags, data)
}

/// Unmounts the bundle's rootfs (whatever is mounted there, detached); not mounted is fine.
pub fn unmount_rootfs(bundle: &Path) {
    let spec = crate::actions::read_spec(bundle);
    let dir = rootfs_dir(bundle, &spec);
    while umount2(&dir, MntFlags::MNT_DETACH).is_ok() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_options_are_data_and_flags_are_flags() {
        let o: Vec<String> = [
            "index=off",
            "workdir=/w",
            "upperdir=/u",
            "lowerdir=/a:/b",
            "ro",
        ]
        .map(String::from)
        .to_vec();
        let (flags, data) = parse_options(&o);
        assert_eq!(flags, MsFlags::MS_RDONLY);
        assert_eq!(data, "index=off,workdir=/w,upperdir=/u,lowerdir=/a:/b");
        let (flags, data) = parse_options(&["rbind".into(), "ro".into(), "rw".into()]);
        assert_eq!(flags, MsFlags::MS_BIND | MsFlags::MS_REC);
        assert!(data.is_empty());
    }
}
