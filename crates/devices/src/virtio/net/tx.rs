//! The transmit path, guest to host: a pure handler over the TX queue and a backend.
//!
//! Each chain's virtio-net header is copied out of guest memory before anything looks at it
//! (the guest cannot change it after it was checked) and checked; the rest of the chain, the
//! Ethernet frame, is handed to the backend where it lies (the tap's `writev` copies it once:
//! no bounce buffer). A backend that is full (`WouldBlock`) leaves the chain in the ring,
//! unconsumed, until the event loop sees the backend writable again: the device never holds a
//! frame.

use std::io;

use virtio_queue::{Queue, QueueOwnedT};
use vm_memory::{GuestMemoryBackend, VolatileSlice};

use super::backend::{NetBackend, TxFrame};
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
    #[error("a descriptor does not map to guest memory")]
    BadChain,
    #[error("{0}-byte frame is shorter than a header and an Ethernet header")]
    Short(usize),
    #[error("frame exceeds {max} bytes", max = HDR_LEN + MAX_FRAME)]
    Oversize,
    #[error("bad header")]
    Header(#[source] super::header::HeaderError),
}

/// The TX side of a device (it keeps nothing between frames).
#[derive(Default)]
pub struct Tx;

impl Tx {
    /// A TX path.
    pub fn new() -> Self {
        Self
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
            let frame = match load(mem, chain, off) {
                Ok(frame) => frame,
                Err(e) => {
                    guest_warn!("virtio-net: dropping a transmitted frame: {e}");
                    pass.dropped += 1;
                    pass.used |= add_used(queue, mem, head, 0);
                    continue;
                }
            };
            match write_retrying(backend, &frame) {
                Ok(()) => pass.sent += 1,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Leave the chain for when the backend has room.
                    queue.go_to_previous_position();
                    pass.blocked = true;
                    break;
                }
                Err(e) => {
                    let len = frame.len();
                    guest_warn!("virtio-net: the host refused a {len}-byte frame: {e}");
                    pass.dropped += 1;
                }
            }
            pass.used |= add_used(queue, mem, head, 0);
        }
        pass
    }
}

/// The chain's readable descriptors as guest memory slices (a TX chain has no writable one; the
/// first ends it), its header copied out and checked, the rest left in place.
fn load<'a>(mem: &'a Mem, chain: Chain<'a>, off: TxOffloads) -> Result<TxFrame<'a>, TxError> {
    let mut header = [0u8; HDR_LEN];
    let mut got = 0usize;
    let mut body: Vec<VolatileSlice<'a>> = Vec::new();
    let mut len = 0usize;
    for d in chain {
        if d.is_write_only() {
            break;
        }
        let n = d.len() as usize;
        len = len.saturating_add(n);
        if len > HDR_LEN + MAX_FRAME {
            return Err(TxError::Oversize);
        }
        if n == 0 {
            continue;
        }
        let mut s = mem.get_slice(d.addr(), n).map_err(|_| TxError::BadChain)?;
        if got < HDR_LEN {
            let take = (HDR_LEN - got).min(n);
            let part = s.subslice(0, take).map_err(|_| TxError::BadChain)?;
            part.copy_to(&mut header[got..got + take]);
            got += take;
            if take == n {
                continue;
            }
            s = s.offset(take).map_err(|_| TxError::BadChain)?;
        }
        body.push(s);
    }
    if len < HDR_LEN + ETH_HLEN {
        return Err(TxError::Short(len));
    }
    let h = VnetHeader::parse(&header).ok_or(TxError::Short(len))?;
    check_tx(&h, len - HDR_LEN, off).map_err(TxError::Header)?;
    Ok(TxFrame { header, body })
}

fn write_retrying(backend: &mut dyn NetBackend, frame: &TxFrame<'_>) -> io::Result<()> {
    loop {
        match backend.write_frame(frame) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}
