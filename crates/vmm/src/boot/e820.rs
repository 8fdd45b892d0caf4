//! The guest's physical memory map, shared by the bzImage e820 table and the PVH memmap.

use crate::layout::{ram_ranges, EBDA_START, HIMEM_START};

/// Usable RAM.
pub const E820_RAM: u32 = 1;
/// Reserved (the EBDA holding the MP table).
pub const E820_RESERVED: u32 = 2;

/// One memory map entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemEntry {
    /// Start.
    pub addr: u64,
    /// Length.
    pub size: u64,
    /// [`E820_RAM`] or [`E820_RESERVED`].
    pub kind: u32,
}

/// The memory map for `mem_bytes` of RAM (at least 1 MiB + 1 byte).
pub fn memory_map(mem_bytes: u64) -> Vec<MemEntry> {
    let mut v = vec![
        MemEntry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        MemEntry {
            addr: EBDA_START,
            size: HIMEM_START - EBDA_START,
            kind: E820_RESERVED,
        },
    ];
    for (start, len) in ram_ranges(mem_bytes) {
        let (s, e) = (start.max(HIMEM_START), start + len);
        if e > s {
            v.push(MemEntry {
                addr: s,
                size: e - s,
                kind: E820_RAM,
            });
        }
    }
    v
}

/// End of RAM below the MMIO hole.
pub fn low_ram_end(mem_bytes: u64) -> u64 {
    ram_ranges(mem_bytes)[0].1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_for_small_and_large_guests() {
        let m = memory_map(128 << 20);
        assert_eq!(m.len(), 3);
        assert_eq!(m[2].addr, HIMEM_START);
        assert_eq!(m[2].size, (128 << 20) - HIMEM_START);
        let m = memory_map(5 << 30);
        assert_eq!(m.len(), 4);
        assert_eq!(m[3].addr, 4 << 30);
        assert_eq!(low_ram_end(5 << 30), 3 << 30);
    }
}
