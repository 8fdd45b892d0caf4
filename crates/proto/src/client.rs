//! A blocking client for the host side: handshake, then one request at a time.

use std::io::{Read, Write};

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
}

/// A control connection to the agent.
#[derive(Debug)]
pub struct Client<S> {
    stream: S,
    next_id: u64,
}

impl<S: Read + Write> Client<S> {
    /// Wraps a connected stream and performs the version handshake.
    pub fn handshake(stream: S) -> Result<Client<S>, ClientError> {
        let mut c = Client { stream, next_id: 1 };
        match c.call(Request::Hello {
            version: PROTOCOL_VERSION,
        })? {
            Response::HelloOk { .. } => Ok(c),
            other => Err(ClientError::Unexpected(Box::new(other))),
        }
    }

    /// Sends a request and waits for its response; an `Error` response becomes
    /// [`ClientError::Agent`].
    pub fn call(&mut self, request: Request) -> Result<Response, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        write_message(&mut self.stream, &RequestFrame { id, request })?;
        let resp: ResponseFrame = read_message(&mut self.stream)?.ok_or(ClientError::Closed)?;
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

    /// The underlying stream.
    pub fn into_inner(self) -> S {
        self.stream
    }
}
