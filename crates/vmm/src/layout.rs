//! The guest physical address map (x86_64).
//!
//! ```text
//! 0x0000_0500  GDT (4 entries)            0x0000_0520  IDT (empty)
//! 0x0000_6000  PVH hvm_start_info         0x0000_6040  PVH module list (1 entry)
//! 0x0000_6100  PVH memory map             0x0000_7000  Linux boot_params (zero page)
//! 0x0000_8ff0  boot stack top             0x0000_9000  PML4, 0xa000 PDPT, 0xb000 PD
//! 0x0002_0000  kernel command line (2 KiB)
//! 0x0009_fc00  MP floating pointer + MP table (EBDA, reserved in e820)
//! 0x0010_0000  bzImage protected-mode kernel / ELF segments at their p_paddr
//! top of low RAM  initrds, page-aligned, one after another
//! 0xc000_0000  MMIO hole up to 4 GiB: virtio-mmio at 0xd000_0000, IOAPIC, LAPIC
//! 0x1_0000_0000  RAM above 3 GiB continues here
//! ```

/// GDT.
pub const GDT_ADDR: u64 = 0x500;
/// IDT (limit 0: any exception before the kernel sets its own IDT triple-faults).
pub const IDT_ADDR: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_INFO_ADDR: u64 = 0x6000;
/// PVH module list.
pub const PVH_MODLIST_ADDR: u64 = 0x6040;
/// PVH memory map.
pub const PVH_MEMMAP_ADDR: u64 = 0x6100;
/// Linux zero page.
pub const BOOT_PARAMS_ADDR: u64 = 0x7000;
/// Initial stack pointer (64-bit boot).
pub const BOOT_STACK_TOP: u64 = 0x8ff0;
/// Page tables: PML4.
pub const PML4_ADDR: u64 = 0x9000;
/// Page tables: PDPT.
pub const PDPT_ADDR: u64 = 0xa000;
/// Page tables: PD (512 x 2 MiB = the first 1 GiB identity-mapped).
pub const PD_ADDR: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_ADDR: u64 = 0x20000;
/// Command line capacity including the NUL (x86 COMMAND_LINE_SIZE).
pub const CMDLINE_MAX: usize = 2048;
/// Start of the EBDA, where the MP table lives.
pub const EBDA_START: u64 = 0x9fc00;
/// Start of "high" memory: kernels load at or above it.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO hole.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO hole.
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
/// First virtio-mmio device slot (4 KiB each).
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
/// Size of one virtio-mmio slot.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// First GSI for virtio-mmio devices (5..=23 are free on the IOAPIC; 4 is COM1).
pub const VIRTIO_GSI_START: u32 = 5;
/// Last usable IOAPIC GSI.
pub const GSI_MAX: u32 = 23;
/// IOAPIC base (KVM in-kernel irqchip default).
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// Local APIC base.
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// Page size.
pub const PAGE_SIZE: u64 = 4096;

/// Rounds `x` up to a page boundary.
pub const fn page_up(x: u64) -> u64 {
    (x + PAGE_SIZE - 1) & !(PAGE_SIZE - 1)
}

/// Rounds `x` down to a page boundary.
pub const fn page_down(x: u64) -> u64 {
    x & !(PAGE_SIZE - 1)
}

/// Guest RAM ranges `(start, len)` for `mem_bytes` of RAM: below the MMIO hole, then above 4 GiB.
pub fn ram_ranges(mem_bytes: u64) -> Vec<(u64, u64)> {
    if mem_bytes <= MMIO_HOLE_START {
        vec![(0, mem_bytes)]
    } else {
        vec![
            (0, MMIO_HOLE_START),
            (MMIO_HOLE_END, mem_bytes - MMIO_HOLE_START),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_is_split_around_the_hole() {
        assert_eq!(ram_ranges(64 << 20), vec![(0, 64 << 20)]);
        let r = ram_ranges(4 << 30);
        assert_eq!(r, vec![(0, 3 << 30), (4 << 30, 1 << 30)]);
        assert_eq!(page_up(1), 4096);
        assert_eq!(page_down(4097), 4096);
    }
}
