//! Receiving straight into the guest's buffers (with `VIRTIO_NET_F_MRG_RXBUF`): one `readv`
//! from the tap over the receive chains, no copy through a buffer of the device's.
//!
//! A tap frame's length is known only once it is read, so a read needs room for the largest
//! frame: the chains are popped ahead, parsed once per pass, and the frame takes as many as
//! it fills; `num_buffers` is written in its header and they are published together. The
//! chains a pass popped and no frame used go back to the ring when the pass ends
//! ([`Posted::rewind`]: they are the last ones popped), so between passes, and so in every
//! snapshot, the device holds no chain.
//!
//! Only well-formed chains are taken here (every descriptor device-writable and in guest
//! memory, room for the header): anything else, a ring holding less than the largest frame, or
//! more pieces than one `readv` takes, and the frame goes through [`super::rx`]'s buffer,
//! which copes with all of them.

use std::collections::VecDeque;
use std::io;

use virtio_queue::{Queue, QueueOwnedT};
use vm_memory::{Bytes, GuestMemoryBackend, VolatileSlice};

use super::backend::NetBackend;
use super::header::{HDR_LEN, NUM_BUFFERS_OFFSET};
use super::MAX_FRAME;
use crate::virtio::queue::{add_used_batch, pop_chain, Chain, Mem};

/// Room a read needs: the largest frame the tap hands over, with its header.
const FULL: usize = HDR_LEN + MAX_FRAME;
/// Pieces one `readv` takes (the kernel's `UIO_MAXIOV`).
const MAX_IOVS: usize = 1024;

/// What one direct read did.
#[derive(Debug, PartialEq, Eq)]
pub enum Direct {
    /// A frame went into the guest's buffers; `used`: they were published.
    Delivered { used: bool },
    /// The backend had no frame.
    Empty,
    /// The backend failed or handed over a runt: nothing was published.
    Dropped,
    /// Not possible now (see the module docs): read this frame through the buffer.
    NotNow,
}

/// One receive chain: its head and its buffers.
struct Posted<'a> {
    head: u16,
    bufs: Vec<VolatileSlice<'a>>,
    bytes: usize,
}

/// The chains one pass popped and has not used yet, in ring order.
#[derive(Default)]
pub struct Pass<'a> {
    chains: VecDeque<Posted<'a>>,
    room: usize,
    pieces: usize,
}

impl<'a> Pass<'a> {
    /// Reads the next frame into the guest's buffers.
    pub fn receive(
        &mut self,
        mem: &'a Mem,
        queue: &mut Queue,
        backend: &mut dyn NetBackend,
    ) -> Direct {
        if !self.top_up(mem, queue) {
            return Direct::NotNow;
        }
        let mut bufs = Vec::with_capacity(self.pieces);
        let mut left = FULL;
        for s in self.chains.iter().flat_map(|c| c.bufs.iter()) {
            if left == 0 {
                break;
            }
            let n = s.len().min(left);
            // In bounds: `n` is at most the slice's length.
            bufs.push(s.subslice(0, n).unwrap_or(*s));
            left -= n;
        }
        let n = match read_retrying(backend, &bufs) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Direct::Empty,
            Err(e) => {
                log::warn!("virtio-net: reading a frame from the host failed: {e}");
                return Direct::Dropped;
            }
        };
        if n <= HDR_LEN {
            return Direct::Dropped;
        }
        let mut parts = Vec::new();
        let mut left = n;
        for c in &self.chains {
            if left == 0 {
                break;
            }
            let k = c.bytes.min(left);
            // Within one chain's length, itself a u32.
            parts.push((c.head, k as u32));
            left -= k;
        }
        // At most a queue's worth of chains: fits a u16. The first chain holds the header.
        let count = (parts.len() as u16).to_le_bytes();
        if let Some(first) = self.chains.front() {
            write_at(&first.bufs, NUM_BUFFERS_OFFSET, &count);
        }
        for c in self.chains.drain(..parts.len()) {
            self.room -= c.bytes;
            self.pieces -= c.bufs.len();
        }
        let used = add_used_batch(queue, mem, &parts);
        Direct::Delivered { used }
    }

    /// Pops chains until they hold the largest frame. False when the ring runs dry first, a
    /// chain is not one this path takes (put back, for the buffered path to deal with), or
    /// the pieces would exceed one `readv`.
    fn top_up(&mut self, mem: &'a Mem, queue: &mut Queue) -> bool {
        while self.room < FULL {
            let Some(chain) = pop_chain(queue, mem) else {
                return false;
            };
            match parse(mem, chain) {
                Some(p) if self.pieces + p.bufs.len() <= MAX_IOVS => {
                    self.room += p.bytes;
                    self.pieces += p.bufs.len();
                    self.chains.push_back(p);
                }
                _ => {
                    queue.go_to_previous_position();
                    return false;
                }
            }
        }
        true
    }

    /// Puts the chains no frame used back in the ring, for the next pass or the buffered path.
    pub fn rewind(&mut self, queue: &mut Queue) {
        for _ in self.chains.drain(..) {
            queue.go_to_previous_position();
        }
        self.room = 0;
        self.pieces = 0;
    }
}

/// A receive chain's buffers, if this path takes it.
fn parse<'a>(mem: &'a Mem, chain: Chain<'a>) -> Option<Posted<'a>> {
    let head = chain.head_index();
    let mut bufs = Vec::new();
    let mut bytes = 0usize;
    for d in chain {
        if !d.is_write_only() || bufs.len() >= MAX_IOVS {
            return None;
        }
        if d.len() == 0 {
            continue;
        }
        bufs.push(mem.get_slice(d.addr(), d.len() as usize).ok()?);
        bytes = bytes.saturating_add(d.len() as usize);
    }
    (bytes >= HDR_LEN).then_some(Posted { head, bufs, bytes })
}

/// Writes `data` at byte `off` of the buffers taken as one.
fn write_at(bufs: &[VolatileSlice<'_>], mut off: usize, mut data: &[u8]) {
    for s in bufs {
        if data.is_empty() {
            return;
        }
        if off >= s.len() {
            off -= s.len();
            continue;
        }
        let k = (s.len() - off).min(data.len());
        // In bounds: `off + k` is at most the slice's length.
        let _ = s.write_slice(&data[..k], off);
        data = &data[k..];
        off = 0;
    }
}

fn read_retrying(backend: &mut dyn NetBackend, bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
    loop {
        match backend.read_frame_into(bufs) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}
