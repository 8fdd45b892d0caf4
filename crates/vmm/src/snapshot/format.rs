//! The state file's layout (docs/snapshot-format.md): a fixed 72-byte header, the postcard
//! encoding of [`VmState`], and a SHA-256 over everything before it. Every number is
//! little-endian.
//!
//! ```text
//! 0   8   magic "CRXSNAP\0"
//! 8   4   format version (FORMAT_VERSION)
//! 12  4   flags (0)
//! 16  16  CPU identity: CPUID.0 vendor (12 bytes), CPUID.1:EAX (4)
//! 32  32  VM shape hash (identity::config_hash)
//! 64  8   payload length N
//! 72  N   payload: postcard(VmState)
//! 72+N 32 SHA-256 of bytes [0, 72+N)
//! ```
//!
//! Decoding reads a file from disk that may be damaged or hostile: every length is checked
//! against the bytes present before anything is allocated, and each refusal is one line.

use sha2::{Digest, Sha256};

use super::identity::CpuIdentity;
use super::state::VmState;

/// The file's first bytes.
pub const MAGIC: [u8; 8] = *b"CRXSNAP\0";
/// The version this build writes and the only one it reads.
pub const FORMAT_VERSION: u32 = 1;
/// Header length.
pub const HEADER_LEN: usize = 72;
/// Checksum length.
pub const SUM_LEN: usize = 32;
/// Largest payload accepted (a 254-vCPU VM's state is well under 8 MiB).
pub const MAX_PAYLOAD: u64 = 16 << 20;

/// Why a state file was refused (each message is the one line the user sees).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    /// Shorter than its header or its declared payload.
    #[error("snapshot state file is truncated ({len} bytes, {need} expected)")]
    Truncated {
        /// Bytes present.
        len: usize,
        /// Bytes the header implies.
        need: u64,
    },
    /// Not a crx snapshot.
    #[error("not a crx-vmm snapshot state file (bad magic)")]
    Magic,
    /// Written by another format version.
    #[error("snapshot format version {0} is not supported (this crx-vmm reads version {FORMAT_VERSION})")]
    Version(u32),
    /// Unknown flags.
    #[error("snapshot header has unknown flags {0:#x}")]
    Flags(u32),
    /// Payload length over the limit.
    #[error("snapshot state payload of {0} bytes is over the {MAX_PAYLOAD}-byte limit")]
    TooLarge(u64),
    /// Bytes after the checksum.
    #[error("snapshot state file has {0} bytes after its checksum (altered?)")]
    Trailing(usize),
    /// The checksum does not match.
    #[error("snapshot state file checksum mismatch: the file is damaged or was altered")]
    Checksum,
    /// Taken on another CPU.
    #[error("snapshot was taken on another CPU ({saved}); this host is {host}")]
    OtherCpu {
        /// The snapshot's.
        saved: String,
        /// This host's.
        host: String,
    },
    /// Taken from a VM of another shape.
    #[error(
        "snapshot was taken from a VM of another configuration (memory, vCPUs or devices differ)"
    )]
    OtherConfig,
    /// The payload does not decode.
    #[error("snapshot state does not decode: {0}")]
    Decode(String),
}

/// What the header must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expect {
    /// The CPU.
    pub cpu: CpuIdentity,
    /// The VM shape hash.
    pub config: [u8; 32],
}

/// Encodes `state` behind a header for `expect` and appends the checksum.
pub fn encode(state: &VmState, expect: &Expect) -> Result<Vec<u8>, FormatError> {
    let payload = postcard::to_allocvec(state).map_err(|e| FormatError::Decode(e.to_string()))?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len() + SUM_LEN);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&expect.cpu.to_bytes());
    out.extend_from_slice(&expect.config);
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&payload);
    let sum = Sha256::digest(&out);
    out.extend_from_slice(&sum);
    Ok(out)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

/// Checks the header and checksum of `bytes` against `expect` and decodes the state.
pub fn decode(bytes: &[u8], expect: &Expect) -> Result<VmState, FormatError> {
    let truncated = |need: u64| FormatError::Truncated {
        len: bytes.len(),
        need,
    };
    if bytes.len() < 12 {
        return Err(truncated(HEADER_LEN as u64));
    }
    if bytes[..8] != MAGIC {
        return Err(FormatError::Magic);
    }
    let version = u32_at(bytes, 8);
    if version != FORMAT_VERSION {
        return Err(FormatError::Version(version));
    }
    if bytes.len() < HEADER_LEN + SUM_LEN {
        return Err(truncated((HEADER_LEN + SUM_LEN) as u64));
    }
    let flags = u32_at(bytes, 12);
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[64..72]);
    let payload_len = u64::from_le_bytes(len);
    if payload_len > MAX_PAYLOAD {
        return Err(FormatError::TooLarge(payload_len));
    }
    // Bounded above, so this cannot overflow.
    let body_end = HEADER_LEN + payload_len as usize;
    let need = body_end + SUM_LEN;
    if bytes.len() < need {
        return Err(truncated(need as u64));
    }
    if bytes.len() > need {
        return Err(FormatError::Trailing(bytes.len() - need));
    }
    if Sha256::digest(&bytes[..body_end])[..] != bytes[body_end..] {
        return Err(FormatError::Checksum);
    }
    if flags != 0 {
        return Err(FormatError::Flags(flags));
    }
    let mut cpu = [0u8; 16];
    cpu.copy_from_slice(&bytes[16..32]);
    let cpu = CpuIdentity::from_bytes(cpu);
    if cpu != expect.cpu {
        return Err(FormatError::OtherCpu {
            saved: cpu.to_string(),
            host: expect.cpu.to_string(),
        });
    }
    if bytes[32..64] != expect.config {
        return Err(FormatError::OtherConfig);
    }
    decode_payload(&bytes[HEADER_LEN..body_end])
}

/// Decodes a payload (no header): postcard, no trailing bytes, then the count bounds.
pub fn decode_payload(payload: &[u8]) -> Result<VmState, FormatError> {
    let (state, rest): (VmState, _) =
        postcard::take_from_bytes(payload).map_err(|e| FormatError::Decode(e.to_string()))?;
    if !rest.is_empty() {
        return Err(FormatError::Decode(format!(
            "{} bytes after the state",
            rest.len()
        )));
    }
    state.check_bounds().map_err(FormatError::Decode)?;
    Ok(state)
}

#[cfg(test)]
mod tests;
