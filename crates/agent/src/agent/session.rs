//! One control connection: handshake, then requests answered in order.
//!
//! A payload that does not decode gets an `error` of kind `malformed` and the session goes on;
//! a frame over the size limit or cut short gets an error (when the peer still listens) and the
//! connection is closed, since the stream is out of sync. Log lines a peer can trigger are
//! limited per connection.
//!
//! A process whose OCI `process.terminal` is true gets a pty (see [`super::pty`]): the `pty`
//! stream the host opened for it is relayed with the master by a thread of its own, and
//! `resize_pty`, and `close_stdin` of a process with a terminal, are answered here.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::sync::Arc;

use crx_proto::{
    decode, read_frame, write_message, AgentError, ErrorKind, FrameError, PortHeader, Request,
    RequestFrame, Response, ResponseFrame, StreamHeader, StreamKind, PROTOCOL_VERSION,
};
use serde::Deserialize;

use super::pty::{ConsoleSocket, Ptys};
use super::relay::relay;
use super::streams::Streams;
use crate::containers::forward::Forwarder;

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The peer closed the connection, or it broke.
    Closed,
    /// The peer asked for `Shutdown` (and got `Ok`).
    Shutdown,
    /// The connection is a stdio stream, now kept in the stream registry.
    Stream,
}

/// How long the agent waits, after answering `Shutdown`, for the host to close the connection.
const SHUTDOWN_LINGER_MS: u64 = 1000;

/// Log lines one connection may cause.
const LOG_BUDGET: u32 = 10;

/// A control connection being served.
pub struct Session<S> {
    stream: S,
    helper: Option<Arc<Forwarder>>,
    streams: Arc<Streams>,
    ptys: Arc<Ptys>,
    handshaken: bool,
    log_budget: u32,
}

/// Enough of a request to answer it with the right id even when the rest is malformed.
#[derive(Deserialize)]
struct IdOnly {
    id: u64,
}

impl<S: Read + Write + AsFd> Session<S> {
    /// A session over a connected stream; container requests go to `helper`, stream
    /// connections to `streams`; the terminals of processes are kept in `ptys`.
    pub fn new(
        stream: S,
        helper: Option<Arc<Forwarder>>,
        streams: Arc<Streams>,
        ptys: Arc<Ptys>,
    ) -> Session<S> {
        Session {
            stream,
            helper,
            streams,
            ptys,
            handshaken: false,
            log_budget: LOG_BUDGET,
        }
    }

    fn log(&mut self, msg: std::fmt::Arguments<'_>) {
        if self.log_budget > 0 {
            self.log_budget -= 1;
            eprintln!("crx-init: agent: {msg}");
        }
    }

    fn reply(&mut self, id: u64, response: Response) -> bool {
        write_message(&mut self.stream, &ResponseFrame { id, response }).is_ok()
    }

    /// Serves requests until the peer closes, the stream breaks, or `Shutdown`.
    pub fn run(mut self) -> Outcome {
        loop {
            let payload = match read_frame(&mut self.stream) {
                Ok(Some(p)) => p,
                Ok(None) => return Outcome::Closed,
                Err(FrameError::Io(e)) => {
                    self.log(format_args!("connection error: {e}"));
                    return Outcome::Closed;
                }
                Err(e) => {
                    self.log(format_args!("bad frame: {e}; closing"));
                    let err = AgentError::new(ErrorKind::Malformed, format!("{e}; closing"));
                    self.reply(0, Response::Error(err));
                    return Outcome::Closed;
                }
            };
            let (id, response, outcome) = match decode::<RequestFrame>(&payload) {
                Ok(f) => {
                    let (r, o) = self.handle(f.request);
                    (f.id, r, o)
                }
                Err(e) => {
                    if !self.handshaken {
                        if let Ok(h) = decode::<StreamHeader>(&payload) {
                            return self.stream_connection(h);
                        }
                        if let Ok(h) = decode::<PortHeader>(&payload) {
                            return self.port_connection(h);
                        }
                    }
                    let id = decode::<IdOnly>(&payload).map_or(0, |x| x.id);
                    let e = crx_proto::chain(&e);
                    self.log(format_args!("malformed request: {e}"));
                    let err = AgentError::new(ErrorKind::Malformed, e);
                    (id, Response::Error(err), None)
                }
            };
            if !self.reply(id, response) {
                return Outcome::Closed;
            }
            if let Some(o) = outcome {
                if o == Outcome::Shutdown {
                    self.linger();
                }
                return o;
            }
        }
    }

    /// After the `Ok` to `Shutdown`: waits (at most [`SHUTDOWN_LINGER_MS`]) for the host to
    /// close the connection. The reset that follows stops the VMM, and a reply still queued in
    /// the vsock device would be lost (seen in the lab: the host read end-of-file instead of
    /// `Ok`). A host that reads the reply and closes its end lets the VM go at once.
    fn linger(&mut self) {
        use nix::poll::{poll, PollFd, PollFlags};
        let end = std::time::Instant::now() + std::time::Duration::from_millis(SHUTDOWN_LINGER_MS);
        let mut buf = [0u8; 512];
        loop {
            let left = end.saturating_duration_since(std::time::Instant::now());
            let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
            if ms == 0 {
                return;
            }
            let mut fds = [PollFd::new(self.stream.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, ms) {
                Ok(n) if n > 0 => {}
                _ => return,
            }
            match self.stream.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }

    /// The connection opened with a `StreamHeader`: keep its socket for the process it names,
    /// answering under the registry lock (see [`Streams::register`]).
    fn stream_connection(mut self, h: StreamHeader) -> Outcome {
        let refuse = |kind, msg: &str| Response::Error(AgentError::new(kind, msg));
        let refusal = if h.version != PROTOCOL_VERSION {
            Some(refuse(
                ErrorKind::VersionMismatch,
                "stream header version differs",
            ))
        } else {
            None
        };
        if let Some(r) = refusal {
            self.reply(0, r);
            return Outcome::Closed;
        }
        let fd = match self.stream.as_fd().try_clone_to_owned() {
            Ok(fd) => fd,
            Err(e) => {
                self.reply(0, refuse(ErrorKind::Internal, &format!("dup: {e}")));
                return Outcome::Closed;
            }
        };
        let streams = self.streams.clone();
        if streams.register(h.id, h.exec_id, h.stream, fd, || {
            self.reply(0, Response::Ok)
        }) {
            Outcome::Stream
        } else {
            Outcome::Closed
        }
    }

    /// The connection opened with a `PortHeader`: joined to a TCP connection to that port on
    /// the guest's loopback ([`super::port`]) once it connected, until both sides ended.
    fn port_connection(mut self, h: PortHeader) -> Outcome {
        if h.version != PROTOCOL_VERSION {
            let e = AgentError::new(ErrorKind::VersionMismatch, "port header version differs");
            self.reply(0, Response::Error(e));
            return Outcome::Closed;
        }
        let tcp = match super::port::connect(h.forward_port) {
            Ok(t) => t,
            Err(e) => {
                let msg = format!("port {} of the pod: {e}", h.forward_port);
                self.reply(
                    0,
                    Response::Error(AgentError::new(ErrorKind::NotFound, msg)),
                );
                return Outcome::Closed;
            }
        };
        let fd = match self.stream.as_fd().try_clone_to_owned() {
            Ok(fd) => fd,
            Err(e) => {
                let msg = format!("dup: {e}");
                self.reply(
                    0,
                    Response::Error(AgentError::new(ErrorKind::Internal, msg)),
                );
                return Outcome::Closed;
            }
        };
        if self.reply(0, Response::Ok) {
            let _ = super::port::splice(fd, tcp);
        }
        Outcome::Closed
    }

    /// Answers one request; `Some(outcome)` ends the session after the reply.
    fn handle(&mut self, req: Request) -> (Response, Option<Outcome>) {
        let err = |kind, msg: String| (Response::Error(AgentError::new(kind, msg)), None);
        match req {
            Request::Hello { version } if version == PROTOCOL_VERSION => {
                self.handshaken = true;
                (
                    Response::HelloOk {
                        version: PROTOCOL_VERSION,
                    },
                    None,
                )
            }
            Request::Hello { version } => err(
                ErrorKind::VersionMismatch,
                format!("host speaks version {version}, agent speaks {PROTOCOL_VERSION}"),
            ),
            _ if !self.handshaken => err(
                ErrorKind::HandshakeRequired,
                "send hello with the protocol version first".into(),
            ),
            Request::Ping => (Response::Pong, None),
            Request::Identity {
                entropy,
                disk_sectors,
            } => match crate::identity::apply(&entropy, &disk_sectors) {
                Ok(()) => (Response::Ok, None),
                Err(e) => err(e.kind(), crx_proto::chain(&e)),
            },
            // A template's clone runs nothing before its own randomness (ADR 0017).
            Request::CreateContainer { .. } | Request::Exec { .. }
                if crate::identity::pending() =>
            {
                err(
                    ErrorKind::InvalidRequest,
                    "this VM was restored from a template: send identity first".into(),
                )
            }
            // Only the VM's PID 1 owns the network it would change (not a host-tier agent).
            Request::ConfigureNetwork { .. } if std::process::id() != 1 => err(
                ErrorKind::Unsupported,
                "configure_network: only the agent running as the VM's PID 1 configures its network"
                    .into(),
            ),
            Request::ConfigureNetwork { network } => match crate::network::apply(&network) {
                Ok(()) => (Response::Ok, None),
                Err(e) => err(e.kind(), crx_proto::chain(&e)),
            },
            Request::Shutdown => {
                // Containers first: the helper kills them and unmounts their layers.
                if let Some(h) = self.helper.as_ref().filter(|h| h.started()) {
                    if let Response::Error(e) = h.call(Request::Shutdown, Vec::new()) {
                        self.log(format_args!("stopping containers: {e}"));
                    }
                }
                (Response::Ok, Some(Outcome::Shutdown))
            }
            Request::ResizePty {
                id,
                exec_id,
                rows,
                cols,
            } => match self.ptys.resize(&id, exec_id.as_deref(), rows, cols) {
                Ok(true) => (Response::Ok, None),
                Ok(false) => err(
                    ErrorKind::NotFound,
                    format!("{id}: no such process with a terminal"),
                ),
                Err(e) => err(ErrorKind::Internal, format!("TIOCSWINSZ: {e}")),
            },
            Request::CloseStdin { id, exec_id } if self.ptys.has(&id, exec_id.as_deref()) => {
                match self.ptys.end_input(&id, exec_id.as_deref()) {
                    Ok(_) => (Response::Ok, None),
                    Err(e) => err(ErrorKind::Internal, format!("ending terminal input: {e}")),
                }
            }
            other => match self.helper.clone() {
                Some(h) => match &other {
                    Request::CreateContainer { .. } | Request::Exec { .. } => {
                        (self.start_process(&h, other), None)
                    }
                    _ => (h.call(other, Vec::new()), None),
                },
                None => err(
                    ErrorKind::Unsupported,
                    format!(
                        "{}: containers are unavailable in this agent",
                        op_name(&other)
                    ),
                ),
            },
        }
    }
}

impl<S> Session<S> {
    /// `create_container` or `exec`: with the streams the host opened for the process, and for
    /// one with `terminal: true` a console socket, the master it yields relayed with the `pty`
    /// stream.
    fn start_process(&self, h: &Forwarder, req: Request) -> Response {
        let (id, exec_id, terminal) = match &req {
            Request::CreateContainer { id, spec, .. } => {
                (id.clone(), None, wants_terminal(&spec["process"]))
            }
            Request::Exec {
                id,
                exec_id,
                process,
            } => (id.clone(), Some(exec_id.clone()), wants_terminal(process)),
            _ => return h.call(req, Vec::new()),
        };
        let mut fds = self.streams.take(&id, exec_id.as_deref());
        let pty = fds
            .iter()
            .position(|(k, _)| *k == StreamKind::Pty)
            .map(|i| fds.remove(i).1);
        if !terminal {
            // A pty stream without a terminal is closed (the host reads end-of-file).
            return h.call(req, fds);
        }
        let fail = |kind, msg: String| Response::Error(AgentError::new(kind, msg));
        let Some(pty) = pty else {
            return fail(
                ErrorKind::InvalidRequest,
                format!("{id}: process.terminal is set: open a pty stream for it first"),
            );
        };
        // The terminal is the process's stdio: other streams are not used.
        drop(fds);
        let console = match ConsoleSocket::bind() {
            Ok(c) => c,
            Err(e) => return fail(ErrorKind::Internal, format!("console socket: {e}")),
        };
        let r = h.call_with_console(req, Vec::new(), Some(console.path().to_owned()));
        if r != Response::Ok {
            return r;
        }
        let master = match console.receive_master() {
            Ok(m) => Arc::new(m),
            Err(e) => {
                return fail(
                    ErrorKind::Internal,
                    format!("receiving the terminal of {id}: {e}"),
                )
            }
        };
        let relayed = match master.try_clone() {
            Ok(m) => m,
            Err(e) => return fail(ErrorKind::Internal, format!("dup: {e}")),
        };
        self.ptys.insert(&id, exec_id.as_deref(), master.clone());
        let (ptys, key, m) = (
            self.ptys.clone(),
            (id.clone(), exec_id.clone()),
            master.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name("pty".into())
            .spawn(move || {
                let forget = || ptys.forget(&key.0, key.1.as_deref(), &m);
                relay(relayed, pty, forget);
                // Also when the host went first. The last descriptor of the master closes
                // here: the terminal hangs up.
                ptys.forget(&key.0, key.1.as_deref(), &m);
            });
        match spawned {
            Ok(_) => Response::Ok,
            Err(e) => {
                self.ptys.forget(&id, exec_id.as_deref(), &master);
                fail(ErrorKind::Internal, format!("starting the pty relay: {e}"))
            }
        }
    }
}

/// Whether an OCI `process` asks for a terminal.
fn wants_terminal(process: &serde_json::Value) -> bool {
    process
        .get("terminal")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false)
}

/// The wire name of a request (its `op`).
pub(crate) fn op_name(r: &Request) -> String {
    serde_json_op(r).unwrap_or_else(|| "request".into())
}

fn serde_json_op(r: &Request) -> Option<String> {
    let v = crx_proto::encode(r).ok()?;
    #[derive(Deserialize)]
    struct Op {
        op: String,
    }
    decode::<Op>(&v).ok().map(|o| o.op)
}
