//! The jailer stays as the parent of the jailed program (PID 1 of its PID namespace): it
//! forwards termination signals to it and returns its exit status. The program dies with the
//! jailer (`PR_SET_PDEATHSIG`), so a SIGKILL of the jailer's pid ends the jail.

use std::os::fd::{AsFd, OwnedFd};

use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

use crate::{sys, JailError};

/// Signals passed on to the program.
const FORWARDED: [Signal; 6] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// Forks; the parent waits for the child and returns its status, the child runs `enter`, which
/// execs the program or returns why it could not: then the child returns that error (its caller
/// reports it and exits 125).
pub(crate) fn fork_and_wait(
    enter: impl FnOnce(&ParentLink) -> JailError,
) -> Result<i32, JailError> {
    let mask = waited_for();
    // Blocked before the fork so that none is lost; the child unblocks them before exec.
    mask.thread_block().map_err(sys("blocking signals"))?;
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(sys("pipe"))?;
    // SAFETY: the jailer is single-threaded (a binary of its own), so the child may run any
    // code after fork.
    match unsafe { fork() }.map_err(sys("fork"))? {
        ForkResult::Child => {
            drop(write);
            Err(enter(&ParentLink(read)))
        }
        ForkResult::Parent { child } => {
            drop(read);
            let status = wait(child, &mask);
            drop(write);
            status
        }
    }
}

fn wait(child: Pid, mask: &SigSet) -> Result<i32, JailError> {
    loop {
        let sig = mask.wait().map_err(sys("waiting for signals"))?;
        if sig != Signal::SIGCHLD {
            let _ = kill(child, sig);
            continue;
        }
        loop {
            match waitpid(child, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => return Ok(code),
                Ok(WaitStatus::Signaled(_, s, _)) => return Ok(128 + s as i32),
                Ok(WaitStatus::StillAlive) => break,
                Ok(_) => continue,
                Err(e) => return Err(sys("waiting for the jailed program")(e)),
            }
        }
    }
}

/// The process the jailed program dies with: the parent-death signal to arm again after the
/// uid change (which clears it), and whether that process still lives once it is armed (it
/// may have died before: then nobody would send the signal).
pub(crate) trait Parent {
    fn death_signal(&self) -> Option<Signal>;
    fn is_alive(&self) -> bool;
}

/// Whether `fd` (a pipe's read end or a pidfd) has nothing to report: the pipe's writer, or
/// the process, is still there.
fn quiet(fd: &OwnedFd) -> bool {
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(0))
}

/// The child's end of a pipe whose other end only the jailer holds: it hangs up when the
/// jailer dies, which closes the race between the fork and `PR_SET_PDEATHSIG`.
pub(crate) struct ParentLink(OwnedFd);

impl Parent for ParentLink {
    fn death_signal(&self) -> Option<Signal> {
        Some(Signal::SIGKILL)
    }

    fn is_alive(&self) -> bool {
        quiet(&self.0)
    }
}

/// The caller of a jailer started as PID 1 of a new PID namespace ([`crate::Jail::as_init`]):
/// the parent-death signal it armed (if any), and this process's status in the host's /proc,
/// opened at the start (before the jail hides that /proc): its `PPid` changes from the
/// caller's to a reaper's if the caller dies (from inside the new PID namespace `getppid`
/// says 0 either way, and the caller's pid means nothing there).
pub(crate) struct Caller {
    signal: Option<Signal>,
    status: std::fs::File,
    ppid: i32,
}

impl Caller {
    /// Checks that this process is PID 1 of its PID namespace and finds its caller.
    pub(crate) fn of_init() -> Result<Caller, JailError> {
        if nix::unistd::getpid().as_raw() != 1 {
            return Err(JailError::Invalid(
                "--as-init: the jailer is not PID 1 of a new PID namespace".into(),
            ));
        }
        let signal = nix::sys::prctl::get_pdeathsig().map_err(sys("PR_GET_PDEATHSIG"))?;
        let status = std::fs::File::open("/proc/self/status")
            .map_err(crate::io("opening /proc/self/status"))?;
        let ppid = parent_in(&status)
            .filter(|&p| p > 0)
            .ok_or_else(|| JailError::Invalid("no parent pid in /proc/self/status".into()))?;
        Ok(Caller {
            signal,
            status,
            ppid,
        })
    }
}

impl Parent for Caller {
    fn death_signal(&self) -> Option<Signal> {
        self.signal
    }

    fn is_alive(&self) -> bool {
        parent_in(&self.status) == Some(self.ppid)
    }
}

/// The `PPid` of a /proc/PID/status file, read again from its start.
fn parent_in(status: &std::fs::File) -> Option<i32> {
    let mut buf = [0u8; 4096];
    let n = std::os::unix::fs::FileExt::read_at(status, &mut buf, 0).ok()?;
    let text = std::str::from_utf8(&buf[..n]).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|p| p.trim().parse().ok())
}

/// Unblocks what [`fork_and_wait`] blocked (in the child, before exec).
pub(crate) fn unblock_signals() -> Result<(), JailError> {
    waited_for()
        .thread_unblock()
        .map_err(sys("unblocking signals"))
}

/// The signals the jailer waits for: those it forwards, and SIGCHLD.
fn waited_for() -> SigSet {
    let mut mask = SigSet::empty();
    for s in FORWARDED {
        mask.add(s);
    }
    mask.add(Signal::SIGCHLD);
    mask
}
