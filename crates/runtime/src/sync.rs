//! Start-up synchronisation through a pipe, not polling (as runc's exec FIFO and crun's sync
//! pipe): a process that starts a monitor keeps the read end; the monitor inherits the write
//! end and writes one report, "ready" (with warnings for its starter to log) or a typed
//! failure, then closes it. A monitor that dies before reporting closes it too: the starter
//! reads end-of-file and knows at once, without looking at any file.
//!
//! The write end is close-on-exec in the starter (no other child inherits it) and again in
//! the monitor once taken ([`SyncWriter::inherited`]), so that the VMM and virtiofsd it starts
//! never hold it open.
#![allow(unsafe_code)] // adopting the inherited descriptor (from_raw_fd) alone

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use serde::{Deserialize, Serialize};

/// The longest report read (a failure's chain, warnings): more is cut.
const MAX_REPORT: u64 = 64 * 1024;

/// What a monitor reports to its starter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Report {
    /// Up (a container created, an exec running); warnings for the starter to log, and the
    /// id of what it made when the starter could not know it.
    Ready {
        warnings: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
    },
    /// It failed before that: why (an error chain on one line).
    Failed { reason: String },
}

/// Errors of the sync pipe itself.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("making the sync pipe")]
    Pipe(#[source] nix::Error),
    #[error("sync descriptor {0} is not an open pipe inherited from the starter")]
    NotInherited(RawFd),
    #[error("reading the monitor's report")]
    Read(#[source] std::io::Error),
    /// End-of-file without a report: the monitor died first.
    #[error("the monitor exited before reporting")]
    Gone,
    #[error("the monitor's report is malformed")]
    Malformed(#[source] serde_json::Error),
}

/// The starter's end.
#[derive(Debug)]
pub struct SyncReader(File);

/// The monitor's end.
#[derive(Debug)]
pub struct SyncWriter(File);

/// A new pipe, both ends close-on-exec (hand the writer's fd to one child with
/// [`crate::child::keep_fds`], then drop the writer here).
pub fn pipe() -> Result<(SyncReader, SyncWriter), SyncError> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(SyncError::Pipe)?;
    Ok((SyncReader(File::from(r)), SyncWriter(File::from(w))))
}

impl SyncReader {
    /// Waits for the report: blocks until the monitor writes it and closes its end, or dies.
    pub fn wait(self) -> Result<Report, SyncError> {
        let mut text = Vec::new();
        self.0
            .take(MAX_REPORT)
            .read_to_end(&mut text)
            .map_err(SyncError::Read)?;
        if text.is_empty() {
            return Err(SyncError::Gone);
        }
        serde_json::from_slice(&text).map_err(SyncError::Malformed)
    }
}

impl SyncWriter {
    /// The descriptor to pass to the child (its number there too).
    pub fn raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    /// Takes the write end inherited as `fd` (checked to be an open pipe) and makes it
    /// close-on-exec again, so that our own children never hold it.
    pub fn inherited(fd: RawFd) -> Result<SyncWriter, SyncError> {
        use nix::fcntl::{fcntl, FcntlArg, FdFlag};
        use nix::sys::stat::{fstat, SFlag};
        if fd < 3 {
            return Err(SyncError::NotInherited(fd));
        }
        let st = fstat(fd).map_err(|_| SyncError::NotInherited(fd))?;
        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFIFO {
            return Err(SyncError::NotInherited(fd));
        }
        fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
            .map_err(|_| SyncError::NotInherited(fd))?;
        // SAFETY: `fd` is an open pipe (checked above) that this process was given to own: the
        // starter passed its number for us alone, and nothing else here refers to it.
        Ok(SyncWriter(File::from(unsafe { OwnedFd::from_raw_fd(fd) })))
    }

    /// Writes `report` and closes the pipe (a starter gone meanwhile is not an error here:
    /// nobody is left to tell).
    pub fn report(mut self, report: &Report) {
        let text = serde_json::to_vec(report).expect("a report serializes");
        let _ = self.0.write_all(&text);
    }

    /// [`Report::Ready`].
    pub fn ready(self, warnings: Vec<String>) {
        self.report(&Report::Ready { warnings, id: None });
    }

    /// [`Report::Failed`] with `e`'s chain.
    pub fn failed(self, e: &dyn std::error::Error) {
        self.report(&Report::Failed {
            reason: crx_proto::chain(e),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_crosses_the_pipe() {
        let (r, w) = pipe().unwrap();
        let t = std::thread::spawn(move || w.ready(vec!["left out: /etc/x".into()]));
        assert_eq!(
            r.wait().unwrap(),
            Report::Ready {
                warnings: vec!["left out: /etc/x".into()],
                id: None,
            }
        );
        t.join().unwrap();
        let (r, w) = pipe().unwrap();
        w.failed(&std::io::Error::other("no vmm"));
        assert_eq!(
            r.wait().unwrap(),
            Report::Failed {
                reason: "no vmm".into()
            }
        );
    }

    #[test]
    fn a_writer_that_dies_silent_is_seen_at_once() {
        let (r, w) = pipe().unwrap();
        drop(w);
        assert!(matches!(r.wait(), Err(SyncError::Gone)));
        let (r, w) = pipe().unwrap();
        let mut f = w.0;
        f.write_all(b"{\"ready\":").unwrap();
        drop(f);
        assert!(matches!(r.wait(), Err(SyncError::Malformed(_))));
    }

    #[test]
    fn only_a_pipe_is_adopted() {
        let file = tempfile::tempfile().unwrap();
        assert!(matches!(
            SyncWriter::inherited(file.as_raw_fd()),
            Err(SyncError::NotInherited(_))
        ));
        assert!(matches!(
            SyncWriter::inherited(1),
            Err(SyncError::NotInherited(1))
        ));
        // A pipe end is adopted, and close-on-exec again.
        let (_r, w) = pipe().unwrap();
        let fd = w.raw_fd();
        std::mem::forget(w); // ownership moves to the adopted writer
        let back = SyncWriter::inherited(fd).unwrap();
        let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_ne!(flags & nix::libc::FD_CLOEXEC, 0);
        drop(back);
    }
}
