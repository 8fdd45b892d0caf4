//! vsock wire format: constants, the guest's TX packets (parsed here, framing-agnostic), and
//! helpers over `virtio_vsock::packet::VsockPacket` for the RX side.

use virtio_queue::Reader;
use vm_memory::bitmap::BitmapSlice;
use vm_memory::{ByteValued, Le16, Le32, Le64};

pub use virtio_vsock::packet::{VsockPacket, PKT_HEADER_SIZE};

use crate::virtio::queue::{Chain, Mem};

/// The host's CID.
pub const HOST_CID: u64 = 2;
/// The only socket type supported: stream.
pub const TYPE_STREAM: u16 = 1;

/// Connection request.
pub const OP_REQUEST: u16 = 1;
/// Connection accepted.
pub const OP_RESPONSE: u16 = 2;
/// Connection reset (refused, aborted, or the final step of a close).
pub const OP_RST: u16 = 3;
/// Half- or full close; `flags` says which directions.
pub const OP_SHUTDOWN: u16 = 4;
/// Data.
pub const OP_RW: u16 = 5;
/// The sender's receive buffer state changed (in `buf_alloc`/`fwd_cnt`).
pub const OP_CREDIT_UPDATE: u16 = 6;
/// Please send a credit update.
pub const OP_CREDIT_REQUEST: u16 = 7;

/// SHUTDOWN flag: the sender will receive no more data.
pub const SHUTDOWN_F_RECEIVE: u32 = 1;
/// SHUTDOWN flag: the sender will send no more data.
pub const SHUTDOWN_F_SEND: u32 = 2;

/// Largest data payload accepted from or offered to the guest in one packet.
pub const MAX_PKT_DATA: u32 = 64 * 1024;

/// A connection, keyed as the host sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnKey {
    /// The host-side port (the guest's `dst_port` on packets it sends).
    pub local_port: u32,
    /// The guest-side port.
    pub peer_port: u32,
}

/// Writes the addressing fields of a host-to-guest packet and clears the rest.
pub fn init_rx_header<B: BitmapSlice>(pkt: &mut VsockPacket<'_, B>, guest_cid: u64, key: ConnKey) {
    pkt.set_src_cid(HOST_CID)
        .set_dst_cid(guest_cid)
        .set_src_port(key.local_port)
        .set_dst_port(key.peer_port)
        .set_type(TYPE_STREAM)
        .set_op(0)
        .set_flags(0)
        .set_len(0)
        .set_buf_alloc(0)
        .set_fwd_cnt(0);
}

/// The packet header (virtio 1.2, 5.10.6), as the guest writes it.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Header {
    pub src_cid: Le64,
    pub dst_cid: Le64,
    pub src_port: Le32,
    pub dst_port: Le32,
    pub len: Le32,
    pub type_: Le16,
    pub op: Le16,
    pub flags: Le32,
    pub buf_alloc: Le32,
    pub fwd_cnt: Le32,
}

// SAFETY: `Header` is `repr(C, packed)` and made only of little-endian integer wrappers, so it
// has no padding and every byte pattern is a valid value.
unsafe impl ByteValued for Header {}

const _: () = assert!(std::mem::size_of::<Header>() == PKT_HEADER_SIZE);

/// Why a TX chain is not a packet.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TxError {
    /// The readable buffers are not in guest memory or add up to more than 4 GiB.
    #[error("descriptor chain does not map to guest memory")]
    BadChain,
    /// Fewer than 44 readable bytes.
    #[error("packet header shorter than 44 bytes")]
    ShortHeader,
    /// `len` is over the 64 KiB limit.
    #[error("packet length {0} over the limit")]
    TooLong(u32),
    /// `len` says more data than the chain holds.
    #[error("packet length {0} but only {1} bytes of data")]
    ShortData(u32, usize),
}

/// A packet from the guest: its header and a reader over exactly `len` data bytes, which may
/// be spread over any number of descriptors (the header too: no framing assumptions).
pub struct TxPacket<'a> {
    pub header: Header,
    pub data: Reader<'a>,
}

impl TxPacket<'_> {
    pub fn src_cid(&self) -> u64 {
        self.header.src_cid.to_native()
    }
    pub fn dst_cid(&self) -> u64 {
        self.header.dst_cid.to_native()
    }
    pub fn src_port(&self) -> u32 {
        self.header.src_port.to_native()
    }
    pub fn dst_port(&self) -> u32 {
        self.header.dst_port.to_native()
    }
    pub fn type_(&self) -> u16 {
        self.header.type_.to_native()
    }
    pub fn op(&self) -> u16 {
        self.header.op.to_native()
    }
    pub fn flags(&self) -> u32 {
        self.header.flags.to_native()
    }
    pub fn buf_alloc(&self) -> u32 {
        self.header.buf_alloc.to_native()
    }
    pub fn fwd_cnt(&self) -> u32 {
        self.header.fwd_cnt.to_native()
    }
}

/// Parses one TX chain. Never panics.
pub fn parse_tx<'a>(mem: &'a Mem, chain: Chain<'a>) -> Result<TxPacket<'a>, TxError> {
    let mut data = Reader::new(mem, chain).map_err(|_| TxError::BadChain)?;
    let header: Header = data.read_obj().map_err(|_| TxError::ShortHeader)?;
    let len = header.len.to_native();
    if len > MAX_PKT_DATA {
        return Err(TxError::TooLong(len));
    }
    if data.available_bytes() < len as usize {
        return Err(TxError::ShortData(len, data.available_bytes()));
    }
    // Keep exactly `len` bytes (a longer buffer is allowed; the rest is ignored).
    data.split_at(len as usize).map_err(|_| TxError::BadChain)?;
    Ok(TxPacket { header, data })
}
