//! Zombie reaping for PID 1, without stealing the exit status of the children crx-init waits for.
//!
//! SIGCHLD is blocked in every thread (call [`block_sigchld`] first thing in `main`, before any
//! thread exists); the reaper thread `sigwait`s for it and drains `waitpid(-1, WNOHANG)`. Exit
//! statuses are kept only for pids registered by [`Reaper::spawn`]; orphans are reaped and
//! forgotten. `spawn` holds the state lock across `fork`/`exec` and registration, and the reaper
//! drains under the same lock, so a child that dies at once is neither lost nor reaped while
//! `std` still waits for it (std waits internally when `exec` fails).

use std::collections::{HashMap, HashSet};
use std::io;
use std::process::Command;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crx_proto::ExitStatus;
use nix::errno::Errno;
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};

/// Blocks SIGCHLD in the calling thread (and in threads it creates later).
pub fn block_sigchld() -> nix::Result<()> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None)
}

#[derive(Default)]
struct State {
    watched: HashSet<i32>,
    exited: HashMap<i32, ExitStatus>,
}

/// Handle to the reaper thread.
#[derive(Clone)]
pub struct Reaper {
    inner: Arc<(Mutex<State>, Condvar)>,
}

impl std::fmt::Debug for Reaper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reaper")
    }
}

impl Reaper {
    /// Starts the reaper thread. SIGCHLD must already be blocked ([`block_sigchld`]).
    pub fn start() -> io::Result<Reaper> {
        let r = Reaper {
            inner: Arc::new((Mutex::new(State::default()), Condvar::new())),
        };
        let r2 = r.clone();
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || r2.run())?;
        Ok(r)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn run(&self) {
        let mut set = SigSet::empty();
        set.add(Signal::SIGCHLD);
        loop {
            self.drain();
            // Errors (EINTR) just mean: drain again.
            let _ = set.wait();
        }
    }

    fn drain(&self) {
        let mut st = self.lock();
        loop {
            let (pid, status) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, ExitStatus { code, signal: None }),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (
                    pid,
                    ExitStatus {
                        code: 128 + sig as i32,
                        signal: Some(sig as i32),
                    },
                ),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(_) => break,
            };
            if st.watched.remove(&pid.as_raw()) {
                st.exited.insert(pid.as_raw(), status);
            }
        }
        drop(st);
        self.inner.1.notify_all();
    }

    /// Spawns `cmd` and registers its pid so [`Reaper::wait`] can return its status.
    pub fn spawn(&self, cmd: &mut Command) -> io::Result<i32> {
        let mut st = self.lock();
        let child = cmd.spawn()?;
        let pid = child.id() as i32;
        st.watched.insert(pid);
        Ok(pid)
    }

    /// Blocks until the registered child `pid` has exited and returns its status.
    pub fn wait(&self, pid: i32) -> ExitStatus {
        let mut st = self.lock();
        loop {
            if let Some(s) = st.exited.remove(&pid) {
                return s;
            }
            st = self.inner.1.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }
}
