//! Host terminals: the host side of a container's pty.
//!
//! A process with `process.terminal: true` gets a pty made *in the guest* (the guest agent asks
//! libcontainer for it; the container sees `/dev/pts/N` of its own devpts). The host reaches
//! its master through one `pty` stream connection ([`crate::agent::Agent::open_stream`] with
//! `StreamKind::Pty`, opened before the process is created): raw bytes both ways, and the
//! window size travels separately as a `resize_pty` request on a control connection.
//!
//! This module gives the host side of that:
//!
//! - [`pump`]: relays a local input and output (our stdin and stdout for `crx run -t`, or the
//!   slave of a host pty for an OCI console socket) with the guest's `pty` stream until the
//!   guest ends it, and reports the window size of a local terminal at start and whenever it
//!   changes (polled with TIOCGWINSZ every [`SIZE_POLL`]: that sees the changes a SIGWINCH
//!   announces without owning a signal disposition, and works on a pty slave that is not our
//!   controlling terminal, which never gets SIGWINCH). [`agent_resizer`] turns the reports into
//!   `resize_pty` requests.
//! - [`RawMode`]: our terminal in raw mode, restored on drop (the guest's terminal does the line
//!   discipline: echo, ^C, ^D; ours must pass every byte through).
//! - For runc's `--console-socket` (the caller wants a pty master it can hand to its user, as
//!   containerd's shim does): [`open_pty`] makes a host pty pair (slave raw), [`send_console`]
//!   connects to the console socket and sends the master the way runc does (SCM_RIGHTS, one
//!   descriptor, the message bytes being the name, `/dev/ptmx`), and [`pump`] relays the slave
//!   (input and output, and its window size: the owner of the master sets it with TIOCSWINSZ)
//!   with the guest stream; [`relay_console`] does all three. [`recv_fd`] is the receiving end
//!   (tests, and callers acting as a console socket themselves).
//!
//! ```no_run
//! # fn f(agent: crx_runtime::agent::Agent, guest: std::os::unix::net::UnixStream)
//! #     -> Result<(), crx_runtime::tty::TtyError> {
//! use crx_runtime::tty;
//! // `guest`: the container's pty stream, opened before it was created with terminal: true.
//! let resize = tty::agent_resizer(agent, "ctr".into(), None);
//! // Sends a host pty master to runc's --console-socket, then relays until the guest is done.
//! tty::relay_console(std::path::Path::new("/run/console.sock"), guest, resize)?;
//! # Ok(()) }
//! ```
#![allow(unsafe_code)] // TIOCGWINSZ / TIOCSWINSZ

use std::fs::File;
use std::io::{ErrorKind, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::libc;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use nix::sys::termios::{self, SetArg, Termios};

use crate::agent::Agent;

/// How often [`pump`] looks at the local window size.
pub const SIZE_POLL: Duration = Duration::from_millis(250);

/// The end-of-file character of a cooked terminal (^D), sent when [`pump`]'s input ends.
pub const VEOF: u8 = 0x04;

/// The name runc sends with a console master.
pub const PTMX_NAME: &str = "/dev/ptmx";

/// Errors of host terminal operations.
#[derive(Debug, thiserror::Error)]
pub enum TtyError {
    #[error("opening a pty pair")]
    OpenPty(#[source] nix::Error),
    #[error("terminal attributes")]
    Termios(#[source] nix::Error),
    #[error("setting the window size")]
    SetWindowSize(#[source] std::io::Error),
    #[error("connecting to the console socket {path}")]
    ConnectConsole {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("sending the pty master")]
    SendFd(#[source] nix::Error),
    #[error("receiving a descriptor")]
    RecvFd(#[source] std::io::Error),
    #[error("the message carried no descriptor")]
    NoFd,
    #[error("duplicating a descriptor")]
    Dup(#[source] std::io::Error),
    #[error("relaying the terminal")]
    Relay(#[source] std::io::Error),
}

/// A terminal's window size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WinSize {
    pub rows: u16,
    pub cols: u16,
}

/// The window size of terminal `fd` (TIOCGWINSZ); `None` when it is not a terminal.
pub fn window_size(fd: impl AsFd) -> Option<WinSize> {
    let mut ws = winsize(WinSize { rows: 0, cols: 0 });
    // SAFETY: TIOCGWINSZ writes one `winsize` through the pointer, which points to a live
    // local of that type; the descriptor is borrowed, hence open.
    let r = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    (r == 0).then_some(WinSize {
        rows: ws.ws_row,
        cols: ws.ws_col,
    })
}

fn winsize(size: WinSize) -> libc::winsize {
    libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// Sets the window size of terminal `fd` (TIOCSWINSZ; on a pty master it is the pair's size).
pub fn set_window_size(fd: impl AsFd, size: WinSize) -> Result<(), TtyError> {
    let ws = winsize(size);
    // SAFETY: TIOCSWINSZ reads one `winsize` through the pointer, which points to a live local
    // of that type; the descriptor is borrowed, hence open.
    let r = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if r != 0 {
        return Err(TtyError::SetWindowSize(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// A host pty pair.
#[derive(Debug)]
pub struct PtyPair {
    pub master: OwnedFd,
    pub slave: OwnedFd,
}

/// A new host pty pair (close-on-exec both), its slave in raw mode: the guest's terminal does
/// the line discipline, the host pair only carries bytes.
pub fn open_pty() -> Result<PtyPair, TtyError> {
    let p = nix::pty::openpty(None, None).map_err(TtyError::OpenPty)?;
    for fd in [&p.master, &p.slave] {
        nix::fcntl::fcntl(
            fd.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )
        .map_err(TtyError::OpenPty)?;
    }
    let mut t = termios::tcgetattr(&p.slave).map_err(TtyError::Termios)?;
    termios::cfmakeraw(&mut t);
    termios::tcsetattr(&p.slave, SetArg::TCSANOW, &t).map_err(TtyError::Termios)?;
    Ok(PtyPair {
        master: p.master,
        slave: p.slave,
    })
}

/// Sends `fd` over the connected Unix socket `sock`, the message bytes being `name` (runc's
/// `utils.SendFile`: one SCM_RIGHTS descriptor, the file's name as the payload).
pub fn send_fd(sock: &UnixStream, name: &str, fd: BorrowedFd<'_>) -> Result<(), TtyError> {
    let raw = [fd.as_raw_fd()];
    let iov = [IoSlice::new(name.as_bytes())];
    loop {
        match sendmsg::<()>(
            sock.as_raw_fd(),
            &iov,
            &[ControlMessage::ScmRights(&raw)],
            MsgFlags::empty(),
            None,
        ) {
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(TtyError::SendFd(e)),
        }
    }
}

/// Connects to the console socket at `path` (runc's `--console-socket`) and sends `master`
/// with `name` (runc sends [`PTMX_NAME`]).
pub fn send_console(path: &Path, master: impl AsFd, name: &str) -> Result<(), TtyError> {
    let sock = UnixStream::connect(path).map_err(|source| TtyError::ConnectConsole {
        path: path.to_owned(),
        source,
    })?;
    send_fd(&sock, name, master.as_fd())
}

/// Receives one descriptor and the name sent with it (at most 4 KiB) from `sock`.
pub fn recv_fd(sock: &UnixStream) -> Result<(String, OwnedFd), TtyError> {
    let mut name = vec![0u8; 4096];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let (n, fds) = {
        let mut iov = [IoSliceMut::new(&mut name)];
        let msg = loop {
            match recvmsg::<()>(
                sock.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(m) => break m,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(TtyError::RecvFd(e.into())),
            }
        };
        let mut fds = Vec::new();
        for c in msg.cmsgs().map_err(|e| TtyError::RecvFd(e.into()))? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                for fd in raw {
                    // SAFETY: the kernel installed `fd` in this process for this message just
                    // now; nothing else refers to it, so it is ours to own (and close).
                    fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        (msg.bytes, fds)
    };
    let fd = fds.into_iter().next().ok_or(TtyError::NoFd)?;
    name.truncate(n);
    Ok((String::from_utf8_lossy(&name).into_owned(), fd))
}

/// A terminal in raw mode until this is dropped (then its attributes are restored).
#[derive(Debug)]
pub struct RawMode {
    fd: OwnedFd,
    saved: Termios,
}

impl RawMode {
    /// Puts terminal `fd` in raw mode (cfmakeraw), remembering its attributes.
    pub fn enter(fd: impl AsFd) -> Result<RawMode, TtyError> {
        let fd = fd.as_fd().try_clone_to_owned().map_err(TtyError::Dup)?;
        let saved = termios::tcgetattr(&fd).map_err(TtyError::Termios)?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(&fd, SetArg::TCSANOW, &raw).map_err(TtyError::Termios)?;
        Ok(RawMode { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(&self.fd, SetArg::TCSADRAIN, &self.saved);
    }
}

/// Relays `input` (if any) to the guest's `pty` stream and the stream to `output` until the
/// guest ends the stream (its process and every holder of its terminal are gone). End of
/// `input` (or EIO, a pty slave whose master closed) sends one [`VEOF`] (^D: the reader of a
/// cooked terminal sees end-of-file, as `echo hi | crx run -i -t IMAGE cat` needs) and stops
/// the input; the stream itself stays open (the output goes on). A failing `output`
/// (closed) has the rest of the stream read and dropped, so the guest never blocks on it.
/// `size_of`, a local terminal, is reported to `resize` at start and when its window size
/// changes (looked at every [`SIZE_POLL`]; 0x0, a size nobody set, is not reported). Errors: the guest stream failing.
pub fn pump(
    input: Option<OwnedFd>,
    output: OwnedFd,
    mut guest: UnixStream,
    size_of: Option<OwnedFd>,
    mut resize: impl FnMut(WinSize),
) -> Result<(), TtyError> {
    let mut input = input.map(File::from);
    let mut output = Some(File::from(output));
    // 0x0 is a terminal whose size nobody set: not reported.
    let known = |fd: &OwnedFd| window_size(fd).filter(|s| s.rows != 0 || s.cols != 0);
    let mut size = size_of.as_ref().and_then(known);
    if let Some(s) = size {
        resize(s);
    }
    let mut checked = Instant::now();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let (g_rev, i_rev) = {
            let mut fds = vec![PollFd::new(guest.as_fd(), PollFlags::POLLIN)];
            if let Some(i) = &input {
                fds.push(PollFd::new(i.as_fd(), PollFlags::POLLIN));
            }
            let ms = u16::try_from(SIZE_POLL.as_millis()).unwrap_or(u16::MAX);
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(TtyError::Relay(e.into())),
            }
            let rev = |f: &PollFd<'_>| f.revents().unwrap_or(PollFlags::empty());
            (
                rev(&fds[0]),
                fds.get(1).map(rev).unwrap_or(PollFlags::empty()),
            )
        };
        if !g_rev.is_empty() {
            let n = match guest.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(TtyError::Relay(e)),
            };
            if n == 0 {
                return Ok(());
            }
            if let Some(o) = &mut output {
                if o.write_all(&buf[..n]).and_then(|()| o.flush()).is_err() {
                    output = None;
                }
            }
        }
        if !i_rev.is_empty() {
            if let Some(i) = &mut input {
                let end = match i.read(&mut buf) {
                    Ok(0) => true,
                    Ok(n) => {
                        guest.write_all(&buf[..n]).map_err(TtyError::Relay)?;
                        false
                    }
                    Err(e) => e.kind() != ErrorKind::Interrupted,
                };
                if end {
                    input = None;
                    guest.write_all(&[VEOF]).map_err(TtyError::Relay)?;
                }
            }
        }
        if checked.elapsed() >= SIZE_POLL {
            checked = Instant::now();
            if let Some(now) = size_of.as_ref().and_then(known) {
                if size != Some(now) {
                    size = Some(now);
                    resize(now);
                }
            }
        }
    }
}

/// runc's `--console-socket` for a guest terminal: makes a host pty pair ([`open_pty`]), sends
/// its master to the console socket at `console_socket` ([`send_console`], [`PTMX_NAME`]),
/// closes our copy of it, and relays the slave with `guest` (the process's `pty` stream) and
/// the slave's window size to `resize` ([`pump`]) until the guest ends the stream. Blocks: run
/// it on a thread of its own (or in the process that outlives `create`).
pub fn relay_console(
    console_socket: &Path,
    guest: UnixStream,
    resize: impl FnMut(WinSize),
) -> Result<(), TtyError> {
    let PtyPair { master, slave } = open_pty()?;
    send_console(console_socket, &master, PTMX_NAME)?;
    // The receiver holds the master now; once it closes it, our input ends (EIO).
    drop(master);
    let dup = |fd: &OwnedFd| fd.try_clone().map_err(TtyError::Dup);
    let (input, output) = (dup(&slave)?, dup(&slave)?);
    pump(Some(input), output, guest, Some(slave), resize)
}

/// A `resize` for [`pump`]: each size becomes a `resize_pty` request for container `id` (or
/// its exec `exec_id`) on a control connection of its own, opened at the first resize and
/// reopened after a failure. Failures are dropped (the process may have exited).
pub fn agent_resizer(
    agent: Agent,
    id: String,
    exec_id: Option<String>,
) -> impl FnMut(WinSize) + Send {
    let mut control = None;
    move |s: WinSize| {
        if control.is_none() {
            control = agent.control().ok();
        }
        if let Some(c) = &mut control {
            let r = c.call(crx_proto::Request::ResizePty {
                id: id.clone(),
                exec_id: exec_id.clone(),
                rows: s.rows,
                cols: s.cols,
            });
            if matches!(
                r,
                Err(crx_proto::ClientError::Proto(_)
                    | crx_proto::ClientError::Closed
                    | crx_proto::ClientError::Timeout { .. }
                    | crx_proto::ClientError::Broken)
            ) {
                control = None;
            }
        }
    }
}

#[cfg(test)]
mod tests;
