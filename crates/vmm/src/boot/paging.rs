//! Identity page tables for the 64-bit entry: the first 1 GiB mapped with 2 MiB pages.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::BootError;
use crate::layout::{PDPT_ADDR, PD_ADDR, PML4_ADDR};

/// Writes PML4 -> PDPT -> PD at their fixed addresses; returns the CR3 value.
pub fn write_identity_tables(mem: &GuestMemoryMmap) -> Result<u64, BootError> {
    let w = |v: u64, a: u64| {
        mem.write_obj(v, GuestAddress(a))
            .map_err(|_| BootError::WriteStructure("page tables"))
    };
    w(PDPT_ADDR | 0x3, PML4_ADDR)?;
    w(PD_ADDR | 0x3, PDPT_ADDR)?;
    for i in 0..512u64 {
        // Present | writable | page size (2 MiB).
        w((i << 21) | 0x83, PD_ADDR + i * 8)?;
    }
    Ok(PML4_ADDR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_identity_map() {
        let mem = crate::memory::create_guest_memory(2 << 20).unwrap();
        assert_eq!(write_identity_tables(&mem).unwrap(), PML4_ADDR);
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_ADDR)).unwrap();
        assert_eq!(pml4, PDPT_ADDR | 3);
        let pde: u64 = mem.read_obj(GuestAddress(PD_ADDR + 8 * 511)).unwrap();
        assert_eq!(pde, (511 << 21) | 0x83);
    }
}
