//! Files the runtime opened for the VMM: a path `/proc/self/fd/N` in the VM config names a
//! descriptor crx-vmm inherited. It is duplicated, not reopened: reopening through `/proc`
//! checks the file's permissions again, and a jailed VMM (ADR 0011) runs as a user that may
//! not open the file itself (an image disk is 0600 root). Any other path is opened normally.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};
use std::path::Path;

/// The descriptor number of a `/proc/self/fd/N` path.
pub fn fd_number(path: &Path) -> Option<RawFd> {
    let n = path.to_str()?.strip_prefix("/proc/self/fd/")?;
    n.parse().ok().filter(|n: &RawFd| *n >= 0)
}

/// Opens `path` for reading (and writing if `write`), duplicating an inherited descriptor
/// named as `/proc/self/fd/N` after checking that its access mode allows it.
pub fn open(path: &Path, write: bool) -> io::Result<File> {
    let Some(fd) = fd_number(path) else {
        return OpenOptions::new().read(true).write(write).open(path);
    };
    let mode = status_flags(fd)? & libc::O_ACCMODE;
    let readable = mode == libc::O_RDONLY || mode == libc::O_RDWR;
    let writable = mode == libc::O_WRONLY || mode == libc::O_RDWR;
    if !readable || (write && !writable) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "inherited descriptor {fd} is not open for reading{}",
                if write { " and writing" } else { "" }
            ),
        ));
    }
    Ok(File::from(dup(fd)?))
}

/// A close-on-exec duplicate of inherited descriptor `fd`; the inherited number itself is
/// left alone, so nothing else in this process owns what the duplicate's holder closes.
pub fn dup(fd: RawFd) -> io::Result<OwnedFd> {
    status_flags(fd)?;
    // SAFETY: fcntl(F_GETFL) above proved `fd` open in this process for this call.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    borrowed.try_clone_to_owned()
}

/// fcntl(F_GETFL) of `fd`: fails with EBADF when `fd` is not open.
fn status_flags(fd: RawFd) -> io::Result<libc::c_int> {
    // SAFETY: fcntl(F_GETFL) on any integer is safe: an fd we do not hold fails with EBADF.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(flags)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;

    #[test]
    fn an_inherited_descriptor_is_duplicated_not_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("disk");
        std::fs::write(&p, b"disk bytes").unwrap();
        let mut held = File::open(&p).unwrap();
        let mut first = [0u8; 5];
        held.read_exact(&mut first).unwrap();
        // A duplicate shares the file offset (a reopen would start at 0).
        let path = format!("/proc/self/fd/{}", held.as_raw_fd());
        let mut f = open(Path::new(&path), false).unwrap();
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        assert_eq!(s, "bytes");
        // Read-only: not for writing.
        let err = open(Path::new(&path), true).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert!(open(Path::new("/proc/self/fd/999999"), false).is_err());
        // Any other path opens normally.
        let mut w = open(&p, true).unwrap();
        w.write_all(b"D").unwrap();
        assert_eq!(fd_number(Path::new("/proc/self/fd/x")), None);
        assert_eq!(fd_number(&p), None);
    }
}
