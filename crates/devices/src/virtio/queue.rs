//! Helpers over `virtio_queue::Queue` that never log without a rate limit and never panic on
//! guest-controlled ring contents.

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

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
