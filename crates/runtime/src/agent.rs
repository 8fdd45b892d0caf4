//! Connections to the guest agent through the VMM's hybrid vsock socket.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crx_proto::{
    read_message, write_message, Client, ResponseFrame, StreamHeader, StreamKind, AGENT_VSOCK_PORT,
    PROTOCOL_VERSION,
};

use crate::error::RuntimeError;

/// A control connection (handshake done).
pub type Control = Client<UnixStream>;

/// Opens a stream to guest `port`: connect to the socket, `CONNECT <port>\n`, `OK <n>\n`.
pub fn connect_port(uds: &Path, port: u32) -> io::Result<UnixStream> {
    let mut s = UnixStream::connect(uds)?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    // One byte at a time: what follows the line belongs to the guest's stream.
    while line.len() < 64 {
        match s.read(&mut b)? {
            0 => {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    "closed during CONNECT",
                ))
            }
            _ if b[0] == b'\n' => break,
            _ => line.push(b[0]),
        }
    }
    if !line.starts_with(b"OK ") {
        return Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!("CONNECT answered {:?}", String::from_utf8_lossy(&line)),
        ));
    }
    Ok(s)
}

/// The last non-empty line of a log file, if any.
fn last_line(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().rev().find(|l| !l.trim().is_empty())?;
    Some(line.trim().chars().take(600).collect())
}

/// The agent of one VM.
#[derive(Debug, Clone)]
pub struct Agent {
    pub uds: PathBuf,
}

impl Agent {
    pub fn new(uds: impl Into<PathBuf>) -> Agent {
        Agent { uds: uds.into() }
    }

    /// A new control connection, handshake done.
    pub fn control(&self) -> Result<Control, RuntimeError> {
        let s =
            connect_port(&self.uds, AGENT_VSOCK_PORT).map_err(|source| RuntimeError::Stream {
                what: format!("connecting to {}", self.uds.display()),
                source,
            })?;
        Ok(Client::handshake(s)?)
    }

    /// Retries [`Agent::control`] every few milliseconds until it succeeds, `alive()` says the
    /// VM is gone (`VmExited`), or `timeout` passes (`AgentTimeout`); the errors quote the last
    /// line of `vmm_log` (or of the console).
    pub fn wait_ready(
        &self,
        timeout: Duration,
        vmm_log: &Path,
        console: &Path,
        mut alive: impl FnMut() -> bool,
    ) -> Result<Control, RuntimeError> {
        let reason = || {
            last_line(vmm_log)
                .or_else(|| last_line(console))
                .unwrap_or_else(|| "no output from the VM".into())
        };
        let start = Instant::now();
        loop {
            if let Ok(c) = self.control() {
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
        let what = format!("{stream:?} of {id}");
        let err = |source| RuntimeError::Stream {
            what: what.clone(),
            source,
        };
        let mut s = connect_port(&self.uds, AGENT_VSOCK_PORT).map_err(err)?;
        let header = StreamHeader {
            version: PROTOCOL_VERSION,
            id: id.to_owned(),
            exec_id: exec_id.map(str::to_owned),
            stream,
        };
        let proto = |e: crx_proto::ProtoError| RuntimeError::Agent(e.into());
        write_message(&mut s, &header).map_err(proto)?;
        let resp: ResponseFrame = read_message(&mut s)
            .map_err(proto)?
            .ok_or(RuntimeError::Agent(crx_proto::ClientError::Closed))?;
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
