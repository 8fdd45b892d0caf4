//! A driver-side model of a split virtqueue for tests. Like `virtio_queue::mock`, but with
//! ring indices that wrap and a ring layout that stays correct for large queues (the mock's
//! `MockSplitQueue::create` places the used ring inside the available ring once the queue has
//! more than a few entries), so long transfers work.

use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

pub use virtio_bindings::virtio_ring::{
    VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};

/// 64 MiB of guest memory at 0.
pub fn test_mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap()
}

/// One descriptor as the driver writes it.
#[derive(Clone, Copy, Debug)]
pub struct D {
    pub addr: u64,
    pub len: u32,
    pub write: bool,
}

/// Device-readable buffer.
pub fn r(addr: u64, len: u32) -> D {
    D {
        addr,
        len,
        write: false,
    }
}

/// Device-writable buffer.
pub fn w(addr: u64, len: u32) -> D {
    D {
        addr,
        len,
        write: true,
    }
}

impl D {
    /// Its flags as the `i`th of `n` descriptors of a chain.
    fn flags(&self, i: usize, n: usize) -> u16 {
        let mut flags = if self.write {
            VRING_DESC_F_WRITE as u16
        } else {
            0
        };
        if i + 1 < n {
            flags |= VRING_DESC_F_NEXT as u16;
        }
        flags
    }
}

/// Writes one raw split-ring descriptor at guest address `at`, which must be in `mem`.
pub fn write_raw_desc(mem: &GuestMemoryMmap, at: u64, addr: u64, len: u32, flags: u16, next: u16) {
    super::fuzzing::write_desc(mem, at, addr, len, flags, next).unwrap();
}

pub struct Driver<'a> {
    pub mem: &'a GuestMemoryMmap,
    desc: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
    size: u16,
    next_avail: u16,
    next_used: u16,
    next_desc: u16,
}

impl<'a> Driver<'a> {
    pub fn new(mem: &'a GuestMemoryMmap, base: u64, size: u16) -> Self {
        let desc = GuestAddress(base);
        let avail = desc.unchecked_add(16 * u64::from(size));
        let used = GuestAddress((avail.0 + 6 + 2 * u64::from(size) + 3) & !3);
        for (addr, len) in [
            (avail, 6 + 2 * size as usize),
            (used, 6 + 8 * size as usize),
        ] {
            mem.write_slice(&vec![0u8; len], addr).unwrap();
        }
        Self {
            mem,
            desc,
            avail,
            used,
            size,
            next_avail: 0,
            next_used: 0,
            next_desc: 0,
        }
    }

    /// A device-side queue over these rings, ready.
    pub fn queue(&self) -> Queue {
        let mut q = Queue::new(self.size).unwrap();
        q.try_set_desc_table_address(self.desc).unwrap();
        q.try_set_avail_ring_address(self.avail).unwrap();
        q.try_set_used_ring_address(self.used).unwrap();
        q.set_ready(true);
        q
    }

    pub fn desc_table(&self) -> u64 {
        self.desc.raw_value()
    }
    pub fn avail_addr(&self) -> u64 {
        self.avail.raw_value()
    }
    pub fn used_addr(&self) -> u64 {
        self.used.raw_value()
    }

    /// Writes a raw descriptor at `index` (for malformed-chain tests).
    pub fn write_desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = self.desc.raw_value() + 16 * u64::from(index % self.size);
        write_raw_desc(self.mem, at, addr, len, flags, next);
    }

    /// Publishes `head` in the available ring, whatever it points to.
    pub fn publish(&mut self, head: u16) {
        let slot = u64::from(self.next_avail % self.size);
        let avail = self.avail;
        self.mem
            .write_obj(head.to_le(), avail.unchecked_add(4 + 2 * slot))
            .unwrap();
        self.next_avail = self.next_avail.wrapping_add(1);
        self.mem
            .write_obj(self.next_avail.to_le(), avail.unchecked_add(2))
            .unwrap();
    }

    /// Sets the available index directly (for hostile-driver tests).
    pub fn set_avail_idx(&mut self, idx: u16) {
        self.mem
            .write_obj(idx.to_le(), self.avail.unchecked_add(2))
            .unwrap();
    }

    /// The head index the next `add` will use.
    pub fn next_head(&self) -> u16 {
        self.next_desc
    }

    /// Writes a chain into the next free descriptor slots and publishes it.
    pub fn add(&mut self, descs: &[D]) -> u16 {
        let head = self.next_desc;
        for (i, d) in descs.iter().enumerate() {
            let index = (self.next_desc + i as u16) % self.size;
            let next = (index + 1) % self.size;
            self.write_desc(index, d.addr, d.len, d.flags(i, descs.len()), next);
        }
        self.next_desc = (self.next_desc + descs.len() as u16) % self.size;
        self.publish(head);
        head
    }

    /// Writes `descs` as an indirect table at `table` and publishes one ring descriptor that
    /// points at it (`VRING_DESC_F_INDIRECT`, `len` bytes: `16 * descs.len()` when honest).
    pub fn add_indirect(&mut self, table: u64, descs: &[D], len: u32) -> u16 {
        for (i, d) in descs.iter().enumerate() {
            let flags = d.flags(i, descs.len());
            write_raw_desc(
                self.mem,
                table + 16 * i as u64,
                d.addr,
                d.len,
                flags,
                i as u16 + 1,
            );
        }
        let head = self.next_desc;
        self.write_desc(head, table, len, VRING_DESC_F_INDIRECT as u16, 0);
        self.next_desc = (self.next_desc + 1) % self.size;
        self.publish(head);
        head
    }

    /// Leaves `n` descriptor slots unused.
    pub fn skip(&mut self, n: u16) {
        self.next_desc = (self.next_desc + n) % self.size;
    }

    /// Used elements (head, len) the device added since the last call.
    pub fn used(&mut self) -> Vec<(u16, u32)> {
        let used = self.used;
        let idx: u16 = u16::from_le(self.mem.read_obj(used.unchecked_add(2)).unwrap());
        let mut out = Vec::new();
        while self.next_used != idx {
            let slot = u64::from(self.next_used % self.size);
            let at = used.unchecked_add(4 + 8 * slot);
            let id: u32 = u32::from_le(self.mem.read_obj(at).unwrap());
            let len: u32 = u32::from_le(self.mem.read_obj(at.unchecked_add(4)).unwrap());
            out.push((id as u16, len));
            self.next_used = self.next_used.wrapping_add(1);
        }
        out
    }
}
