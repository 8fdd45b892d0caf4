//! Connections to the guest agent through the VMM's hybrid vsock socket.
//!
//! Every exchange is bounded in time ([`Agent::timeout`], `CRX_AGENT_TIMEOUT`): connecting,
//! the `CONNECT` line, the handshake and each request on a [`Control`] connection. `Wait` is
//! the exception that stays waitable for as long as the VM lives: while it waits, the
//! caller's liveness check runs every [`CHECK_EVERY`] and the agent is pinged on a
//! connection of its own every [`PING_EVERY`]; a VM that is gone or an agent that stopped
//! answering ends it.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crx_proto::{
    read_message, write_message, Client, ClientError, PortHeader, ResponseFrame, StreamHeader,
    StreamKind, AGENT_VSOCK_PORT, PROTOCOL_VERSION,
};

use crate::error::RuntimeError;

/// How long the agent may take to answer (`CRX_AGENT_TIMEOUT` seconds, at least 1, default
/// 120: the nested lab is slow): the boot until it answers, and then each request.
pub fn agent_timeout() -> Duration {
    let secs = std::env::var("CRX_AGENT_TIMEOUT")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(120);
    Duration::from_secs(secs.max(1))
}

/// How long one attempt of [`Agent::wait_ready`] may take (connection and handshake): a
/// connection the guest dropped without a word (a restored guest's transport reset, ADR 0017)
/// costs this, then the next attempt goes, instead of the whole agent timeout.
const READY_ATTEMPT: Duration = Duration::from_secs(10);

/// How often a waiting `Wait` asks the caller whether the VM still runs.
pub const CHECK_EVERY: Duration = Duration::from_millis(500);

/// How often a waiting `Wait` pings the agent (two failed pings in a row end the wait).
pub const PING_EVERY: Duration = Duration::from_secs(10);

/// A control connection (handshake done): every request is bounded by the agent's timeout,
/// `Wait` by the VM's life (see the module's doc).
#[derive(Debug)]
pub struct Control {
    client: Client<UnixStream>,
    agent: Agent,
}

impl Control {
    /// Sends `request` and returns the agent's answer (an `Error` answer is
    /// [`ClientError::Agent`]); a `Wait` as [`Control::wait_while`] with no check of its own.
    pub fn call(&mut self, request: crx_proto::Request) -> Result<Response, ClientError> {
        if matches!(
            request,
            crx_proto::Request::Wait { .. } | crx_proto::Request::WaitOom { .. }
        ) {
            return self.wait_while(request, || true);
        }
        self.client.call_within(request, self.agent.timeout)
    }

    /// A request that may rightly take as long as the process lives (`Wait`): it ends with
    /// [`ClientError::PeerGone`] once `alive()` is false (asked every [`CHECK_EVERY`]), or
    /// when two pings in a row (every [`PING_EVERY`]) find the agent not answering.
    pub fn wait_while(
        &mut self,
        request: crx_proto::Request,
        mut alive: impl FnMut() -> bool,
    ) -> Result<Response, ClientError> {
        let agent = self.agent.clone();
        let mut last_ping = Instant::now();
        let mut failed_pings = 0;
        let mut probe = move || {
            if !alive() {
                return false;
            }
            if last_ping.elapsed() >= PING_EVERY {
                failed_pings = match agent.ping() {
                    Ok(()) => 0,
                    Err(_) => failed_pings + 1,
                };
                last_ping = Instant::now();
            }
            failed_pings < 2
        };
        self.client
            .call_waiting(request, self.agent.timeout, CHECK_EVERY, &mut probe)
    }

    /// Waits for the process `exec_id` of container `id` (its init with `None`) while
    /// `alive()` says its VM runs (see [`Control::wait_while`]); its exit status, validated
    /// (guest input: [`crx_proto::ExitStatus::validated`]). The agent keeps the status: a later wait
    /// returns it again.
    pub fn wait(
        &mut self,
        id: &str,
        exec_id: Option<&str>,
        alive: impl FnMut() -> bool,
    ) -> Result<crx_proto::ExitStatus, RuntimeError> {
        let request = crx_proto::Request::Wait {
            id: id.to_owned(),
            exec_id: exec_id.map(str::to_owned),
        };
        match self.wait_while(request, alive)? {
            Response::Exited(s) => {
                crate::trace::mark("exit seen");
                Ok(s.validated())
            }
            other => Err(RuntimeError::Agent(ClientError::Unexpected(Box::new(
                other,
            )))),
        }
    }
}

impl Control {
    /// Waits while `alive()` says the VM runs (see [`Control::wait_while`]) until container
    /// `id`'s cgroup has counted more than `seen` OOM kills; the count then. An error once the
    /// container is removed.
    pub fn wait_oom(
        &mut self,
        id: &str,
        seen: u64,
        alive: impl FnMut() -> bool,
    ) -> Result<u64, RuntimeError> {
        let request = crx_proto::Request::WaitOom {
            id: id.to_owned(),
            seen,
        };
        match self.wait_while(request, alive)? {
            Response::OomKills { count } => Ok(count),
            other => Err(RuntimeError::Agent(ClientError::Unexpected(Box::new(
                other,
            )))),
        }
    }
}

/// Connects to the socket at `uds` unless its last component is a link or not a socket: a
/// jailed VMM owns the directory its socket is in (ADR 0011), and must not be able to point
/// the runtime at another VM's socket. The socket is opened `O_PATH|O_NOFOLLOW` and connected
/// to through `/proc/self/fd/N`, so what was checked is what is connected to.
pub fn connect_no_follow(uds: &Path) -> io::Result<UnixStream> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_PATH | nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(uds)?;
    if !f.metadata()?.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} is not a socket (a link, or another file)",
                uds.display()
            ),
        ));
    }
    UnixStream::connect(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&f)
    ))
}

/// A new exec id, unique on this host (`exec-PID-NANOS`).
pub fn new_exec_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("exec-{}-{nanos:x}", std::process::id())
}

/// Opens a stream to guest `port`: connect to the socket, `CONNECT <port>\n`, `OK <n>\n`,
/// within `limit` (the stream is returned without timeouts).
pub fn connect_port(uds: &Path, port: u32, limit: Duration) -> io::Result<UnixStream> {
    let mut s = connect_no_follow(uds)?;
    let deadline = Instant::now() + limit;
    let left = || {
        let l = deadline.saturating_duration_since(Instant::now());
        if l.is_zero() {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer to CONNECT within {} s", limit.as_secs()),
            ))
        } else {
            Ok(l)
        }
    };
    s.set_write_timeout(Some(left()?))?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    // One byte at a time: what follows the line belongs to the guest's stream.
    while line.len() < 64 {
        s.set_read_timeout(Some(left()?))?;
        match s.read(&mut b) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    "closed during CONNECT",
                ))
            }
            Ok(_) if b[0] == b'\n' => break,
            Ok(_) => line.push(b[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer to CONNECT within {} s", limit.as_secs()),
                ))
            }
            Err(e) => return Err(e),
        }
    }
    if !line.starts_with(b"OK ") {
        return Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!("CONNECT answered {:?}", String::from_utf8_lossy(&line)),
        ));
    }
    s.set_read_timeout(None)?;
    s.set_write_timeout(None)?;
    Ok(s)
}

/// The agent of one VM.
#[derive(Debug, Clone)]
pub struct Agent {
    pub uds: PathBuf,
    /// The bound on each exchange ([`agent_timeout`] by default).
    pub timeout: Duration,
}

impl Agent {
    /// The agent behind the VMM's socket `uds`, with [`agent_timeout`].
    pub fn new(uds: impl Into<PathBuf>) -> Agent {
        Agent {
            uds: uds.into(),
            timeout: agent_timeout(),
        }
    }

    /// A new control connection, handshake done.
    pub fn control(&self) -> Result<Control, RuntimeError> {
        self.control_within(self.timeout)
    }

    /// [`Agent::control`] whose connection and handshake end within `limit`.
    fn control_within(&self, limit: Duration) -> Result<Control, RuntimeError> {
        let start = Instant::now();
        let s = connect_port(&self.uds, AGENT_VSOCK_PORT, limit).map_err(|source| {
            RuntimeError::Stream {
                what: format!("connecting to {}", self.uds.display()),
                source,
            }
        })?;
        let left = limit
            .saturating_sub(start.elapsed())
            .max(Duration::from_millis(1));
        Ok(Control {
            client: Client::handshake_within(s, left)?,
            agent: self.clone(),
        })
    }

    /// Whether the agent answers a `Ping` on a new connection within the timeout.
    pub fn ping(&self) -> Result<(), RuntimeError> {
        match self.control()?.call(crx_proto::Request::Ping)? {
            Response::Pong => Ok(()),
            other => Err(ClientError::Unexpected(Box::new(other)).into()),
        }
    }

    /// Retries [`Agent::control`] every few milliseconds (each attempt bounded by
    /// [`READY_ATTEMPT`]) until it succeeds, `alive()` says the
    /// VM is gone (`VmExited`), or `timeout` passes (`AgentTimeout`); the errors say why from
    /// `vmm_log` and the console ([`crate::vmlog::why_stopped`]).
    pub fn wait_ready(
        &self,
        timeout: Duration,
        vmm_log: &Path,
        console: &Path,
        mut alive: impl FnMut() -> bool,
    ) -> Result<Control, RuntimeError> {
        let reason = || {
            crate::vmlog::why_stopped(&[vmm_log, console])
                .unwrap_or_else(|| "no output from the VM".into())
        };
        let start = Instant::now();
        loop {
            let left = timeout.saturating_sub(start.elapsed());
            let limit = left
                .min(self.timeout)
                .min(READY_ATTEMPT)
                .max(Duration::from_millis(1));
            if let Ok(c) = self.control_within(limit) {
                return Ok(c);
            }
            if !alive() {
                return Err(RuntimeError::VmExited { reason: reason() });
            }
            if start.elapsed() > timeout {
                return Err(RuntimeError::AgentTimeout {
                    secs: timeout.as_secs(),
                    reason: reason(),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends `signal` to container `id`'s init on a new control connection.
    pub fn signal(&self, id: &str, signal: i32) -> Result<(), RuntimeError> {
        self.signal_process(id, None, signal)
    }

    /// Sends `signal` to container `id`'s init or its exec `exec_id`.
    pub fn signal_process(
        &self,
        id: &str,
        exec_id: Option<&str>,
        signal: i32,
    ) -> Result<(), RuntimeError> {
        self.control()?.call(crx_proto::Request::Signal {
            id: id.to_owned(),
            exec_id: exec_id.map(str::to_owned),
            signal,
            all: false,
        })?;
        Ok(())
    }

    /// Opens a stdio stream of container `id` (or of its exec `exec_id`); raw bytes follow.
    pub fn open_stream(
        &self,
        id: &str,
        exec_id: Option<&str>,
        stream: StreamKind,
    ) -> Result<UnixStream, RuntimeError> {
        let header = StreamHeader {
            version: PROTOCOL_VERSION,
            id: id.to_owned(),
            exec_id: exec_id.map(str::to_owned),
            stream,
        };
        self.open(&format!("{stream:?} of {id}"), &header)
    }

    /// Opens a connection to TCP `port` on the guest's loopback (the pod's network, for the
    /// CRI's `PortForward`); raw bytes follow. The agent's error (nothing listens there) is
    /// returned as such.
    pub fn open_port(&self, port: u16) -> Result<UnixStream, RuntimeError> {
        let header = PortHeader {
            version: PROTOCOL_VERSION,
            forward_port: port,
        };
        self.open(&format!("port {port}"), &header)
    }

    /// A connection that opens with `header`, once the agent answered `Ok` (each step bounded
    /// by the agent's timeout); blocking, without timeouts, from then on.
    fn open(&self, what: &str, header: &impl serde::Serialize) -> Result<UnixStream, RuntimeError> {
        let err = |source| RuntimeError::Stream {
            what: what.to_owned(),
            source,
        };
        let mut s = connect_port(&self.uds, AGENT_VSOCK_PORT, self.timeout).map_err(err)?;
        s.set_read_timeout(Some(self.timeout)).map_err(err)?;
        s.set_write_timeout(Some(self.timeout)).map_err(err)?;
        let proto = |e: crx_proto::ProtoError| RuntimeError::Agent(e.into());
        write_message(&mut s, header).map_err(proto)?;
        let resp: ResponseFrame = read_message(&mut s)
            .map_err(proto)?
            .ok_or(RuntimeError::Agent(crx_proto::ClientError::Closed))?;
        s.set_read_timeout(None).map_err(err)?;
        s.set_write_timeout(None).map_err(err)?;
        match resp.response {
            crx_proto::Response::Ok => Ok(s),
            crx_proto::Response::Error(e) => {
                Err(RuntimeError::Agent(crx_proto::ClientError::Agent(e)))
            }
            other => Err(RuntimeError::Agent(crx_proto::ClientError::Unexpected(
                Box::new(other),
            ))),
        }
    }
}

pub use crx_proto::{Request, Response};

#[cfg(test)]
mod tests {
    use super::*;
    use crx_proto::{ExitStatus, Request, RequestFrame};
    use std::os::unix::net::UnixListener;

    /// What a fake VMM socket does with each connection.
    #[derive(Clone, Copy)]
    enum Fake {
        /// Accepts and never answers `CONNECT`.
        Mute,
        /// Answers `CONNECT` and the handshake, then reads requests and says nothing.
        Silent,
        /// Answers `CONNECT` and the handshake, then drips each answer a byte at a time.
        Drip,
    }

    fn fake_vmm(dir: &Path, fake: Fake) -> Agent {
        let uds = dir.join("vsock.sock");
        let l = UnixListener::bind(&uds).unwrap();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut s) = conn else { return };
                std::thread::spawn(move || serve(&mut s, fake));
            }
        });
        Agent {
            uds,
            timeout: Duration::from_millis(300),
        }
    }

    fn serve(s: &mut UnixStream, fake: Fake) {
        let mut line = [0u8; 14]; // "CONNECT 1024\n"
        let _ = s.read(&mut line);
        if let Fake::Mute = fake {
            let _ = s.read(&mut line);
            return;
        }
        let _ = s.write_all(b"OK 1024\n");
        while let Ok(Some(req)) = read_message::<RequestFrame, _>(s) {
            let answer = match req.request {
                Request::Hello { version } => Response::HelloOk { version },
                _ if matches!(fake, Fake::Silent) => continue,
                _ => Response::Exited(ExitStatus {
                    code: 0,
                    signal: Some(9),
                }),
            };
            let mut frame = Vec::new();
            write_message(
                &mut frame,
                &ResponseFrame {
                    id: req.id,
                    response: answer,
                },
            )
            .unwrap();
            if matches!(answer_kind(&frame), Some(true)) || matches!(fake, Fake::Silent) {
                let _ = s.write_all(&frame);
                continue;
            }
            for b in frame {
                if s.write_all(&[b]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// Whether a frame is the handshake's answer (sent whole).
    fn answer_kind(frame: &[u8]) -> Option<bool> {
        let text = std::str::from_utf8(frame.get(4..)?).ok()?;
        Some(text.contains("hello_ok"))
    }

    #[test]
    fn an_agent_that_never_answers_connect_times_out() {
        let t = tempfile::tempdir().unwrap();
        let a = fake_vmm(t.path(), Fake::Mute);
        match a.control() {
            Err(RuntimeError::Stream { source, .. }) => {
                assert_eq!(source.kind(), io::ErrorKind::TimedOut, "{source}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_silent_agent_times_out_each_request() {
        let t = tempfile::tempdir().unwrap();
        let a = fake_vmm(t.path(), Fake::Silent);
        let mut c = a.control().unwrap();
        let e = c.call(Request::Start { id: "c1".into() }).unwrap_err();
        assert!(
            matches!(e, ClientError::Timeout { op: "start", .. }),
            "{e:?}"
        );
        let e = a.signal("c1", 15).unwrap_err();
        assert!(
            matches!(e, RuntimeError::Agent(ClientError::Timeout { .. })),
            "{e:?}"
        );
        // A wait stays waitable, but not once the VM is said to be gone.
        let mut c = a.control().unwrap();
        let mut checks = 0;
        let e = c
            .wait_while(
                Request::Wait {
                    id: "c1".into(),
                    exec_id: None,
                },
                || {
                    checks += 1;
                    checks < 3
                },
            )
            .unwrap_err();
        assert!(matches!(e, ClientError::PeerGone { op: "wait" }), "{e:?}");
    }

    #[test]
    fn a_dripping_agent_times_out() {
        let t = tempfile::tempdir().unwrap();
        let a = fake_vmm(t.path(), Fake::Drip);
        let mut c = a.control().unwrap();
        let e = c.call(Request::Ping).unwrap_err();
        assert!(matches!(e, ClientError::Timeout { .. }), "{e:?}");
        assert!(a.ping().is_err());
    }
}
