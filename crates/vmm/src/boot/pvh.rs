//! The PVH boot protocol: `hvm_start_info`, one module (all initrds as one span), memmap.

use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::e820::memory_map;
use super::BootError;
use crate::layout::{PVH_INFO_ADDR, PVH_MEMMAP_ADDR, PVH_MODLIST_ADDR};

const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;

/// Writes start info, module list and memory map; returns the start info address (for EBX).
pub fn write_start_info(
    mem: &GuestMemoryMmap,
    cmdline_addr: u64,
    initrd: Option<(u64, u64)>,
    mem_bytes: u64,
) -> Result<u64, BootError> {
    let err = |_| BootError::WriteStructure("PVH start info");
    let map = memory_map(mem_bytes);
    for (i, e) in map.iter().enumerate() {
        let entry = hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        };
        let at = PVH_MEMMAP_ADDR + (i * std::mem::size_of::<hvm_memmap_table_entry>()) as u64;
        mem.write_obj(entry, GuestAddress(at)).map_err(err)?;
    }
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: cmdline_addr,
        memmap_paddr: PVH_MEMMAP_ADDR,
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    if let Some((paddr, size)) = initrd {
        let m = hvm_modlist_entry {
            paddr,
            size,
            ..Default::default()
        };
        mem.write_obj(m, GuestAddress(PVH_MODLIST_ADDR))
            .map_err(err)?;
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST_ADDR;
    }
    mem.write_obj(info, GuestAddress(PVH_INFO_ADDR))
        .map_err(err)?;
    Ok(PVH_INFO_ADDR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_info_fields() {
        let mem = crate::memory::create_guest_memory(64 << 20).unwrap();
        let a = write_start_info(&mem, 0x20000, Some((0x300_0000, 0x2000)), 64 << 20).unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(a)).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC);
        assert_eq!(info.nr_modules, 1);
        assert_eq!(info.memmap_entries, 3);
        let m: hvm_modlist_entry = mem.read_obj(GuestAddress(PVH_MODLIST_ADDR)).unwrap();
        assert_eq!((m.paddr, m.size), (0x300_0000, 0x2000));
        const { assert!(PVH_MODLIST_ADDR + 32 <= PVH_MEMMAP_ADDR) };
    }
}
