//! Netlink work inside a network namespace: a fresh thread enters it (`setns` changes the
//! calling thread alone), opens its netlink socket there (a socket stays in the namespace it
//! was made in) and runs the work on a current-thread tokio runtime, then ends; the rest of
//! the process never leaves the host's namespace.

use std::fs::File;
use std::future::Future;
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};
use rtnetlink::Handle;

use super::NetError;

/// Opens the namespace file `path`.
pub(super) fn open(path: &Path) -> Result<File, NetError> {
    File::open(path).map_err(|source| NetError::Netns {
        path: path.to_owned(),
        source,
    })
}

/// Whether `path` is the network namespace this process or init is in (the host's): joining
/// it would hand the host's interfaces to the VM.
pub(super) fn is_hosts(path: &Path) -> Result<bool, NetError> {
    use std::os::unix::fs::MetadataExt;
    let id = |p: &Path| std::fs::metadata(p).map(|m| (m.dev(), m.ino()));
    let given = id(path).map_err(|source| NetError::Netns {
        path: path.to_owned(),
        source,
    })?;
    Ok(["/proc/self/ns/net", "/proc/1/ns/net"]
        .iter()
        .any(|h| id(Path::new(h)).is_ok_and(|h| h == given)))
}

/// The identity (device, inode) of the namespace file `ns`, opened from `path`.
pub(super) fn id(ns: &File, path: &Path) -> Result<(u64, u64), NetError> {
    use std::os::unix::fs::MetadataExt;
    let m = ns.metadata().map_err(|source| NetError::Netns {
        path: path.to_owned(),
        source,
    })?;
    Ok((m.dev(), m.ino()))
}

/// Opens the namespace file `path`, or `None` when it is gone: removed, no longer a
/// namespace (its bind mount undone, an empty file left; entering it tells), or another
/// namespace than the one whose identity is `want` (the path of a dead process's namespace,
/// its pid reused).
pub(super) fn open_if_alive(
    path: &Path,
    want: Option<(u64, u64)>,
) -> Result<Option<File>, NetError> {
    match File::open(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(NetError::Netns {
            path: path.to_owned(),
            source,
        }),
        Ok(f) if want.is_some_and(|w| id(&f, path).ok() != Some(w)) => Ok(None),
        Ok(f) => {
            let probe = f.try_clone().map_err(|source| NetError::Netns {
                path: path.to_owned(),
                source,
            })?;
            let alive = std::thread::spawn(move || setns(&probe, CloneFlags::CLONE_NEWNET).is_ok())
                .join()
                .unwrap_or(false);
            Ok(alive.then_some(f))
        }
    }
}

/// Runs `work` with a netlink handle on a thread inside the namespace `ns` (opened from
/// `path`, named in errors) and returns what it returns.
pub fn run_in<T, F, Fut>(ns: File, path: &Path, work: F) -> Result<T, NetError>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, NetError>>,
{
    let owned: PathBuf = path.to_owned();
    let p = owned.clone();
    let thread = std::thread::Builder::new()
        .name("crx-netns".into())
        .spawn(move || {
            let ns_err = |source: std::io::Error| NetError::Netns {
                path: p.clone(),
                source,
            };
            setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|e| ns_err(e.into()))?;
            drop(ns);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .map_err(ns_err)?;
            rt.block_on(async {
                let (conn, handle, _) = rtnetlink::new_connection().map_err(ns_err)?;
                tokio::spawn(conn);
                work(handle).await
            })
        })
        .map_err(|source| NetError::Netns {
            path: owned.clone(),
            source,
        })?;
    thread.join().map_err(|_| NetError::Thread(owned))?
}

/// Creates a network namespace kept by a bind mount on `path` (a new empty file), as
/// `ip netns add` does: a thread unshares its network namespace and bind-mounts its own
/// `/proc/self/task/TID/ns/net` there, then ends; the mount keeps the namespace.
pub(super) fn create(path: &Path) -> Result<(), NetError> {
    use nix::mount::{mount, MsFlags};
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source: std::io::Error| NetError::Netns {
        path: path.to_owned(),
        source,
    };
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    let target = path.to_owned();
    let made = std::thread::spawn(move || -> nix::Result<()> {
        nix::sched::unshare(CloneFlags::CLONE_NEWNET)?;
        let own = format!("/proc/self/task/{}/ns/net", nix::unistd::gettid());
        mount(
            Some(own.as_str()),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
    })
    .join()
    .unwrap_or(Err(nix::errno::Errno::EIO));
    if let Err(e) = made {
        let _ = std::fs::remove_file(path);
        return Err(err(e.into()));
    }
    Ok(())
}

/// Undoes [`create`]: unmounts `path` (the namespace goes once nothing else holds it) and
/// removes the file; a path already gone is success.
pub(super) fn destroy(path: &Path) -> Result<(), NetError> {
    use nix::mount::{umount2, MntFlags};
    // EINVAL: not (or no longer) a mount point.
    let _ = umount2(path, MntFlags::MNT_DETACH);
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(NetError::Netns {
            path: path.to_owned(),
            source: e,
        }),
        _ => Ok(()),
    }
}
