//! Advisory file locks (`flock`), released when the guard is dropped or the process dies.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

use rustix::fs::{flock, FlockOperation};

/// A held lock on a lock file.
#[derive(Debug)]
pub struct FileLock {
    _file: File,
}

impl FileLock {
    /// Blocks until `path` is locked exclusively.
    pub fn exclusive(path: &Path) -> io::Result<Self> {
        Self::take(path, FlockOperation::LockExclusive)
    }

    /// Blocks until `path` is locked shared (other shared holders allowed).
    pub fn shared(path: &Path) -> io::Result<Self> {
        Self::take(path, FlockOperation::LockShared)
    }

    fn take(path: &Path, op: FlockOperation) -> io::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)?;
        loop {
            match flock(&file, op) {
                Ok(()) => return Ok(Self { _file: file }),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}
