//! virtio-rng: an entropy source fed from the host's getrandom(2).

use std::io::Write;

use virtio_queue::{Queue, Writer};

use super::queue::{add_used, pop_chain, Mem};
use super::{VirtioDevice, TYPE_RNG, VIRTIO_F_VERSION_1};
use crate::guest_warn;

/// Queue size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most bytes handed out per request, however large the guest's buffer.
pub const MAX_BYTES_PER_REQUEST: usize = 64 * 1024;

/// The virtio entropy device.
#[derive(Default)]
pub struct Rng {
    buf: Vec<u8>,
}

impl Rng {
    /// A new device.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fills every available buffer; returns whether any completed.
    pub fn process_requests(&mut self, mem: &Mem, queue: &mut Queue) -> bool {
        let mut used = false;
        while let Some(chain) = pop_chain(queue, mem) {
            let head = chain.head_index();
            let len = match Writer::new(mem, chain) {
                Ok(mut w) => self.fill(&mut w),
                Err(e) => {
                    guest_warn!("virtio-rng: malformed descriptor chain: {e}");
                    0
                }
            };
            used |= add_used(queue, mem, head, len);
        }
        used
    }

    fn fill(&mut self, w: &mut Writer<'_>) -> u32 {
        let n = w.available_bytes().min(MAX_BYTES_PER_REQUEST);
        self.buf.resize(n, 0);
        if let Err(e) = getrandom(&mut self.buf) {
            guest_warn!("virtio-rng: getrandom failed: {e}");
            return 0;
        }
        match w.write_all(&self.buf) {
            Ok(()) => n as u32,
            Err(_) => w.bytes_written() as u32,
        }
    }
}

/// Fills `buf` from the kernel's CSPRNG (getrandom(2), blocking only before the pool is
/// initialised at boot).
fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: `rest` is a valid, writable buffer of `rest.len()` bytes that outlives the
        // call; getrandom writes at most that many bytes into it.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    Ok(())
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        TYPE_RNG
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }
    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn process_queue(&mut self, mem: &Mem, queues: &mut [Queue], index: usize) -> bool {
        match queues.get_mut(index) {
            Some(q) if index == 0 => self.process_requests(mem, q),
            _ => false,
        }
    }
    fn reset(&mut self) {}
    fn save_state(
        &self,
        _mem: &super::Mem,
        _queues: &[virtio_queue::Queue],
    ) -> Result<super::VirtioDeviceState, crate::state::DeviceStateError> {
        // Requests complete within one event-loop turn: nothing is in flight between them.
        Ok(super::VirtioDeviceState::Stateless)
    }
}
