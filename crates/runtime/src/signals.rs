//! Signals to a process that stands for a container (a monitor, `run`, `exec`): forwarded
//! to the container's process; and dying by the signal that killed the container.
//!
//! Forwarding catches the signals with handlers (signal-hook: a handler writes to a pipe that
//! a thread reads), never by blocking them: a blocked mask is inherited by every child (crx-vmm,
//! virtiofsd, CNI plugins, hooks), which would then never see SIGTERM, nor crx-vmm the
//! template builder's SIGUSR1; a caught signal is reset to its default in a child at exec.

use nix::sys::signal::Signal;

const FORWARDED: [Signal; 6] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// Catches the forwarded signals and calls `to(signal)` on a thread for each that arrives.
pub fn forward(to: impl Fn(i32) + Send + 'static) -> std::io::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new(FORWARDED.map(|s| s as i32))?;
    std::thread::spawn(move || {
        for sig in signals.forever() {
            to(sig);
        }
    });
    Ok(())
}

/// Ends this process by `signal` (its default action), as the container ended; returns
/// `128 + signal` when that does not end it.
pub fn die_by(signal: i32) -> i32 {
    // The default action, whatever handler forwarding installed.
    let _ = signal_hook::low_level::emulate_default_handler(signal);
    128 + signal
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarding_catches_without_blocking_so_children_get_the_signals() {
        let (tx, rx) = std::sync::mpsc::channel();
        forward(move |sig| {
            let _ = tx.send(sig);
        })
        .unwrap();
        // A child started now has no signal blocked: the mask is what a child inherits.
        let out = std::process::Command::new("grep")
            .args(["^SigBlk:", "/proc/self/status"])
            .output()
            .unwrap();
        let mask = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            mask.split_whitespace().nth(1),
            Some("0000000000000000"),
            "{mask}"
        );
        nix::sys::signal::kill(nix::unistd::Pid::this(), Signal::SIGUSR2).unwrap();
        let got = rx.recv_timeout(std::time::Duration::from_secs(10));
        assert_eq!(got, Ok(Signal::SIGUSR2 as i32));
    }
}
