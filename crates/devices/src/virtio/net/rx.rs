//! The receive path, host to guest: a pure handler over the RX queue and a backend.
//!
//! One frame at a time is read from the backend into a buffer and spread over the guest's
//! receive buffers: one chain per frame, or (with `VIRTIO_NET_F_MRG_RXBUF`) as many chains as
//! it takes, published together with `num_buffers` in the first. When the guest has not posted
//! enough buffers, the frame waits in the buffer (the only one the device keeps) and nothing
//! more is read: the host's tap queue fills and the host kernel drops, never the VMM's memory.

use std::io::{self, Write};

use virtio_queue::{Queue, QueueOwnedT, QueueT, Writer};

use super::backend::NetBackend;
use super::header::{HDR_LEN, NUM_BUFFERS_OFFSET};
use super::MAX_FRAME;
use crate::guest_warn;
use crate::virtio::queue::{add_used, add_used_batch, pop_chain, Mem};

/// What one pass over the backend and the RX queue did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxPass {
    /// Buffers were returned to the guest (interrupt it).
    pub used: bool,
    /// A frame waits for the guest to post receive buffers.
    pub blocked: bool,
    /// The backend had no more frames.
    pub drained: bool,
    /// Frames delivered.
    pub delivered: u64,
    /// Frames dropped (no buffer could ever hold them, malformed buffers, read errors).
    pub dropped: u64,
}

enum Delivery {
    Delivered,
    /// The frame is gone; `used` says whether buffers were returned (with length 0).
    Dropped {
        used: bool,
    },
    NoBuffers,
}

/// The RX side of a device: the frame buffer and the frame waiting in it.
pub struct Rx {
    buf: Vec<u8>,
    /// Length of the frame in `buf` that waits for guest buffers (0: none).
    pending: usize,
}

impl Default for Rx {
    fn default() -> Self {
        Self::new()
    }
}

impl Rx {
    /// An RX path with its buffer allocated once.
    pub fn new() -> Self {
        Self {
            buf: vec![0; HDR_LEN + MAX_FRAME],
            pending: 0,
        }
    }

    /// Whether a frame waits for guest buffers.
    pub fn has_pending(&self) -> bool {
        self.pending != 0
    }

    /// Forgets the waiting frame (device reset).
    pub fn clear(&mut self) {
        self.pending = 0;
    }

    /// Delivers the waiting frame, then reads and delivers up to `budget` frames in all, until
    /// the backend is empty or the guest is out of buffers.
    pub fn process(
        &mut self,
        mem: &Mem,
        queue: &mut Queue,
        backend: &mut dyn NetBackend,
        mergeable: bool,
        budget: usize,
    ) -> RxPass {
        let mut pass = RxPass::default();
        for _ in 0..budget {
            if self.pending == 0 {
                match read_retrying(backend, &mut self.buf) {
                    Ok(n) if n > HDR_LEN => self.pending = n,
                    Ok(_) => {
                        pass.dropped += 1;
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        pass.drained = true;
                        break;
                    }
                    Err(e) => {
                        // The tap has dropped the frame it could not hand over.
                        log::warn!("virtio-net: reading a frame from the host failed: {e}");
                        pass.dropped += 1;
                        continue;
                    }
                }
            }
            let delivery = if mergeable {
                self.deliver_merged(mem, queue)
            } else {
                self.deliver_one(mem, queue)
            };
            match delivery {
                Delivery::Delivered => {
                    pass.used = true;
                    pass.delivered += 1;
                }
                Delivery::Dropped { used } => {
                    pass.used |= used;
                    pass.dropped += 1;
                }
                Delivery::NoBuffers => {
                    pass.blocked = true;
                    break;
                }
            }
            self.pending = 0;
        }
        pass
    }

    fn set_num_buffers(&mut self, n: u16) {
        self.buf[NUM_BUFFERS_OFFSET..HDR_LEN].copy_from_slice(&n.to_le_bytes());
    }

    /// Without mergeable buffers: the whole frame in the next chain, or dropped.
    fn deliver_one(&mut self, mem: &Mem, queue: &mut Queue) -> Delivery {
        let Some(chain) = pop_chain(queue, mem) else {
            return Delivery::NoBuffers;
        };
        let head = chain.head_index();
        let len = self.pending;
        self.set_num_buffers(1);
        let written = match Writer::new(mem, chain) {
            Ok(mut w) if w.available_bytes() >= len => w.write_all(&self.buf[..len]).is_ok(),
            Ok(w) => {
                guest_warn!(
                    "virtio-net: dropping a {len}-byte frame: receive buffer of {} bytes",
                    w.available_bytes()
                );
                false
            }
            Err(e) => {
                guest_warn!("virtio-net: malformed receive buffer: {e}");
                false
            }
        };
        let used_len = if written { len as u32 } else { 0 };
        let used = add_used(queue, mem, head, used_len);
        if written {
            Delivery::Delivered
        } else {
            Delivery::Dropped { used }
        }
    }

    /// With mergeable buffers: as many chains as the frame needs, published together.
    fn deliver_merged(&mut self, mem: &Mem, queue: &mut Queue) -> Delivery {
        let len = self.pending;
        let mut writers: Vec<(u16, Writer<'_>)> = Vec::new();
        let mut room = 0usize;
        let mut saw_bad = false;
        let mut used = false;
        while room < len {
            let Some(chain) = pop_chain(queue, mem) else {
                return self.out_of_buffers(mem, queue, writers, saw_bad, used);
            };
            let head = chain.head_index();
            let min = if writers.is_empty() { HDR_LEN } else { 1 };
            match Writer::new(mem, chain) {
                Ok(w) if w.available_bytes() >= min => {
                    room = room.saturating_add(w.available_bytes());
                    writers.push((head, w));
                }
                other => {
                    // Returned at once, empty: it is no part of any frame.
                    if let Err(e) = other {
                        guest_warn!("virtio-net: malformed receive buffer: {e}");
                    } else {
                        guest_warn!("virtio-net: receive buffer too small for the header");
                    }
                    saw_bad = true;
                    used |= add_used(queue, mem, head, 0);
                }
            }
        }
        // At most a queue's worth of chains: fits a u16.
        self.set_num_buffers(writers.len() as u16);
        let mut parts = Vec::with_capacity(writers.len());
        let mut off = 0;
        let mut ok = true;
        for (head, mut w) in writers {
            let n = w.available_bytes().min(len - off);
            ok &= w.write_all(&self.buf[off..off + n]).is_ok();
            parts.push((head, n as u32));
            off += n;
        }
        if !ok {
            parts.iter_mut().for_each(|p| p.1 = 0);
        }
        used |= add_used_batch(queue, mem, &parts);
        if ok {
            Delivery::Delivered
        } else {
            Delivery::Dropped { used }
        }
    }

    /// The ring ran dry before the frame fit. Normally the chains go back for later; a frame
    /// that a full ring cannot hold, or a ring with malformed buffers in it, loses the frame.
    fn out_of_buffers(
        &mut self,
        mem: &Mem,
        queue: &mut Queue,
        writers: Vec<(u16, Writer<'_>)>,
        saw_bad: bool,
        mut used: bool,
    ) -> Delivery {
        if saw_bad {
            // Chains after a returned one cannot go back: return them empty too.
            let parts: Vec<(u16, u32)> = writers.iter().map(|(h, _)| (*h, 0)).collect();
            if !parts.is_empty() {
                used |= add_used_batch(queue, mem, &parts);
            }
            guest_warn!("virtio-net: dropping a frame: malformed receive buffers");
            return Delivery::Dropped { used };
        }
        for _ in 0..writers.len() {
            queue.go_to_previous_position();
        }
        if writers.len() >= usize::from(queue.size()) {
            guest_warn!(
                "virtio-net: dropping a {}-byte frame: a full receive ring cannot hold it",
                self.pending
            );
            return Delivery::Dropped { used };
        }
        Delivery::NoBuffers
    }
}

fn read_retrying(backend: &mut dyn NetBackend, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match backend.read_frame(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}
