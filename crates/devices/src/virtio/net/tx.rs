//! The transmit path, guest to host: a pure handler over the TX queue and a backend.
//!
//! Each chain is copied into one bounce buffer before anything looks at it (the guest cannot
//! change a header after it was checked), checked, and written to the backend as one frame. A
//! backend that is full (`WouldBlock`) leaves the chain in the ring, unconsumed, until the
//! event loop sees the backend writable again: the device never holds more than one frame.

use std::io::{self, Read};

use virtio_queue::{Queue, QueueOwnedT, Reader};

use super::backend::NetBackend;
use super::header::{check_tx, TxOffloads, VnetHeader, ETH_HLEN, HDR_LEN};
use super::MAX_FRAME;
use crate::guest_warn;
use crate::virtio::queue::{add_used, pop_chain, Chain, Mem};

/// What one pass over the TX queue did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxPass {
    /// Chains were returned to the guest (interrupt it).
    pub used: bool,
    /// The backend is full; a chain waits in the ring for it.
    pub blocked: bool,
    /// Frames handed to the backend.
    pub sent: u64,
    /// Chains dropped (malformed, oversize, refused header or refused by the host).
    pub dropped: u64,
}

/// Why a TX chain is dropped.
#[derive(Debug, thiserror::Error)]
enum TxError {
    #[error("descriptor chain does not map to guest memory")]
    BadChain(#[source] virtio_queue::Error),
    #[error("{0}-byte frame is shorter than a header and an Ethernet header")]
    Short(usize),
    #[error("{0}-byte frame exceeds {max} bytes", max = HDR_LEN + MAX_FRAME)]
    Oversize(usize),
    #[error("cannot read the chain")]
    Read(#[source] io::Error),
    #[error("bad header")]
    Header(#[source] super::header::HeaderError),
}

/// The TX side of a device: its bounce buffer.
pub struct Tx {
    buf: Vec<u8>,
}

impl Default for Tx {
    fn default() -> Self {
        Self::new()
    }
}

impl Tx {
    /// A TX path with its buffer allocated once.
    pub fn new() -> Self {
        Self {
            buf: vec![0; HDR_LEN + MAX_FRAME],
        }
    }

    /// Sends every available chain until the ring is empty or the backend is full.
    pub fn process(
        &mut self,
        mem: &Mem,
        queue: &mut Queue,
        backend: &mut dyn NetBackend,
        off: TxOffloads,
    ) -> TxPass {
        let mut pass = TxPass::default();
        while let Some(chain) = pop_chain(queue, mem) {
            let head = chain.head_index();
            let len = match self.load(mem, chain, off) {
                Ok(len) => len,
                Err(e) => {
                    guest_warn!("virtio-net: dropping a transmitted frame: {e}");
                    pass.dropped += 1;
                    pass.used |= add_used(queue, mem, head, 0);
                    continue;
                }
            };
            match write_retrying(backend, &self.buf[..len]) {
                Ok(()) => pass.sent += 1,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Leave the chain for when the backend has room.
                    queue.go_to_previous_position();
                    pass.blocked = true;
                    break;
                }
                Err(e) => {
                    guest_warn!("virtio-net: the host refused a {len}-byte frame: {e}");
                    pass.dropped += 1;
                }
            }
            pass.used |= add_used(queue, mem, head, 0);
        }
        pass
    }

    /// Copies the chain's readable bytes into the bounce buffer and checks them.
    fn load(&mut self, mem: &Mem, chain: Chain<'_>, off: TxOffloads) -> Result<usize, TxError> {
        let mut reader = Reader::new(mem, chain).map_err(TxError::BadChain)?;
        let len = reader.available_bytes();
        if len < HDR_LEN + ETH_HLEN {
            return Err(TxError::Short(len));
        }
        if len > self.buf.len() {
            return Err(TxError::Oversize(len));
        }
        reader
            .read_exact(&mut self.buf[..len])
            .map_err(TxError::Read)?;
        let header = VnetHeader::parse(&self.buf).ok_or(TxError::Short(len))?;
        check_tx(&header, len - HDR_LEN, off).map_err(TxError::Header)?;
        Ok(len)
    }
}

fn write_retrying(backend: &mut dyn NetBackend, frame: &[u8]) -> io::Result<()> {
    loop {
        match backend.write_frame(frame) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}
