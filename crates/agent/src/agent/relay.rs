//! Relays a container's pty master and the host's `pty` stream connection, both directions.
//!
//! One thread per terminal, non-blocking descriptors and `poll`, at most [`BUF_CAP`] bytes
//! buffered each way: when the host does not read, the relay stops reading the master and the
//! process blocks on its terminal (what a real terminal does), nothing is dropped.
//!
//! - The process side ends when every holder of the slave has closed it: the master then reads
//!   what is left, then `EIO`. The relay writes out what it holds, shuts the stream down for
//!   writing (the host reads end-of-file) and returns [`RelayEnd::Exited`].
//! - The host half-closing the stream (end-of-file on read) only stops the input.
//! - The host going away (hang-up, or a failed write) ends the relay at once
//!   ([`RelayEnd::HostGone`]): the master is closed, which hangs the terminal up (SIGHUP to the
//!   process's session), so a disconnected host neither leaks the process's terminal nor keeps
//!   a thread of the agent.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// Most bytes buffered in each direction.
pub const BUF_CAP: usize = 64 * 1024;

/// How a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayEnd {
    /// The terminal's last user closed it; its output was delivered.
    Exited,
    /// The host closed the stream or it broke.
    HostGone,
}

fn nonblocking(fd: impl AsFd) -> nix::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(fd.as_fd(), FcntlArg::F_GETFL)?);
    fcntl(fd.as_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map(drop)
}

/// One direction: a bounded buffer.
#[derive(Default)]
struct Pipe {
    buf: Vec<u8>,
    eof: bool,
}

impl Pipe {
    fn room(&self) -> usize {
        BUF_CAP.saturating_sub(self.buf.len())
    }

    /// Reads what `src` has (at most the room left); `Ok(false)`: nothing now.
    /// End-of-file and `EIO` (a master whose slave is closed) set `eof`.
    fn fill(&mut self, src: &mut impl Read, scratch: &mut [u8]) -> std::io::Result<bool> {
        let n = scratch.len().min(self.room());
        if n == 0 {
            return Ok(false);
        }
        match src.read(&mut scratch[..n]) {
            Ok(0) => self.eof = true,
            Ok(k) => self.buf.extend_from_slice(&scratch[..k]),
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                return Ok(false)
            }
            Err(e) if e.raw_os_error() == Some(Errno::EIO as i32) => self.eof = true,
            Err(e) => return Err(e),
        }
        Ok(true)
    }

    /// Writes what `dst` takes.
    fn drain(&mut self, dst: &mut impl Write) -> std::io::Result<()> {
        match dst.write(&self.buf) {
            Ok(k) => {
                self.buf.drain(..k);
                Ok(())
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

/// Relays `master` (a pty master) and `stream` (the host's connection) until the process side
/// is done and its output delivered, or the host is gone. Both descriptors are closed on return.
/// `done` runs once the process side is done, before the host sees the end of the output (so a
/// host that read it all finds the terminal gone).
pub fn relay(master: OwnedFd, stream: OwnedFd, done: impl FnOnce()) -> RelayEnd {
    if nonblocking(&master).is_err() || nonblocking(&stream).is_err() {
        return RelayEnd::HostGone;
    }
    let mut master = File::from(master);
    let mut stream = UnixStream::from(stream);
    let mut out = Pipe::default(); // master -> host
    let mut inp = Pipe::default(); // host -> master
    let mut scratch = vec![0u8; 16 * 1024];
    loop {
        if out.eof && out.buf.is_empty() {
            done();
            let _ = stream.shutdown(std::net::Shutdown::Write);
            return RelayEnd::Exited;
        }
        let mut m_ev = PollFlags::empty();
        if !out.eof && out.room() > 0 {
            m_ev |= PollFlags::POLLIN;
        }
        if !out.eof && !inp.buf.is_empty() {
            m_ev |= PollFlags::POLLOUT;
        }
        let mut s_ev = PollFlags::empty();
        if !inp.eof && inp.room() > 0 {
            s_ev |= PollFlags::POLLIN;
        }
        if !out.buf.is_empty() {
            s_ev |= PollFlags::POLLOUT;
        }
        let (m_rev, s_rev) = {
            // A master with nothing to do (done, or the host not reading) is left out: its
            // POLLHUP would spin the loop.
            let mut fds = vec![PollFd::new(stream.as_fd(), s_ev)];
            if !m_ev.is_empty() {
                fds.push(PollFd::new(master.as_fd(), m_ev));
            }
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(_) => return RelayEnd::HostGone,
            }
            let rev = |f: &PollFd<'_>| f.revents().unwrap_or(PollFlags::empty());
            (
                fds.get(1).map(rev).unwrap_or(PollFlags::empty()),
                rev(&fds[0]),
            )
        };
        let bad = PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL;
        if s_rev.intersects(bad) {
            return RelayEnd::HostGone;
        }
        if s_rev.contains(PollFlags::POLLOUT) && out.drain(&mut stream).is_err() {
            return RelayEnd::HostGone;
        }
        if s_rev.contains(PollFlags::POLLIN) && inp.fill(&mut stream, &mut scratch).is_err() {
            return RelayEnd::HostGone;
        }
        if m_rev.intersects(PollFlags::POLLIN | bad) && out.room() > 0 {
            match out.fill(&mut master, &mut scratch) {
                // A hang-up with nothing to read: the slave is gone.
                Ok(false) if m_rev.intersects(bad) => out.eof = true,
                Ok(_) => {}
                Err(_) => out.eof = true,
            }
        }
        if m_rev.contains(PollFlags::POLLOUT) && inp.drain(&mut master).is_err() {
            inp.buf.clear();
        }
        if out.eof {
            inp.buf.clear();
        }
    }
}
