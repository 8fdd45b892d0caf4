//! Passing file descriptors (stdio stream sockets) from the agent to the container helper with
//! SCM_RIGHTS, alongside ordinary frames.

use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags, UnixAddr};

/// Most descriptors one message carries (stdin, stdout, stderr).
pub const MAX_FDS: usize = 3;

/// Writes `buf` to `sock`, the descriptors `fds` attached to its first byte.
pub fn write_with_fds(sock: &mut UnixStream, buf: &[u8], fds: &[OwnedFd]) -> io::Result<()> {
    if fds.is_empty() {
        return sock.write_all(buf);
    }
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let n = loop {
        match sendmsg::<UnixAddr>(
            sock.as_raw_fd(),
            &[IoSlice::new(buf)],
            &[ControlMessage::ScmRights(&raw)],
            MsgFlags::empty(),
            None,
        ) {
            Ok(n) => break n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    sock.write_all(&buf[n..])
}

/// A reader that keeps the descriptors arriving with the bytes, in order.
pub struct FdReader {
    sock: UnixStream,
    fds: VecDeque<OwnedFd>,
}

impl FdReader {
    /// Reads from `sock`.
    pub fn new(sock: UnixStream) -> FdReader {
        FdReader {
            sock,
            fds: VecDeque::new(),
        }
    }

    /// The underlying socket (for poll).
    pub fn socket(&self) -> &UnixStream {
        &self.sock
    }

    /// The oldest received descriptor not taken yet.
    pub fn take_fd(&mut self) -> Option<OwnedFd> {
        self.fds.pop_front()
    }
}

impl Read for FdReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
        let mut iov = [IoSliceMut::new(buf)];
        let msg = loop {
            match recvmsg::<UnixAddr>(
                self.sock.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(m) => break m,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        };
        let n = msg.bytes;
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::ScmRights(raw) = c {
                    for fd in raw {
                        // SAFETY: the kernel has just installed `fd` in this process's table
                        // for this message; nothing else refers to it, so we own it.
                        self.fds.push_back(unsafe { OwnedFd::from_raw_fd(fd) });
                    }
                }
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_fds_with_bytes() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let (p, mut q) = UnixStream::pair().unwrap();
        write_with_fds(&mut a, b"hello", &[OwnedFd::from(p)]).unwrap();
        a.write_all(b" world").unwrap();
        drop(a);
        let mut r = FdReader::new(b);
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"hello world");
        let fd = r.take_fd().expect("an fd");
        assert!(r.take_fd().is_none());
        let mut s = UnixStream::from(fd);
        s.write_all(b"x").unwrap();
        let mut one = [0u8; 1];
        q.read_exact(&mut one).unwrap();
        assert_eq!(&one, b"x");
    }
}
