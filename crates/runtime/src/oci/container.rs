//! A container's directory under `--root`: `<root>/<id>/` holding `state.json`, `lock`,
//! `config.json` (the bundle's spec as created), the VM's files and the monitor's socket.
//! The directory is made with `mkdir` (so a duplicate id fails atomically); commands that
//! change a container hold its `lock` (flock) while they do. The root (when we make it) and
//! every container's directory are 0700, their files 0600, whatever the umask: `config.json`
//! holds the container's environment.

use std::fs;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use super::error::{io, OciError};
use crate::record::{Record, SandboxFiles};

/// One container's directory.
#[derive(Debug, Clone)]
pub struct ContainerDir {
    pub id: String,
    pub dir: PathBuf,
}

/// A held per-container lock (released on drop, or when the process dies).
#[derive(Debug)]
pub struct Lock(#[allow(dead_code)] Flock<fs::File>);

/// Whether `id` is a valid container id (runc's rule: `^[\w+-\.]+$`, not `.` or `..`).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id != "."
        && id != ".."
        && id.len() <= 1024
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_+-.".contains(c))
}

impl SandboxFiles for ContainerDir {
    fn dir(&self) -> &Path {
        &self.dir
    }
}

impl ContainerDir {
    /// The monitor's socket (start, pause, resume).
    pub fn monitor_socket(&self) -> PathBuf {
        self.dir.join("monitor.sock")
    }

    /// Makes `<root>/<id>` (the root with mode 0700 when missing) and locks it.
    pub fn create(root: &Path, id: &str) -> Result<(ContainerDir, Lock), OciError> {
        if !valid_id(id) {
            return Err(OciError::BadId(id.to_owned()));
        }
        let dir = root.join(id);
        let c = ContainerDir {
            id: id.to_owned(),
            dir,
        };
        crate::paths::check_socket_paths([&*c.vsock_path(), &*c.monitor_socket()])?;
        crate::paths::create_private_dir_all(root).map_err(io(root))?;
        match crate::paths::create_private_dir(&c.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(OciError::Exists(id.to_owned()))
            }
            Err(e) => return Err(io(&c.dir)(e)),
        }
        match c.lock() {
            Ok(l) => Ok((c, l)),
            Err(e) => {
                let _ = fs::remove_dir_all(&c.dir);
                Err(e)
            }
        }
    }

    /// The existing container `id`.
    pub fn open(root: &Path, id: &str) -> Result<ContainerDir, OciError> {
        if !valid_id(id) {
            return Err(OciError::NotFound(id.to_owned()));
        }
        let dir = root.join(id);
        if !dir.is_dir() {
            return Err(OciError::NotFound(id.to_owned()));
        }
        Ok(ContainerDir {
            id: id.to_owned(),
            dir,
        })
    }

    /// Takes the container's lock (waits for it). Fails with `NotFound` when the container was
    /// deleted while we waited.
    pub fn lock(&self) -> Result<Lock, OciError> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.dir.join("lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => OciError::NotFound(self.id.clone()),
                _ => io(&path)(e),
            })?;
        let lock =
            Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| io(&path)(e.into()))?;
        if !self.dir.is_dir() {
            return Err(OciError::NotFound(self.id.clone()));
        }
        Ok(Lock(lock))
    }

    /// The record; `None` while `create` has not written one yet (or was killed before).
    pub fn record(&self) -> Result<Option<Record>, OciError> {
        match self.read_record() {
            Ok(r) => Ok(Some(r)),
            Err(e) if e.is_missing() && self.dir.is_dir() => Ok(None),
            Err(e) if e.is_missing() => Err(OciError::NotFound(self.id.clone())),
            Err(e) => Err(e.into()),
        }
    }

    /// The record, which must exist.
    pub fn load(&self) -> Result<Record, OciError> {
        self.record()?
            .ok_or_else(|| OciError::NotFound(self.id.clone()))
    }

    pub fn save(&self, r: &Record) -> Result<(), OciError> {
        Ok(self.write_record(r)?)
    }

    /// Removes the directory and everything in it (after its bind mounts, which must go
    /// first: see [`super::rootfs::unbind_all`]).
    pub fn remove(&self) -> Result<(), OciError> {
        // Its VMM's cgroup, and whatever still runs there (ADR 0011); best effort: a sweep
        // takes what is left.
        let _ = crate::jail::cgroup::remove(&self.dir.join("vm"));
        super::rootfs::unbind_all(&self.dir)?;
        match fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&self.dir)(e)),
        }
    }
}

/// Every container under `root`, by id.
pub fn list(root: &Path) -> Result<Vec<ContainerDir>, OciError> {
    let entries = match fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(root)(e)),
    };
    let mut out: Vec<ContainerDir> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|id| valid_id(id))
        .map(|id| ContainerDir {
            dir: root.join(&id),
            id,
        })
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_runc() {
        for ok in ["a", "c1", "abc_def+g-h.i", &"f".repeat(64)] {
            assert!(valid_id(ok), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "é"] {
            assert!(!valid_id(bad), "{bad}");
        }
    }

    #[test]
    fn create_is_exclusive_and_open_finds_it() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path().join("state");
        let (c, lock) = ContainerDir::create(&r, "c1").unwrap();
        assert!(matches!(
            ContainerDir::create(&r, "c1"),
            Err(OciError::Exists(_))
        ));
        assert!(c.record().unwrap().is_none(), "no record yet");
        drop(lock);
        let o = ContainerDir::open(&r, "c1").unwrap();
        assert_eq!(o.dir, c.dir);
        assert!(matches!(
            ContainerDir::open(&r, "nope"),
            Err(OciError::NotFound(_))
        ));
        assert!(matches!(
            ContainerDir::create(&r, "../x"),
            Err(OciError::BadId(_))
        ));
        assert_eq!(list(&r).unwrap().len(), 1);
        o.remove().unwrap();
        assert!(list(&r).unwrap().is_empty());
        assert!(matches!(o.lock(), Err(OciError::NotFound(_))));
    }

    #[test]
    fn lock_is_exclusive_between_holders() {
        let root = tempfile::tempdir().unwrap();
        let (c, lock) = ContainerDir::create(root.path(), "c1").unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let c2 = c.clone();
        let t = std::thread::spawn(move || {
            let _l = c2.lock().unwrap();
            tx.send(()).unwrap();
        });
        assert!(rx
            .recv_timeout(std::time::Duration::from_millis(200))
            .is_err());
        drop(lock);
        rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
        t.join().unwrap();
    }

    #[test]
    fn long_roots_are_refused_up_front() {
        let root = tempfile::tempdir().unwrap();
        let long = root.path().join("x".repeat(100));
        assert!(matches!(
            ContainerDir::create(&long, "c1"),
            Err(OciError::Runtime(crate::RuntimeError::SocketPathTooLong(_)))
        ));
        assert!(!long.exists());
    }
}
