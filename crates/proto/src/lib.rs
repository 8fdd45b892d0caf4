//! Host<->guest agent protocol (leaf crate).
//!
//! - [`frame`]: length-prefixed frames (`u32` big-endian length, then the payload), at most
//!   [`MAX_FRAME_LEN`] bytes, the bound checked before anything is allocated.
//! - [`message`]: the typed messages (serde, JSON payloads): requests, responses, typed errors,
//!   and the headers that open a stdio stream or a port-forward connection.
//! - [`codec`]: messages to and from frames over any `Read` / `Write`; decoding never panics.
//! - [`network`]: the guest network the host describes (interfaces by MAC, addresses, routes).
//! - [`client`]: a blocking client for the host side (handshake, one call at a time).
//! - [`console`]: the boot-timer marks and a system VM's status line (outside the agent
//!   connection: an I/O port and the serial console).
//! - [`error_chain`]: an error and its sources on one line (shared by every crate).
//!
//! The first exchange on a control connection is `Hello { version }` answered by
//! `HelloOk { version }` (or an error of kind `VersionMismatch`); see `README.md`.
#![forbid(unsafe_code)]

pub mod client;
pub mod codec;
pub mod console;
pub mod error_chain;
pub mod frame;
pub mod message;
pub mod network;

pub use client::{Client, ClientError};
pub use codec::{decode, encode, read_message, write_message, ProtoError};
pub use error_chain::chain;
pub use frame::{read_frame, write_frame, FrameError, MAX_FRAME_LEN};
pub use message::*;
pub use network::NetworkConfig;

/// The protocol version this crate speaks. Bumped on any incompatible change.
pub const PROTOCOL_VERSION: u32 = 1;

/// The vsock port the guest agent listens on.
pub const AGENT_VSOCK_PORT: u32 = 1024;
