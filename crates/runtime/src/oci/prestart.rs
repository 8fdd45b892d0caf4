//! A container whose VM boots at `start` (ADR 0022): its spec's `network` entry has no path,
//! so its network namespace is its monitor's own, which a tool may still configure after
//! `create` (`ctr run --cni` adds CNI's interface to `/proc/PID/ns/net` between create and
//! start, nerdctl from a `createRuntime` hook). A VM takes no NIC after boot, so the monitor
//! waits with everything else ready (spec checked, boot files verified, shares served, the
//! terminal's master sent) and boots when `start` comes, joining what the namespace holds then.
//!
//! Until then the monitor's socket answers here: `start` boots, creates and starts the
//! container (or says why not, recorded `failed`); `kill N` with a signal that would end a
//! process ends the created container, as it ends runc's init waiting to start; a forwarded
//! signal does the same ([`end`]).

use std::io::BufReader;
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, Ordering};

use super::container::ContainerDir;
use super::monitor::{reply, Monitor, TakeLine};
use super::prepare::Prepared;
use super::state::Phase;
use crate::signals;
use crx_proto::chain;

/// Serves `listener` (the monitor's socket) for the created container of `p` until `start`:
/// the booted, started container's monitor (`booted` set once its VM answers), or the code
/// to exit with (the start failed, recorded; or a `kill` ended the container).
pub(super) fn wait_for_start(
    listener: &UnixListener,
    p: Prepared,
    booted: &AtomicBool,
) -> Result<Monitor, i32> {
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let mut line = String::new();
        if BufReader::new(&conn).take_line(&mut line).is_err() {
            continue;
        }
        let cmd = line.trim();
        if cmd == "start" {
            let started = p.boot().map_err(|e| chain(&e)).and_then(|m| {
                booted.store(true, Ordering::SeqCst);
                match m.start() {
                    Ok(()) => Ok(m),
                    Err(why) => Err(m.abandon(why)),
                }
            });
            return match started {
                Ok(m) => {
                    let _ = reply(&conn, Ok(()));
                    Ok(m)
                }
                Err(why) => {
                    let _ = reply(&conn, Err(why));
                    Err(1)
                }
            };
        }
        let done = match cmd.split_once(' ') {
            _ if cmd == "wait-unpaused" => Ok(()),
            Some(("kill", n)) => match n.parse::<i32>() {
                // A signal that would end a process ends the created container; the others
                // (ignored or stopping by default) find no process to act on.
                Ok(sig) if crx_proto::is_terminating_signal(sig) => {
                    let _ = reply(&conn, Ok(()));
                    end(p.container(), sig);
                }
                Ok(sig) if (1..=64).contains(&sig) => Ok(()),
                _ => Err(format!("bad signal {n:?}")),
            },
            _ => Err(format!("container is created, not running: no {cmd:?}")),
        };
        let _ = reply(&conn, done);
    }
    Err(1)
}

/// Ends the created container `c` by `sig` before its VM booted: recorded stopped by that
/// signal, and this process (its monitor, whose pid is the container's) dies by it, which
/// takes the shares' daemons with it.
pub(super) fn end(c: &ContainerDir, sig: i32) -> ! {
    if let Ok(mut r) = c.load() {
        r.phase = Phase::Stopped;
        r.exit_code = Some(128 + sig);
        r.exit_signal = Some(sig);
        let _ = c.save(&r);
    }
    let _ = std::fs::remove_file(c.monitor_socket());
    std::process::exit(signals::die_by(sig))
}
