//! Helpers over `virtio_queue::Queue` that never log without a rate limit and never panic on
//! guest-controlled ring contents.

use std::sync::atomic::Ordering;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

use crate::guest_warn;

/// The guest memory type every device works on.
pub type Mem = GuestMemoryMmap;
/// A descriptor chain borrowed from guest memory.
pub type Chain<'a> = DescriptorChain<&'a Mem>;

/// Pops the next available descriptor chain, or `None` when the ring is empty or broken (a
/// driver that publishes more entries than the queue size is logged, rate-limited).
pub fn pop_chain<'a>(queue: &mut Queue, mem: &'a Mem) -> Option<Chain<'a>> {
    match queue.iter(mem) {
        Ok(mut iter) => iter.next(),
        Err(e) => {
            guest_warn!("virtio: cannot read the available ring: {e}");
            None
        }
    }
}

/// Puts `head` in the used ring with `len` bytes written. Returns whether it was added (a head
/// index beyond the queue size, which only a broken driver produces, is dropped).
pub fn add_used(queue: &mut Queue, mem: &Mem, head: u16, len: u32) -> bool {
    if head >= queue.size() {
        guest_warn!(
            "virtio: descriptor head {head} beyond queue size {}",
            queue.size()
        );
        return false;
    }
    match queue.add_used(mem, head, len) {
        Ok(()) => true,
        Err(e) => {
            guest_warn!("virtio: cannot add to the used ring: {e}");
            false
        }
    }
}

/// Puts several `(head, len)` elements in the used ring and publishes them with one index
/// update, so the driver never sees some of them without the others (a frame spread over
/// mergeable receive buffers). Returns whether they were added: none is when a head lies
/// beyond the queue size or the ring cannot be written.
pub fn add_used_batch(queue: &mut Queue, mem: &Mem, elems: &[(u16, u32)]) -> bool {
    let size = queue.size();
    if elems.is_empty() || size == 0 || elems.len() > usize::from(size) {
        return false;
    }
    if let Some(&(head, _)) = elems.iter().find(|(head, _)| *head >= size) {
        guest_warn!("virtio: descriptor head {head} beyond queue size {size}");
        return false;
    }
    let used = GuestAddress(queue.used_ring());
    let start = queue.next_used();
    for (i, &(head, len)) in elems.iter().enumerate() {
        let slot = u64::from(start.wrapping_add(i as u16) % size);
        let Some(at) = used.checked_add(4 + 8 * slot) else {
            return false;
        };
        let mut elem = [0u8; 8];
        elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        elem[4..].copy_from_slice(&len.to_le_bytes());
        if let Err(e) = mem.write_slice(&elem, at) {
            guest_warn!("virtio: cannot add to the used ring: {e}");
            return false;
        }
    }
    let next = start.wrapping_add(elems.len() as u16);
    let Some(idx_at) = used.checked_add(2) else {
        return false;
    };
    // Release: the elements are visible before the index that publishes them.
    if let Err(e) = mem.store(next.to_le(), idx_at, Ordering::Release) {
        guest_warn!("virtio: cannot publish the used ring: {e}");
        return false;
    }
    queue.set_next_used(next);
    true
}

/// Whether the rings of a ready queue lie in guest memory and are aligned (checked once at
/// activation, so that later ring accesses cannot fail).
pub fn rings_valid(queue: &Queue, mem: &Mem) -> bool {
    let size = u64::from(queue.size());
    let in_mem = |addr: u64, len: u64, access: Permissions| -> bool {
        GuestAddress(addr).checked_add(len).is_some()
            && mem.check_range(GuestAddress(addr), len as usize, access)
    };
    size > 0
        && size.is_power_of_two()
        && queue.desc_table().is_multiple_of(16)
        && queue.avail_ring().is_multiple_of(2)
        && queue.used_ring().is_multiple_of(4)
        && in_mem(queue.desc_table(), 16 * size, Permissions::Read)
        && in_mem(queue.avail_ring(), 6 + 2 * size, Permissions::Read)
        && in_mem(queue.used_ring(), 6 + 8 * size, Permissions::Write)
}
