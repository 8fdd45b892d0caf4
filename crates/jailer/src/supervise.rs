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

/// The child's end of a pipe whose other end only the jailer holds: it hangs up when the
/// jailer dies, which closes the race between the fork and `PR_SET_PDEATHSIG`.
pub(crate) struct ParentLink(OwnedFd);

impl ParentLink {
    pub(crate) fn is_alive(&self) -> bool {
        let mut fds = [PollFd::new(self.0.as_fd(), PollFlags::POLLIN)];
        matches!(poll(&mut fds, PollTimeout::ZERO), Ok(0))
    }
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
