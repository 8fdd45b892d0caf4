//! How a bundle's rootfs and bind mounts reach the guest: one function, [`deliver`].
//!
//! virtio-fs, at most two virtiofsd per container, each a virtio-fs device (`[[fs]]` in the
//! VM's `vm.toml`): the rootfs
//! (tag `root`, mounted as it is, no overlay: writes land in the bundle, as with runc;
//! `root.readonly` is applied by libcontainer in the guest, a read-only remount after the
//! mounts, as runc), and every bind mount through one staging directory (tag `binds`). Each
//! bind source, directory or single file (podman's `/etc/hosts`, Kubernetes' volumes and
//! `/dev/termination-log`), is bind-mounted recursively (its submounts too) on the host onto
//! `DIR/binds/dN/NAME` or `fN/NAME`, NAME being the source's own name, so that the root of the
//! mount in the guest's mountinfo ends in it as on the host. `ro` ones are remounted read-only
//! there (so virtiofsd's writes fail too), and the recursive attributes (`rro`, `rnosuid`,
//! `rnodev`, `rnoexec`, the `r*atime` ones...) are set on the whole staged tree with
//! `mount_setattr(AT_RECURSIVE)`. The guest bind-mounts each from the share
//! (`crx_proto::share_file_mount`, read-only for `ro`, with the spec's recursive and
//! `noexec`/atime options, which libcontainer applies there recursively too). Writes on either
//! side are seen on the other, on one inode as with runc's bind mount; virtiofsd announces
//! mount points under the share as submounts, which the guest mounts when first reached.
//! [`unbind_all`] undoes the host mounts before the state is removed.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crx_proto::{share_file_mount, Rootfs, WritableLayer};
use serde_json::Value;

use super::bundle::is_bind;
use super::container::ContainerDir;
use super::error::{io, OciError};
use crate::paths::{is_mount_point, unescape_mountinfo};
use crate::virtiofs::{Daemon, DaemonOptions};

/// The shares of a VM: `(tag, daemon)`.
pub type Shares = Vec<(String, Daemon)>;

/// What the VM gets: its shares (kept running while the VM runs: dropping one kills its
/// virtiofsd), and what the agent mounts as the root.
#[derive(Debug)]
pub struct Delivery {
    pub rootfs: Rootfs,
    /// `(tag, daemon)` per share.
    pub shares: Shares,
    /// Destinations of the bind mounts left out (missing sources).
    pub left_out: Vec<String>,
}

/// Shares the bundle's `rootfs` and the bind-mounted directories of `spec` (the guest's spec,
/// whose bind mounts are rewritten into virtio-fs mounts of their shares).
pub fn deliver(rootfs: &Path, spec: &mut Value, c: &ContainerDir) -> Result<Delivery, OciError> {
    // The binds share announces no submounts: the guest's bind mounts then have their
    // sources' names as roots in its mountinfo (a submount's root would be `/`), and the
    // mounts under a source are made explicitly (`nested_mounts`).
    let share = |tag: &str, dir: &Path, submounts: bool| -> Result<Daemon, OciError> {
        let socket = c.dir.join(format!("{tag}.fs.sock"));
        let opts = DaemonOptions {
            announce_submounts: submounts,
            ..DaemonOptions::default()
        };
        Daemon::spawn_with(dir, &socket, &opts).map_err(|source| OciError::Share {
            dir: dir.to_owned(),
            source,
        })
    };
    // `root.readonly` is libcontainer's to apply in the guest (a read-only remount after the
    // mounts, as runc does): mount points may still have to be made in the rootfs.
    let mut shares = vec![("root".to_owned(), share("root", rootfs, true)?)];
    let staging = c.dir.join(BINDS_DIR);
    let (staged, left_out) = stage_binds(spec, &staging, BINDS_DIR, "")?;
    if staged > 0 {
        shares.push((BINDS_DIR.to_owned(), share(BINDS_DIR, &staging, false)?));
    }
    Ok(Delivery {
        rootfs: Rootfs::virtiofs("root", WritableLayer::Direct),
        shares,
        left_out,
    })
}

/// Stages every bind mount of `spec` whose source exists under `staging` (`dN/NAME` or
/// `fN/NAME`, see the module's doc) and rewrites it into the guest's bind mount of
/// `prefix` + that name in the share `tag` (whose directory holds `staging` as `prefix`).
/// Returns how many were staged and the destinations left out (missing sources).
pub fn stage_binds(
    spec: &mut Value,
    staging: &Path,
    tag: &str,
    prefix: &str,
) -> Result<(usize, Vec<String>), OciError> {
    let mut left_out = Vec::new();
    let (mut files, mut dirs) = (0, 0);
    let Some(mounts) = spec["mounts"].as_array_mut() else {
        return Ok((0, left_out));
    };
    let mut kept = Vec::new();
    for m in mounts.drain(..) {
        if !is_bind(&m) {
            kept.push(m);
            continue;
        }
        let dest = m["destination"].as_str().unwrap_or("?").to_owned();
        let src = PathBuf::from(m["source"].as_str().unwrap_or_default());
        let options: Vec<&str> = m["options"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let attrs = BindAttrs::from_options(&options);
        if !src.exists() {
            left_out.push(dest);
            continue;
        }
        let slot = if src.is_dir() {
            dirs += 1;
            format!("d{}", dirs - 1)
        } else {
            files += 1;
            format!("f{}", files - 1)
        };
        let name = format!("{slot}/{}", staged_name(&src));
        let target = staging.join(&name);
        bind(&src, &target, &attrs)?;
        let shared = format!("{prefix}{name}");
        kept.push(guest_mount(tag, &shared, &dest, &options, attrs.ro));
        let dest = dest.trim_end_matches('/');
        for (rel, ro) in nested_mounts(&target) {
            let (name, dest) = (format!("{shared}/{rel}"), format!("{dest}/{rel}"));
            kept.push(guest_mount(tag, &name, &dest, &options, ro));
        }
    }
    *mounts = kept;
    Ok((files + dirs, left_out))
}

/// The directory in a container's state (and the share tag) for its bind mounts.
const BINDS_DIR: &str = "binds";

/// Mount options of a bind that the guest's bind mount keeps (libcontainer applies the
/// recursive ones with `mount_setattr(AT_RECURSIVE)`); `nosuid` and `nodev` it always has.
const GUEST_OPTIONS: [&str; 24] = [
    "noexec",
    "noatime",
    "relatime",
    "strictatime",
    "nodiratime",
    "nosymfollow",
    "rro",
    "rrw",
    "rnosuid",
    "rsuid",
    "rnodev",
    "rdev",
    "rnoexec",
    "rexec",
    "rnodiratime",
    "rdiratime",
    "rrelatime",
    "rnorelatime",
    "rnoatime",
    "ratime",
    "rstrictatime",
    "rnostrictatime",
    "rnosymfollow",
    "rsymfollow",
];

/// The guest's bind mount of the source staged as `name` in the share `tag`, at `dest`.
fn guest_mount(tag: &str, name: &str, dest: &str, options: &[&str], ro: bool) -> Value {
    let mut m = share_file_mount(tag, name, dest, ro);
    if let Some(o) = m["options"].as_array_mut() {
        o.extend(
            options
                .iter()
                .filter(|x| GUEST_OPTIONS.contains(x))
                .map(|&x| x.into()),
        );
    }
    m
}

/// The name a source is staged under: its own (`/srv/vol` -> `vol`).
fn staged_name(src: &Path) -> String {
    src.file_name()
        .map_or_else(|| "root".to_owned(), |n| n.to_string_lossy().into_owned())
}

// mount_setattr(2) (linux/mount.h).
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_NOEXEC: u64 = 0x8;
const MOUNT_ATTR_ATIME_MASK: u64 = 0x70;
const MOUNT_ATTR_RELATIME: u64 = 0x0;
const MOUNT_ATTR_NOATIME: u64 = 0x10;
const MOUNT_ATTR_STRICTATIME: u64 = 0x20;
const MOUNT_ATTR_NODIRATIME: u64 = 0x80;
const MOUNT_ATTR_NOSYMFOLLOW: u64 = 0x0020_0000;
const AT_RECURSIVE: u32 = 0x8000;

/// `struct mount_attr`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// How a bind is staged on the host: `ro` (the top mount, as runc's `ro` bind) and the
/// recursive attributes to set and clear on the whole tree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct BindAttrs {
    ro: bool,
    set: u64,
    clr: u64,
}

impl BindAttrs {
    fn from_options(options: &[&str]) -> BindAttrs {
        let mut a = BindAttrs::default();
        for o in options {
            let (set, clr) = match *o {
                "ro" => {
                    a.ro = true;
                    continue;
                }
                "rw" => {
                    a.ro = false;
                    continue;
                }
                "rro" => (MOUNT_ATTR_RDONLY, 0),
                "rrw" => (0, MOUNT_ATTR_RDONLY),
                "rnosuid" => (MOUNT_ATTR_NOSUID, 0),
                "rsuid" => (0, MOUNT_ATTR_NOSUID),
                "rnodev" => (MOUNT_ATTR_NODEV, 0),
                "rdev" => (0, MOUNT_ATTR_NODEV),
                "rnoexec" => (MOUNT_ATTR_NOEXEC, 0),
                "rexec" => (0, MOUNT_ATTR_NOEXEC),
                "rnodiratime" => (MOUNT_ATTR_NODIRATIME, 0),
                "rdiratime" => (0, MOUNT_ATTR_NODIRATIME),
                "rrelatime" => (MOUNT_ATTR_RELATIME, MOUNT_ATTR_ATIME_MASK),
                "rnoatime" => (MOUNT_ATTR_NOATIME, MOUNT_ATTR_ATIME_MASK),
                "rstrictatime" => (MOUNT_ATTR_STRICTATIME, MOUNT_ATTR_ATIME_MASK),
                "rnosymfollow" => (MOUNT_ATTR_NOSYMFOLLOW, 0),
                "rsymfollow" => (0, MOUNT_ATTR_NOSYMFOLLOW),
                // `ratime`, `rnorelatime`, `rnostrictatime`: the source's own atime mode.
                _ => continue,
            };
            a.set = (a.set & !clr) | set;
            a.clr = (a.clr & !set) | clr;
        }
        // A recursively read-only tree is read-only at its top too.
        a.ro |= a.set & MOUNT_ATTR_RDONLY != 0;
        a
    }
}

/// Sets the recursive attributes of `a` on the mount tree at `target`.
#[allow(unsafe_code)] // mount_setattr(2): neither nix nor std wraps it
fn set_recursive(target: &Path, a: &BindAttrs) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    if a.set == 0 && a.clr == 0 {
        return Ok(());
    }
    let path = std::ffi::CString::new(target.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let attr = MountAttr {
        attr_set: a.set,
        attr_clr: a.clr,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: `path` is NUL-terminated and `attr` is a `struct mount_attr` of the size given;
    // the kernel only reads both during the call.
    let r = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_mount_setattr,
            nix::libc::AT_FDCWD,
            path.as_ptr(),
            AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Bind-mounts the host file or directory `src` with its submounts onto `target` (made as an
/// empty file or directory), read-only at the top if `a.ro`, with `a`'s recursive attributes.
fn bind(src: &Path, target: &Path, a: &BindAttrs) -> Result<(), OciError> {
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
    // The remount first: it sets the top mount's flags to exactly `MS_RDONLY`.
    let mut done = Ok(());
    if a.ro {
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        done = mount(None::<&str>, target, None::<&str>, flags, None::<&str>).map_err(Into::into);
    }
    if let Err(e) = done.and_then(|()| set_recursive(target, a)) {
        let _ = umount2(target, MntFlags::MNT_DETACH);
        return Err(io(target)(e));
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
        // A slot `dN`/`fN` holding the staged mount point (or, in a state from before
        // 2026-12-04, the mount point itself).
        unmount_and_remove(&e.map_err(io(binds))?.path(), 1)?;
    }
    std::fs::remove_dir(binds).map_err(io(binds))
}

/// Unmounts `path` and removes it without recursing: a directory is entered (`depth` levels)
/// only once it is no longer a mount point, and must then be empty; a file must be empty (a
/// staged file's mount point).
fn unmount_and_remove(path: &Path, depth: u32) -> Result<(), OciError> {
    // EINVAL: not (or no longer) a mount point.
    let _ = umount2(path, MntFlags::MNT_DETACH);
    if is_mount_point(path) {
        return Err(io(path)(std::io::Error::from_raw_os_error(
            nix::libc::EBUSY,
        )));
    }
    let removed = match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            if depth > 0 {
                for e in std::fs::read_dir(path).map_err(io(path))? {
                    unmount_and_remove(&e.map_err(io(path))?.path(), depth - 1)?;
                }
            }
            std::fs::remove_dir(path)
        }
        Ok(m) if m.len() == 0 => std::fs::remove_file(path),
        Ok(_) => Err(std::io::Error::from_raw_os_error(nix::libc::ENOTEMPTY)),
        Err(e) => Err(e),
    };
    removed.map_err(io(path))
}

/// The mounts under the staged bind `target` (a source's submounts, staged with it): their
/// paths relative to it, parents first, and whether each is read-only.
fn nested_mounts(target: &Path) -> Vec<(String, bool)> {
    let Ok(real) = std::fs::canonicalize(target) else {
        return Vec::new();
    };
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<(String, bool)> = Vec::new();
    for line in info.lines() {
        let mut f = line.split(' ').skip(4);
        let (Some(point), Some(opts)) = (f.next(), f.next()) else {
            continue;
        };
        let point = PathBuf::from(unescape_mountinfo(point));
        let Ok(rel) = point.strip_prefix(&real) else {
            continue;
        };
        let rel = rel.to_string_lossy().into_owned();
        if rel.is_empty() {
            continue;
        }
        let ro = opts.split(',').any(|o| o == "ro");
        // Stacked mounts: the last one is what is seen there.
        found.retain(|(r, _)| *r != rel);
        found.push((rel, ro));
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(options: &[&str]) -> BindAttrs {
        BindAttrs::from_options(options)
    }

    /// Whether `path` is on a mount with option `opt` (mountinfo's per-mount options).
    fn mount_has(path: &Path, opt: &str) -> bool {
        let real = std::fs::canonicalize(path).unwrap();
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let line = info
            .lines()
            .rfind(|l| l.split(' ').nth(4) == Some(&*real.to_string_lossy()))
            .unwrap_or_else(|| panic!("{} is not a mount point", real.display()));
        line.split(' ').nth(5).unwrap().split(',').any(|o| o == opt)
    }

    /// Needs root (bind mounts), as the test tiers run.
    #[test]
    fn removing_the_state_never_reaches_into_a_bound_volume() {
        let t = tempfile::tempdir().unwrap();
        let (volume, state) = (t.path().join("volume"), t.path().join("state"));
        std::fs::create_dir_all(volume.join("sub")).unwrap();
        std::fs::write(volume.join("sub/precious"), "data").unwrap();
        let file = t.path().join("hosts");
        std::fs::write(&file, "127.0.0.1 localhost\n").unwrap();
        let binds = state.join(BINDS_DIR);
        bind(&volume, &binds.join("d0/volume"), &attrs(&[])).unwrap();
        bind(&volume, &binds.join("d1/volume"), &attrs(&["ro"])).unwrap();
        bind(&file, &binds.join("f0/hosts"), &attrs(&["ro"])).unwrap();
        // A slot as crx-runc staged it before 2026-12-04: the mount point itself.
        bind(&volume, &binds.join("d2"), &attrs(&[])).unwrap();
        // The binds are live: written through d0, refused through the read-only d1.
        std::fs::write(binds.join("d0/volume/through"), "x").unwrap();
        assert!(volume.join("through").exists());
        assert!(std::fs::write(binds.join("d1/volume/nope"), "x").is_err());
        assert!(std::fs::write(binds.join("f0/hosts"), "x").is_err());

        unbind_all(&state).unwrap();
        assert!(!binds.exists());
        std::fs::remove_dir(&state).unwrap();
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

    /// Needs root. A tmpfs mounted under a bind source is staged with it (so virtiofsd
    /// announces it to the guest), `rro` makes it read-only too (plain `ro` only the top, as
    /// runc), and `rnoexec` reaches it.
    #[test]
    fn recursive_attributes_reach_the_submounts() {
        let t = tempfile::tempdir().unwrap();
        let (volume, binds) = (t.path().join("vol"), t.path().join("state/binds"));
        std::fs::create_dir_all(volume.join("sub")).unwrap();
        let flags = MsFlags::empty();
        mount(
            Some("tmpfs"),
            &volume.join("sub"),
            Some("tmpfs"),
            flags,
            None::<&str>,
        )
        .unwrap();
        let staged = |slot: &str| binds.join(slot).join("vol");
        bind(&volume, &staged("d0"), &attrs(&["rbind", "rro", "rnoexec"])).unwrap();
        bind(&volume, &staged("d1"), &attrs(&["rbind", "ro"])).unwrap();
        let sub_rro = std::fs::write(staged("d0").join("sub/x"), "x");
        let top_rro = std::fs::write(staged("d0").join("x"), "x");
        let sub_ro = std::fs::write(staged("d1").join("sub/y"), "y");
        let noexec = mount_has(&staged("d0").join("sub"), "noexec");
        let submount = is_mount_point(&staged("d1").join("sub"));
        // What the guest gets as mounts of their own: read-only under `rro` alone.
        let nested = [nested_mounts(&staged("d0")), nested_mounts(&staged("d1"))];
        let removed = unbind_all(t.path().join("state").as_path());
        let _ = umount2(&volume.join("sub"), MntFlags::MNT_DETACH);
        removed.unwrap();
        assert_eq!(sub_rro.unwrap_err().raw_os_error(), Some(nix::libc::EROFS));
        assert!(top_rro.is_err());
        sub_ro.unwrap();
        assert!(noexec, "rnoexec on the submount");
        assert!(submount, "the tmpfs is staged as a mount");
        assert_eq!(
            nested,
            [
                vec![("sub".to_owned(), true)],
                vec![("sub".to_owned(), false)]
            ]
        );
        assert!(!binds.exists());
    }

    #[test]
    fn a_mount_point_that_is_not_empty_is_an_error_not_a_removal() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join(BINDS_DIR).join("d0");
        std::fs::create_dir_all(d.join("vol")).unwrap();
        std::fs::write(d.join("vol/keep"), "x").unwrap();
        assert!(unbind_all(t.path()).is_err());
        assert!(d.join("vol/keep").exists());
        std::fs::remove_dir_all(d.join("vol")).unwrap();
        std::fs::write(d.join("hosts"), "not a staged file").unwrap();
        assert!(unbind_all(t.path()).is_err());
        assert!(d.join("hosts").exists());
    }

    #[test]
    fn the_guest_mounts_the_source_by_its_name_with_its_options() {
        assert_eq!(staged_name(Path::new("/srv/my vol")), "my vol");
        assert_eq!(staged_name(Path::new("/")), "root");
        let a = attrs(&["rbind", "rro", "rnosuid", "rnoatime", "rw"]);
        assert!(a.ro, "rro is read-only at the top too");
        assert_eq!(
            a.set,
            MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOATIME
        );
        assert_eq!(
            a.clr, MOUNT_ATTR_ATIME_MASK,
            "the whole atime mask, as the kernel asks"
        );
        assert_eq!(attrs(&["rro", "rrw"]).set, 0);
        assert_eq!(
            attrs(&["bind", "ro"]),
            BindAttrs {
                ro: true,
                set: 0,
                clr: 0
            }
        );
        let m = guest_mount(
            BINDS_DIR,
            "d0/data",
            "/data",
            &["rbind", "rro", "noexec", "rprivate"],
            true,
        );
        assert_eq!(m["source"], "/run/crx/shares/binds/d0/data");
        assert_eq!(m["destination"], "/data");
        assert_eq!(
            m["options"],
            serde_json::json!(["rbind", "ro", "nosuid", "nodev", "rro", "noexec"])
        );
        assert_eq!(
            crx_proto::shared_file_tag(m["source"].as_str().unwrap()),
            Some(BINDS_DIR),
            "the agent mounts the share for it"
        );
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo("/a\\040b\\011c\\134d"), "/a b\tc\\d");
        assert_eq!(unescape_mountinfo("/x\\9\\"), "/x\\9\\");
    }
}
