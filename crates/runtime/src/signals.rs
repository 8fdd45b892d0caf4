//! Signals to a process that stands for a container (a monitor, `run`, `exec`): forwarded
//! to the container's process; and dying by the signal that killed the container.

use nix::sys::signal::{raise, SigSet, Signal};

const FORWARDED: [Signal; 6] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// Blocks the forwarded signals in this thread (call before starting other threads: they
/// inherit the mask) and calls `to(signal)` on a thread for each that arrives.
pub fn forward(to: impl Fn(i32) + Send + 'static) -> Result<(), nix::Error> {
    let mut set = SigSet::empty();
    for s in FORWARDED {
        set.add(s);
    }
    set.thread_block()?;
    std::thread::spawn(move || {
        while let Ok(sig) = set.wait() {
            to(sig as i32);
        }
    });
    Ok(())
}

/// Ends this process by `signal` (its default action), as the container ended; returns
/// `128 + signal` when that does not end it.
pub fn die_by(signal: i32) -> i32 {
    if let Ok(sig) = Signal::try_from(signal) {
        let mut set = SigSet::empty();
        set.add(sig);
        let _ = set.thread_unblock();
        let _ = raise(sig);
    }
    128 + signal
}
