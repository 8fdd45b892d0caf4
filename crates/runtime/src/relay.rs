//! The one stdio/pty relay: a process's guest streams copied with host file descriptors while
//! its exit is awaited ([`relay_and_wait`]). The host side is the caller's own stdio (`crx`,
//! crx-runc's monitor and exec, whose fds 0-2 are the container's), or for a terminal either
//! the caller's own terminal ([`PtyEnds::ours`]) or the slave of a host pty whose master went
//! to a console socket ([`PtyEnds::slave`]).

use std::io::{self, IsTerminal, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crx_proto::{ExitStatus, StreamKind};

use crate::agent::{Agent, Control};
use crate::error::RuntimeError;
use crate::tty;

/// How long output that arrives after the exit is still copied.
const DRAIN: Duration = Duration::from_secs(2);

/// The host ends of a process's stdio streams.
#[derive(Debug)]
pub struct Stdio {
    pub stdin: UnixStream,
    pub stdout: UnixStream,
    pub stderr: UnixStream,
}

/// Opens stdin, stdout and stderr streams of `id` (or its exec).
pub fn open_stdio(agent: &Agent, id: &str, exec_id: Option<&str>) -> Result<Stdio, RuntimeError> {
    Ok(Stdio {
        stdin: agent.open_stream(id, exec_id, StreamKind::Stdin)?,
        stdout: agent.open_stream(id, exec_id, StreamKind::Stdout)?,
        stderr: agent.open_stream(id, exec_id, StreamKind::Stderr)?,
    })
}

/// The host side of a terminal relay.
#[derive(Debug)]
pub struct PtyEnds {
    input: Option<OwnedFd>,
    output: OwnedFd,
    size_of: Option<OwnedFd>,
    /// Our terminal in raw mode while the relay lasts (restored when dropped).
    _raw: Option<tty::RawMode>,
}

fn dup(fd: BorrowedFd<'_>, what: &str) -> Result<OwnedFd, RuntimeError> {
    fd.try_clone_to_owned()
        .map_err(|source| RuntimeError::Stream {
            what: what.into(),
            source,
        })
}

impl PtyEnds {
    /// Our stdout, and (with `interactive`) our stdin, put in raw mode when it is a terminal;
    /// the window size is our terminal's (stdin's, else stdout's).
    pub fn ours(interactive: bool) -> Result<PtyEnds, RuntimeError> {
        let (stdin, stdout) = (io::stdin(), io::stdout());
        let raw = if interactive && stdin.is_terminal() {
            let raw = tty::RawMode::enter(stdin.as_fd()).map_err(|e| RuntimeError::Stream {
                what: "our terminal (raw mode)".into(),
                source: io::Error::other(e),
            })?;
            Some(raw)
        } else {
            None
        };
        let size_of = if stdin.is_terminal() {
            Some(dup(stdin.as_fd(), "stdin")?)
        } else if stdout.is_terminal() {
            Some(dup(stdout.as_fd(), "stdout")?)
        } else {
            None
        };
        let input = if interactive {
            Some(dup(stdin.as_fd(), "stdin")?)
        } else {
            None
        };
        Ok(PtyEnds {
            input,
            output: dup(stdout.as_fd(), "stdout")?,
            size_of,
            _raw: raw,
        })
    }

    /// The slave of a host pty (its master sent to a console socket): input, output and size.
    pub fn slave(slave: OwnedFd) -> Result<PtyEnds, RuntimeError> {
        Ok(PtyEnds {
            input: Some(dup(slave.as_fd(), "the console's pty")?),
            output: dup(slave.as_fd(), "the console's pty")?,
            size_of: Some(slave),
            _raw: None,
        })
    }
}

/// What is relayed: stdio streams (with `interactive`, our stdin is copied to the process
/// until its end; else its stdin ends at once), or a terminal's stream.
#[derive(Debug)]
pub enum Relay {
    Stdio { streams: Stdio, interactive: bool },
    Pty { stream: UnixStream, ends: PtyEnds },
}

/// Relays the process `exec_id` of container `id` (its init with `None`) and waits on
/// `control` for its exit while `alive()` says its VM runs; its exit status, validated.
/// Output that arrives after the exit is drained for up to two seconds. A terminal's window
/// size is reported at start and when it changes ([`tty::pump`]).
pub fn relay_and_wait(
    control: &mut Control,
    agent: &Agent,
    id: &str,
    exec_id: Option<&str>,
    relay: Relay,
    alive: impl FnMut() -> bool,
) -> Result<ExitStatus, RuntimeError> {
    match relay {
        Relay::Stdio {
            streams,
            interactive,
        } => stdio_and_wait(control, id, exec_id, streams, interactive, alive),
        Relay::Pty { stream, ends } => {
            let resize = tty::agent_resizer(agent.clone(), id.to_owned(), exec_id.map(Into::into));
            let (done_tx, done_rx) = mpsc::channel();
            let PtyEnds {
                input,
                output,
                size_of,
                _raw,
            } = ends;
            thread::spawn(move || {
                let _ = tty::pump(input, output, stream, size_of, resize);
                let _ = done_tx.send(());
            });
            let status = control.wait(id, exec_id, alive)?;
            let _ = done_rx.recv_timeout(DRAIN);
            Ok(status)
        }
    }
}

fn stdio_and_wait(
    control: &mut Control,
    id: &str,
    exec_id: Option<&str>,
    stdio: Stdio,
    interactive: bool,
    alive: impl FnMut() -> bool,
) -> Result<ExitStatus, RuntimeError> {
    let (done_tx, done_rx) = mpsc::channel();
    for (src, is_err) in [(stdio.stdout, false), (stdio.stderr, true)] {
        let tx = done_tx.clone();
        thread::spawn(move || {
            let _ = copy_out(src, is_err);
            let _ = tx.send(());
        });
    }
    // End of our stdin is a half-close of the stream: the VMM passes it on as a vsock
    // SHUTDOWN, and the process reads what was sent, then end-of-file. (The agent's
    // `close_stdin` would drop data still in flight.)
    let stdin = stdio.stdin;
    if interactive {
        let mut sink = stdin.try_clone().map_err(|source| RuntimeError::Stream {
            what: "stdin".into(),
            source,
        })?;
        thread::spawn(move || {
            let _ = io::copy(&mut io::stdin().lock(), &mut sink);
            let _ = sink.shutdown(std::net::Shutdown::Write);
        });
    } else {
        let _ = stdin.shutdown(std::net::Shutdown::Write);
    }
    let status = control.wait(id, exec_id, alive)?;
    drop(stdin);
    let deadline = Instant::now() + DRAIN;
    for _ in 0..2 {
        let left = deadline.saturating_duration_since(Instant::now());
        if done_rx.recv_timeout(left).is_err() {
            break;
        }
    }
    Ok(status)
}

/// Copies `src` to our stdout or stderr until end-of-file. When ours is closed (`crx run |
/// head -1`) the rest is read and dropped, so that the container never blocks on a full stream.
fn copy_out(mut src: UnixStream, is_err: bool) -> io::Result<()> {
    let mut buf = [0u8; 16384];
    let mut broken = false;
    loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        if broken {
            continue;
        }
        let written = if is_err {
            let mut e = io::stderr().lock();
            e.write_all(&buf[..n]).and_then(|()| e.flush())
        } else {
            let mut o = io::stdout().lock();
            o.write_all(&buf[..n]).and_then(|()| o.flush())
        };
        broken = written.is_err();
    }
}
