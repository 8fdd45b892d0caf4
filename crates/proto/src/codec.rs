//! Messages to and from frames.

use std::io::{Read, Write};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::frame::{read_frame, write_frame, FrameError, MAX_FRAME_LEN};

/// Errors encoding, decoding or exchanging messages.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("frame")]
    Frame(#[from] FrameError),
    #[error("decoding a message")]
    Decode(#[source] serde_json::Error),
    #[error("encoding a message")]
    Encode(#[source] serde_json::Error),
    #[error("message of {0} bytes exceeds the frame limit")]
    TooLarge(usize),
}

/// Serializes a message to a frame payload (not length-prefixed).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, ProtoError> {
    let v = serde_json::to_vec(msg).map_err(ProtoError::Encode)?;
    if v.len() > MAX_FRAME_LEN as usize {
        return Err(ProtoError::TooLarge(v.len()));
    }
    Ok(v)
}

/// Parses a frame payload. Never panics: any byte string gives a message or an error (JSON
/// nesting is bounded by serde_json's recursion limit).
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, ProtoError> {
    serde_json::from_slice(payload).map_err(ProtoError::Decode)
}

/// Writes one message as a frame.
pub fn write_message<T: Serialize, W: Write>(w: &mut W, msg: &T) -> Result<(), ProtoError> {
    write_frame(w, &encode(msg)?)?;
    Ok(())
}

/// Reads one message; `Ok(None)` on a clean end of stream.
pub fn read_message<T: DeserializeOwned, R: Read>(r: &mut R) -> Result<Option<T>, ProtoError> {
    match read_frame(r)? {
        None => Ok(None),
        Some(p) => decode(&p).map(Some),
    }
}
