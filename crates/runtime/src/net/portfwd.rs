//! The CRI's `PortForward` for a pod in a VM (ADR 0021). containerd serves `PortForward`
//! itself: it enters the pod's network namespace and dials `localhost:PORT` there, where a
//! runc pod's containers listen. A CRX pod's containers listen in the guest, so the pod's
//! namespace on the host gets:
//!
//! - a listener on `127.0.0.1:P` (a port the kernel picks), served by a thread of the shim;
//! - one iptables rule, `-t nat OUTPUT -d 127.0.0.1 -p tcp ! --dport P -j DNAT
//!   --to-destination 127.0.0.1:P`, that sends every TCP connection made to the namespace's
//!   loopback to that listener (nothing else in the namespace uses its loopback: CNI
//!   prepared it for the VM).
//!
//! Each accepted connection's original port (`SO_ORIGINAL_DST`) is opened on the guest's
//! loopback through the agent ([`Agent::open_port`]) and the bytes copied both ways; when
//! nothing listens there, the connection is reset, as the refused dial it stands for.
//! [`PortForward::stop`] removes the rule; a shim that died leaves it in a namespace that
//! containerd removes with the pod.

use std::io;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::sched::{setns, CloneFlags};

use super::{netns, NetError};
use crate::agent::Agent;

/// The comment on the rule (`iptables -m comment`), which names what added it.
const COMMENT: &str = "crx port-forward";

/// A pod namespace's forwarder (see the module's doc).
#[derive(Debug)]
pub struct PortForward {
    netns: PathBuf,
    port: u16,
    listener: TcpListener,
}

/// Where the CRI's dials to a port `p` go in a pod's namespace: the iptables arguments of
/// the rule for listener port `port` (after `-A` or `-D` and the chain).
fn rule(port: u16) -> Vec<String> {
    let to = format!("127.0.0.1:{port}");
    let port = port.to_string();
    [
        "-d",
        "127.0.0.1/32",
        "-p",
        "tcp",
        "!",
        "--dport",
        &port,
        "-m",
        "comment",
        "--comment",
        COMMENT,
        "-j",
        "DNAT",
        "--to-destination",
        &to,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// Runs `iptables -w -t nat ACTION OUTPUT RULE` (on the calling thread's namespace).
fn iptables(action: &str, port: u16) -> Result<(), String> {
    let out = Command::new("iptables")
        .args(["-w", "-t", "nat", action, "OUTPUT"])
        .args(rule(port))
        .output()
        .map_err(|e| format!("iptables: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "iptables {action}: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    ))
}

/// Runs `work` on a thread inside the namespace `path`.
fn in_namespace<T: Send + 'static>(
    path: &Path,
    work: impl FnOnce() -> Result<T, NetError> + Send + 'static,
) -> Result<T, NetError> {
    let ns = netns::open(path)?;
    let p = path.to_owned();
    std::thread::Builder::new()
        .name("crx-portfwd-ns".into())
        .spawn(move || {
            setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|e| NetError::Netns {
                path: p,
                source: e.into(),
            })?;
            work()
        })
        .map_err(|source| NetError::Netns {
            path: path.to_owned(),
            source,
        })?
        .join()
        .map_err(|_| NetError::Thread(path.to_owned()))?
}

impl PortForward {
    /// Starts forwarding the loopback of the pod namespace `netns` to the guest behind
    /// `agent`: the listener made there, the rule added, a thread serving connections.
    pub fn start(netns: &Path, agent: Agent) -> Result<PortForward, NetError> {
        let failed = |why: String| NetError::PortForward(why);
        let listener = in_namespace(netns, move || {
            let l = TcpListener::bind("127.0.0.1:0")
                .map_err(|e| failed(format!("listening on the pod's loopback: {e}")))?;
            let port = l.local_addr().map_err(|e| failed(e.to_string()))?.port();
            iptables("-A", port).map_err(failed)?;
            Ok(l)
        })?;
        let port = listener.local_addr().map_or(0, |a| a.port());
        let serving = listener
            .try_clone()
            .map_err(|e| NetError::PortForward(e.to_string()));
        let spawned = serving.and_then(|l| {
            std::thread::Builder::new()
                .name("crx-portfwd".into())
                .spawn(move || serve(&l, &agent))
                .map_err(|e| NetError::PortForward(e.to_string()))
        });
        let fwd = PortForward {
            netns: netns.to_owned(),
            port,
            listener,
        };
        match spawned {
            Ok(_) => Ok(fwd),
            Err(e) => {
                fwd.stop();
                Err(e)
            }
        }
    }

    /// Stops accepting (connections being served go on until they end) and removes the rule
    /// (a namespace already gone has none).
    pub fn stop(self) {
        let _ =
            nix::sys::socket::shutdown(self.listener.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        if netns::open_if_alive(&self.netns, None)
            .ok()
            .flatten()
            .is_some()
        {
            let port = self.port;
            let _ = in_namespace(&self.netns, move || {
                iptables("-D", port).map_err(NetError::PortForward)
            });
        }
    }
}

/// Accepts connections until the listener is shut down (`EINVAL`), each served by a thread of
/// its own; another failure (a connection aborted, no descriptor left) is waited out.
fn serve(listener: &TcpListener, agent: &Agent) {
    for conn in listener.incoming() {
        let conn = match conn {
            Ok(c) => c,
            Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => {
                std::thread::sleep(std::time::Duration::from_millis(50));
                continue;
            }
        };
        let agent = agent.clone();
        let _ = std::thread::Builder::new()
            .name("crx-portfwd-conn".into())
            .spawn(move || forward(conn, &agent));
    }
}

/// The port `conn` was dialled to before the rule sent it here.
fn original_port(conn: &TcpStream) -> Option<u16> {
    let dst = nix::sys::socket::getsockopt(conn, nix::sys::socket::sockopt::OriginalDst).ok()?;
    Some(u16::from_be(dst.sin_port))
}

/// Joins `conn` to its port in the guest; resets it when that cannot be opened.
fn forward(conn: TcpStream, agent: &Agent) {
    let guest = original_port(&conn).and_then(|p| agent.open_port(p).ok());
    match guest {
        Some(g) => {
            let _ = copy_both_ways(conn, g);
        }
        None => {
            // A reset, not an orderly close: the dial it stands for was refused.
            let _ = nix::sys::socket::setsockopt(
                &conn,
                nix::sys::socket::sockopt::Linger,
                &nix::libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                },
            );
        }
    }
}

/// Copies bytes between `tcp` and `guest` until both directions ended, each end of input
/// passed on as a half close; a failing side ends both.
fn copy_both_ways(tcp: TcpStream, guest: UnixStream) -> io::Result<()> {
    let (t, g) = (tcp.try_clone()?, guest.try_clone()?);
    let up = std::thread::Builder::new()
        .name("crx-portfwd-up".into())
        .spawn(move || {
            copy_half(&t, &g, |how| {
                let _ = g.shutdown(how);
                let _ = (how == Shutdown::Both).then(|| t.shutdown(how));
            })
        })?;
    copy_half(&guest, &tcp, |how| {
        let _ = tcp.shutdown(how);
        let _ = (how == Shutdown::Both).then(|| guest.shutdown(how));
    });
    let _ = up.join();
    Ok(())
}

/// Copies `from` to `to` until `from` ends, then `end(Write)` (a half close); on an error,
/// `end(Both)`, which ends both sockets so that the other direction stops too.
fn copy_half(mut from: impl io::Read, mut to: impl io::Write, end: impl Fn(Shutdown)) {
    match io::copy(&mut from, &mut to) {
        Ok(_) => end(Shutdown::Write),
        Err(_) => end(Shutdown::Both),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_sends_every_loopback_port_but_the_listeners_to_it() {
        let r = rule(40123).join(" ");
        assert_eq!(
            r,
            "-d 127.0.0.1/32 -p tcp ! --dport 40123 -m comment --comment crx port-forward \
             -j DNAT --to-destination 127.0.0.1:40123"
        );
    }
}
