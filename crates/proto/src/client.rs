//! A blocking client for the host side: handshake, then one request at a time.
//!
//! On a socket ([`Timeouts`]) every exchange can be bounded: [`Client::call_within`] gives the
//! whole exchange (request written, whole response read) one deadline, so that an agent that
//! says nothing, or drips a byte now and then, cannot hold the caller past it.
//! [`Client::call_waiting`] is for requests that may rightly take forever (`Wait`): the first
//! byte of the answer may take as long as `alive()` says the peer lives; the rest of the
//! frame, and the request itself, are bounded as before.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use crate::codec::{read_message, write_message, ProtoError};
use crate::message::{AgentError, Request, RequestFrame, Response, ResponseFrame};
use crate::PROTOCOL_VERSION;

/// Errors of a client call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("agent connection")]
    Proto(#[from] ProtoError),
    #[error("agent closed the connection")]
    Closed,
    #[error("agent answered request {got} while {want} was expected")]
    WrongId { want: u64, got: u64 },
    #[error("agent refused the request")]
    Agent(#[source] AgentError),
    #[error("unexpected agent response {0:?}")]
    Unexpected(Box<Response>),
    /// The exchange did not end within its limit; the connection is then out of step and
    /// every later call on it fails with [`ClientError::Broken`].
    #[error(
        "the agent did not answer {op} within {secs} s (raise CRX_AGENT_TIMEOUT on a slow host)"
    )]
    Timeout { op: &'static str, secs: u64 },
    /// While waiting, `alive()` said the peer (the VM) is gone.
    #[error("the VM stopped while waiting for {op}")]
    PeerGone { op: &'static str },
    /// An earlier call on this connection timed out.
    #[error("agent connection unusable after an earlier timeout")]
    Broken,
}

/// A stream whose blocking reads and writes can be given a timeout (a socket).
pub trait Timeouts {
    /// `None`: block forever.
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()>;
    /// `None`: block forever.
    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()>;
}

impl Timeouts for std::os::unix::net::UnixStream {
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        std::os::unix::net::UnixStream::set_read_timeout(self, t)
    }
    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        std::os::unix::net::UnixStream::set_write_timeout(self, t)
    }
}

impl Timeouts for std::net::TcpStream {
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        std::net::TcpStream::set_read_timeout(self, t)
    }
    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        std::net::TcpStream::set_write_timeout(self, t)
    }
}

/// A control connection to the agent.
#[derive(Debug)]
pub struct Client<S> {
    stream: S,
    next_id: u64,
    broken: bool,
}

impl<S: Read + Write> Client<S> {
    /// Wraps a connected stream and performs the version handshake (unbounded in time: on a
    /// socket, prefer [`Client::handshake_within`]).
    pub fn handshake(stream: S) -> Result<Client<S>, ClientError> {
        let mut c = Client::new(stream);
        let r = c.call(hello());
        c.hello_answer(r)
    }

    fn new(stream: S) -> Client<S> {
        Client {
            stream,
            next_id: 1,
            broken: false,
        }
    }

    fn hello_answer(self, r: Result<Response, ClientError>) -> Result<Client<S>, ClientError> {
        match r? {
            Response::HelloOk { .. } => Ok(self),
            other => Err(ClientError::Unexpected(Box::new(other))),
        }
    }

    /// Sends a request and waits for its response, however long it takes; an `Error`
    /// response becomes [`ClientError::Agent`].
    pub fn call(&mut self, request: Request) -> Result<Response, ClientError> {
        if self.broken {
            return Err(ClientError::Broken);
        }
        let id = self.next_id;
        self.next_id += 1;
        exchange(&mut self.stream, id, request)
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    /// The underlying stream.
    pub fn into_inner(self) -> S {
        self.stream
    }
}

fn hello() -> Request {
    Request::Hello {
        version: PROTOCOL_VERSION,
    }
}

fn exchange<S: Read + Write>(
    stream: &mut S,
    id: u64,
    request: Request,
) -> Result<Response, ClientError> {
    write_message(stream, &RequestFrame { id, request })?;
    let resp: ResponseFrame = read_message(stream)?.ok_or(ClientError::Closed)?;
    if resp.id != id {
        return Err(ClientError::WrongId {
            want: id,
            got: resp.id,
        });
    }
    match resp.response {
        Response::Error(e) => Err(ClientError::Agent(e)),
        r => Ok(r),
    }
}

/// The name of a request, for messages.
pub fn op_name(r: &Request) -> &'static str {
    match r {
        Request::Hello { .. } => "hello",
        Request::Ping => "ping",
        Request::CreateContainer { .. } => "create_container",
        Request::Start { .. } => "start",
        Request::Exec { .. } => "exec",
        Request::Signal { .. } => "signal",
        Request::Wait { .. } => "wait",
        Request::ResizePty { .. } => "resize_pty",
        Request::CloseStdin { .. } => "close_stdin",
        Request::ListProcesses { .. } => "list_processes",
        Request::Pause { .. } => "pause",
        Request::Resume { .. } => "resume",
        Request::Stats { .. } => "stats",
        Request::WaitOom { .. } => "wait_oom",
        Request::Update { .. } => "update",
        Request::Remove { .. } => "remove",
        Request::ConfigureNetwork { .. } => "configure_network",
        Request::Shutdown => "shutdown",
        Request::Identity { .. } => "identity",
    }
}

impl<S: Read + Write + Timeouts> Client<S>
where
    for<'b> &'b S: Read + Write,
{
    /// [`Client::handshake`] that fails with [`ClientError::Timeout`] when the agent has not
    /// answered within `limit`.
    pub fn handshake_within(stream: S, limit: Duration) -> Result<Client<S>, ClientError> {
        let mut c = Client::new(stream);
        let r = c.call_within(hello(), limit);
        c.hello_answer(r)
    }

    /// [`Client::call`] whose whole exchange ends within `limit`: else
    /// [`ClientError::Timeout`], and the connection is unusable afterwards.
    pub fn call_within(
        &mut self,
        request: Request,
        limit: Duration,
    ) -> Result<Response, ClientError> {
        self.bounded(request, limit, None)
    }

    /// A call whose answer may take as long as the peer lives (`Wait`): until the first byte
    /// of the response, `alive()` is asked every `every`, and a `false` ends the call with
    /// [`ClientError::PeerGone`]; writing the request, and reading the rest of the response
    /// once it began, are bounded by `limit` as in [`Client::call_within`].
    pub fn call_waiting(
        &mut self,
        request: Request,
        limit: Duration,
        every: Duration,
        alive: &mut dyn FnMut() -> bool,
    ) -> Result<Response, ClientError> {
        self.bounded(request, limit, Some((every, alive)))
    }

    fn bounded(
        &mut self,
        request: Request,
        limit: Duration,
        waiting: Option<(Duration, &mut dyn FnMut() -> bool)>,
    ) -> Result<Response, ClientError> {
        if self.broken {
            return Err(ClientError::Broken);
        }
        let op = op_name(&request);
        let id = self.next_id;
        self.next_id += 1;
        let mut io = Bounded {
            inner: &self.stream,
            limit,
            deadline: Instant::now() + limit,
            waiting,
            outcome: Outcome::Fine,
        };
        let result = exchange(&mut io, id, request);
        let outcome = io.outcome;
        let _ = self.stream.set_read_timeout(None);
        let _ = self.stream.set_write_timeout(None);
        match (result, outcome) {
            (Ok(r), _) => Ok(r),
            (Err(_), Outcome::TimedOut) => {
                self.broken = true;
                Err(ClientError::Timeout {
                    op,
                    secs: limit.as_secs(),
                })
            }
            (Err(_), Outcome::Gone) => {
                self.broken = true;
                Err(ClientError::PeerGone { op })
            }
            (Err(e), Outcome::Fine) => Err(e),
        }
    }
}

/// How a bounded exchange ended at the I/O level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Fine,
    TimedOut,
    Gone,
}

/// Reads and writes of one exchange under its deadline (see [`Client::call_waiting`] for
/// the waiting mode).
struct Bounded<'a, 'w, S> {
    inner: &'a S,
    limit: Duration,
    deadline: Instant,
    waiting: Option<(Duration, &'w mut dyn FnMut() -> bool)>,
    outcome: Outcome,
}

impl<S> Bounded<'_, '_, S> {
    fn timed_out(&mut self) -> io::Error {
        self.outcome = Outcome::TimedOut;
        io::Error::new(io::ErrorKind::TimedOut, "agent exchange timed out")
    }

    fn left(&mut self) -> io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(self.timed_out());
        }
        Ok(left)
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

impl<S: Timeouts> Read for Bounded<'_, '_, S>
where
    for<'b> &'b S: Read,
{
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some((every, alive)) = self.waiting.as_mut() {
            // Waiting for the first byte: as long as the peer lives.
            loop {
                self.inner.set_read_timeout(Some(*every))?;
                match self.inner.read(buf) {
                    Ok(n) => {
                        self.waiting = None;
                        self.deadline = Instant::now() + self.limit;
                        return Ok(n);
                    }
                    Err(e) if is_timeout(&e) => {
                        if !alive() {
                            self.outcome = Outcome::Gone;
                            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "peer gone"));
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
        let left = self.left()?;
        self.inner.set_read_timeout(Some(left))?;
        match self.inner.read(buf) {
            Err(e) if is_timeout(&e) => Err(self.timed_out()),
            r => r,
        }
    }
}

impl<S: Timeouts> Write for Bounded<'_, '_, S>
where
    for<'b> &'b S: Write,
{
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let left = self.left()?;
        self.inner.set_write_timeout(Some(left))?;
        match self.inner.write(buf) {
            Err(e) if is_timeout(&e) => Err(self.timed_out()),
            r => r,
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
