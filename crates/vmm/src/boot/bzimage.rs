//! bzImage and the 64-bit Linux boot protocol (boot_params, e820), also used for an ELF
//! vmlinux without a PVH note.

use std::fs::File;

use linux_loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::KernelLoader;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::e820::memory_map;
use super::BootError;
use crate::layout::{BOOT_PARAMS_ADDR, HIMEM_START};

const XLF_KERNEL_64: u16 = 1;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;
/// The 64-bit entry is 0x200 past the protected-mode kernel's start.
const STARTUP_64_OFFSET: u64 = 0x200;
/// Default initrd_addr_max for protocol < 2.03.
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;

/// A loaded bzImage.
#[derive(Debug, Clone, Copy)]
pub struct LoadedBzImage {
    /// 64-bit entry point.
    pub entry: u64,
    /// End of the loaded kernel.
    pub end: u64,
    /// Highest address the initrd may end at (exclusive).
    pub initrd_limit: u64,
    /// The setup header to pass on in boot_params.
    pub header: setup_header,
}

/// Copies the protected-mode kernel to 1 MiB (its setup sectors are not page-aligned in the
/// file, so a bzImage is never mapped).
pub fn load(mem: &GuestMemoryMmap, file: &mut File) -> Result<LoadedBzImage, BootError> {
    let r = BzImage::load(mem, None, file, Some(GuestAddress(HIMEM_START)))
        .map_err(BootError::LoadKernel)?;
    let header = r
        .setup_header
        .ok_or(BootError::BadKernel("bzImage without setup header"))?;
    let xloadflags = header.xloadflags;
    if xloadflags & XLF_KERNEL_64 == 0 {
        return Err(BootError::BadKernel(
            "bzImage has no 64-bit entry point (XLF_KERNEL_64): build a 64-bit kernel",
        ));
    }
    let version = header.version;
    let initrd_addr_max = header.initrd_addr_max;
    let initrd_limit = if version >= 0x0203 && initrd_addr_max != 0 {
        u64::from(initrd_addr_max) + 1
    } else {
        DEFAULT_INITRD_ADDR_MAX + 1
    };
    Ok(LoadedBzImage {
        entry: r.kernel_load.0 + STARTUP_64_OFFSET,
        end: r.kernel_end,
        initrd_limit,
        header,
    })
}

/// Inputs to the zero page.
#[derive(Debug, Clone, Copy)]
pub struct ZeroPage {
    /// The bzImage's header, or `None` for an ELF vmlinux (a minimal header is made).
    pub header: Option<setup_header>,
    /// Command line address and length (without NUL).
    pub cmdline: (u64, usize),
    /// Initrd address and size, if any.
    pub initrd: Option<(u64, u64)>,
    /// Guest RAM size.
    pub mem_bytes: u64,
}

/// Builds `boot_params` (public for tests).
pub fn build_boot_params(z: &ZeroPage) -> Result<boot_params, BootError> {
    let mut p = boot_params::default();
    match z.header {
        Some(h) => p.hdr = h,
        None => {
            p.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
            p.hdr.header = KERNEL_HDR_MAGIC;
            p.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
        }
    }
    p.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    p.hdr.cmd_line_ptr = z.cmdline.0 as u32;
    p.hdr.cmdline_size = z.cmdline.1 as u32;
    if let Some((addr, size)) = z.initrd {
        p.hdr.ramdisk_image = addr as u32;
        p.hdr.ramdisk_size = size as u32;
        p.ext_ramdisk_image = (addr >> 32) as u32;
        p.ext_ramdisk_size = (size >> 32) as u32;
    }
    let map = memory_map(z.mem_bytes);
    if map.len() > p.e820_table.len() {
        return Err(BootError::WriteStructure("e820 table (too many entries)"));
    }
    for (slot, e) in p.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    p.e820_entries = map.len() as u8;
    Ok(p)
}

/// Writes the zero page at [`BOOT_PARAMS_ADDR`].
pub fn write_boot_params(mem: &GuestMemoryMmap, z: &ZeroPage) -> Result<(), BootError> {
    let p = build_boot_params(z)?;
    mem.write_obj(p, GuestAddress(BOOT_PARAMS_ADDR))
        .map_err(|_| BootError::WriteStructure("boot_params"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_page_for_elf() {
        let p = build_boot_params(&ZeroPage {
            header: None,
            cmdline: (0x20000, 10),
            initrd: Some((0x700_0000, 0x1234)),
            mem_bytes: 128 << 20,
        })
        .unwrap();
        let (magic, flag, cmd, img, size, n) = (
            p.hdr.header,
            p.hdr.boot_flag,
            p.hdr.cmd_line_ptr,
            p.hdr.ramdisk_image,
            p.hdr.ramdisk_size,
            p.e820_entries,
        );
        assert_eq!((magic, flag), (KERNEL_HDR_MAGIC, KERNEL_BOOT_FLAG_MAGIC));
        assert_eq!((cmd, img, size), (0x20000, 0x700_0000, 0x1234));
        assert_eq!(n, 3);
        let last = p.e820_table[2];
        let (a, s, t) = (last.addr, last.size, last.r#type);
        assert_eq!((a, s, t), (HIMEM_START, (128 << 20) - HIMEM_START, 1));
    }
}
