//! ELF vmlinux: program headers, the PVH note, and loading by copy (linux-loader) or by
//! mapping page-aligned PT_LOAD segments copy-on-write.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::BootError;
use crate::layout::{HIMEM_START, PAGE_SIZE};
use crate::memory::map_file_private;

const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
const MAX_NOTE_SEGMENT: u64 = 1 << 20;

/// One PT_LOAD segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Offset in the file.
    pub offset: u64,
    /// Guest physical address.
    pub paddr: u64,
    /// Bytes in the file.
    pub filesz: u64,
    /// Bytes in memory (the rest is zero).
    pub memsz: u64,
}

/// What the boot path needs from a vmlinux.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfInfo {
    /// `e_entry`: the 64-bit entry (physical) of a vmlinux.
    pub entry: u64,
    /// PT_LOAD segments with file bytes.
    pub segments: Vec<Segment>,
    /// The PVH 32-bit entry from the Xen `PHYS32_ENTRY` note, when present.
    pub pvh_entry: Option<u64>,
}

/// How the kernel was placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadedElf {
    /// Entry for the 64-bit Linux boot protocol.
    pub entry: u64,
    /// PVH entry, if the kernel has one.
    pub pvh_entry: Option<u64>,
    /// First byte after the highest segment (memsz).
    pub end: u64,
    /// Bytes mapped copy-on-write rather than copied.
    pub mapped_bytes: u64,
}

fn rd<const N: usize>(b: &[u8], off: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[off..off + N]);
    a
}

/// Parses the ELF header, program headers and PVH note of an x86_64 vmlinux.
pub fn parse(file: &mut File) -> Result<ElfInfo, BootError> {
    let bad = |what: &'static str| BootError::BadKernel(what);
    let mut eh = [0u8; 64];
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.read_exact(&mut eh))
        .map_err(|_| bad("ELF header truncated"))?;
    if &eh[..4] != b"\x7fELF" || eh[4] != 2 || eh[5] != 1 {
        return Err(bad("not a little-endian ELF64 file"));
    }
    if u16::from_le_bytes(rd(&eh, 18)) != 62 {
        return Err(bad("ELF machine is not x86_64"));
    }
    let entry = u64::from_le_bytes(rd(&eh, 24));
    let phoff = u64::from_le_bytes(rd(&eh, 32));
    let phentsize = u16::from_le_bytes(rd(&eh, 54)) as usize;
    let phnum = u16::from_le_bytes(rd(&eh, 56)) as usize;
    if phentsize != 56 || phnum == 0 || phnum > 256 {
        return Err(bad("bad ELF program header table"));
    }
    let mut ph = vec![0u8; phentsize * phnum];
    file.seek(SeekFrom::Start(phoff))
        .and_then(|_| file.read_exact(&mut ph))
        .map_err(|_| bad("ELF program headers truncated"))?;
    let mut segments = Vec::new();
    let mut pvh_entry = None;
    for p in ph.chunks_exact(phentsize) {
        let p_type = u32::from_le_bytes(rd(p, 0));
        let offset = u64::from_le_bytes(rd(p, 8));
        let paddr = u64::from_le_bytes(rd(p, 24));
        let filesz = u64::from_le_bytes(rd(p, 32));
        let memsz = u64::from_le_bytes(rd(p, 40));
        match p_type {
            PT_LOAD if filesz > 0 => {
                if memsz < filesz {
                    return Err(bad("ELF segment memsz < filesz"));
                }
                segments.push(Segment {
                    offset,
                    paddr,
                    filesz,
                    memsz,
                })
            }
            PT_NOTE if pvh_entry.is_none() && filesz <= MAX_NOTE_SEGMENT => {
                let mut notes = vec![0u8; filesz as usize];
                file.seek(SeekFrom::Start(offset))
                    .and_then(|_| file.read_exact(&mut notes))
                    .map_err(|_| bad("ELF note segment truncated"))?;
                pvh_entry = find_pvh_note(&notes);
            }
            _ => {}
        }
    }
    Ok(ElfInfo {
        entry,
        segments,
        pvh_entry,
    })
}

fn find_pvh_note(mut n: &[u8]) -> Option<u64> {
    let al = |x: usize| (x + 3) & !3;
    while n.len() >= 12 {
        let namesz = u32::from_le_bytes(rd(n, 0)) as usize;
        let descsz = u32::from_le_bytes(rd(n, 4)) as usize;
        let ty = u32::from_le_bytes(rd(n, 8));
        let name_end = 12usize.checked_add(al(namesz))?;
        let desc_end = name_end.checked_add(al(descsz))?;
        if desc_end > n.len() {
            return None;
        }
        if ty == XEN_ELFNOTE_PHYS32_ENTRY && namesz == 4 && &n[12..16] == b"Xen\0" {
            let d = &n[name_end..name_end + descsz];
            return match descsz {
                4 => Some(u64::from(u32::from_le_bytes(rd(d, 0)))),
                8 => Some(u64::from_le_bytes(rd(d, 0)) & 0xffff_ffff),
                _ => None,
            };
        }
        n = &n[desc_end..];
    }
    None
}

/// Copies the kernel into guest memory with linux-loader (the `--copy-boot-files` baseline).
pub fn load_copy(mem: &GuestMemoryMmap, file: &mut File) -> Result<LoadedElf, BootError> {
    let r = Elf::load(mem, None, file, Some(GuestAddress(HIMEM_START)))
        .map_err(BootError::LoadKernel)?;
    let pvh_entry = match r.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(a) => Some(a.0),
        _ => None,
    };
    Ok(LoadedElf {
        entry: r.kernel_load.0,
        pvh_entry,
        end: r.kernel_end,
        mapped_bytes: 0,
    })
}

/// Maps each page-aligned PT_LOAD segment's whole pages copy-on-write from the file and copies
/// the rest (unaligned segments, partial last pages).
pub fn load_mapped(mem: &GuestMemoryMmap, file: &mut File) -> Result<LoadedElf, BootError> {
    let info = parse(file)?;
    if info.entry < HIMEM_START {
        return Err(BootError::BadKernel("ELF entry below 1 MiB"));
    }
    let mut end = 0;
    let mut mapped_bytes = 0;
    for s in &info.segments {
        let seg_end = s
            .paddr
            .checked_add(s.memsz)
            .ok_or(BootError::BadKernel("ELF segment overflows"))?;
        end = end.max(seg_end);
        let whole_pages = if s.offset.is_multiple_of(PAGE_SIZE) && s.paddr.is_multiple_of(PAGE_SIZE)
        {
            s.filesz & !(PAGE_SIZE - 1)
        } else {
            0
        };
        if whole_pages > 0 {
            map_file_private(mem, GuestAddress(s.paddr), file, s.offset, whole_pages)
                .map_err(BootError::MapFile)?;
            mapped_bytes += whole_pages;
        }
        let rest = s.filesz - whole_pages;
        if rest > 0 {
            file.seek(SeekFrom::Start(s.offset + whole_pages))
                .map_err(|_| BootError::BadKernel("ELF segment truncated"))?;
            mem.read_exact_volatile_from(GuestAddress(s.paddr + whole_pages), file, rest as usize)
                .map_err(|_| BootError::BadKernel("ELF segment truncated or outside guest RAM"))?;
        }
    }
    Ok(LoadedElf {
        entry: info.entry,
        pvh_entry: info.pvh_entry,
        end,
        mapped_bytes,
    })
}

/// Builds a minimal x86_64 ELF for tests: each `(paddr, code)` becomes a page-aligned PT_LOAD
/// segment; `pvh` adds a Xen PHYS32_ENTRY note with that entry.
pub fn build_test_elf(entry: u64, segments: &[(u64, &[u8])], pvh: Option<u32>) -> Vec<u8> {
    let phnum = segments.len() + usize::from(pvh.is_some());
    let mut f = vec![0u8; 64 + 56 * phnum];
    f[..4].copy_from_slice(b"\x7fELF");
    f[4] = 2;
    f[5] = 1;
    f[6] = 1;
    f[16..18].copy_from_slice(&2u16.to_le_bytes());
    f[18..20].copy_from_slice(&62u16.to_le_bytes());
    f[20..24].copy_from_slice(&1u32.to_le_bytes());
    f[24..32].copy_from_slice(&entry.to_le_bytes());
    f[32..40].copy_from_slice(&64u64.to_le_bytes());
    f[52..54].copy_from_slice(&64u16.to_le_bytes());
    f[54..56].copy_from_slice(&56u16.to_le_bytes());
    f[56..58].copy_from_slice(&(phnum as u16).to_le_bytes());
    let mut body = Vec::new();
    let mut ph = Vec::new();
    let data_start = 0x1000u64;
    for (paddr, code) in segments {
        let off = data_start + body.len() as u64;
        let mut h = vec![0u8; 56];
        h[0..4].copy_from_slice(&PT_LOAD.to_le_bytes());
        h[4..8].copy_from_slice(&7u32.to_le_bytes());
        h[8..16].copy_from_slice(&off.to_le_bytes());
        h[16..24].copy_from_slice(&paddr.to_le_bytes());
        h[24..32].copy_from_slice(&paddr.to_le_bytes());
        h[32..40].copy_from_slice(&(code.len() as u64).to_le_bytes());
        h[40..48].copy_from_slice(&(code.len() as u64).to_le_bytes());
        h[48..56].copy_from_slice(&PAGE_SIZE.to_le_bytes());
        ph.extend(h);
        body.extend_from_slice(code);
        body.resize(crate::layout::page_up(body.len() as u64) as usize, 0);
    }
    if let Some(e) = pvh {
        let off = data_start + body.len() as u64;
        let mut note = Vec::new();
        note.extend_from_slice(&4u32.to_le_bytes());
        note.extend_from_slice(&8u32.to_le_bytes());
        note.extend_from_slice(&XEN_ELFNOTE_PHYS32_ENTRY.to_le_bytes());
        note.extend_from_slice(b"Xen\0");
        note.extend_from_slice(&u64::from(e).to_le_bytes());
        let mut h = vec![0u8; 56];
        h[0..4].copy_from_slice(&PT_NOTE.to_le_bytes());
        h[8..16].copy_from_slice(&off.to_le_bytes());
        h[32..40].copy_from_slice(&(note.len() as u64).to_le_bytes());
        h[40..48].copy_from_slice(&(note.len() as u64).to_le_bytes());
        h[48..56].copy_from_slice(&4u64.to_le_bytes());
        ph.extend(h);
        body.extend(note);
    }
    f[64..].copy_from_slice(&ph);
    f.resize(data_start as usize, 0);
    f.extend(body);
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write_tmp(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    #[test]
    fn parse_finds_segments_and_pvh_note() {
        let code = vec![0x90u8; 5000];
        let e = build_test_elf(
            0x100000,
            &[(0x100000, &code), (0x200000, b"\xf4")],
            Some(0x100010),
        );
        let t = write_tmp(&e);
        let info = parse(&mut File::open(t.path()).unwrap()).unwrap();
        assert_eq!(info.entry, 0x100000);
        assert_eq!(info.segments.len(), 2);
        assert_eq!(info.segments[0].offset, 0x1000);
        assert_eq!(info.pvh_entry, Some(0x100010));
    }

    #[test]
    fn mapped_and_copied_loads_agree() {
        let code: Vec<u8> = (0..9000u32).map(|i| (i * 7) as u8).collect();
        let e = build_test_elf(0x100000, &[(0x100000, &code)], Some(0x100004));
        let t = write_tmp(&e);
        let m1 = crate::memory::create_guest_memory(4 << 20).unwrap();
        let m2 = crate::memory::create_guest_memory(4 << 20).unwrap();
        let a = load_copy(&m1, &mut File::open(t.path()).unwrap()).unwrap();
        let b = load_mapped(&m2, &mut File::open(t.path()).unwrap()).unwrap();
        assert_eq!(a.pvh_entry, b.pvh_entry);
        assert_eq!(a.entry, b.entry);
        assert_eq!(b.mapped_bytes, 8192);
        let mut x = vec![0u8; 12288];
        let mut y = vec![0u8; 12288];
        m1.read_slice(&mut x, GuestAddress(0x100000)).unwrap();
        m2.read_slice(&mut y, GuestAddress(0x100000)).unwrap();
        assert_eq!(x, y);
        assert_eq!(&x[..9000], &code[..]);
    }

    #[test]
    fn garbage_is_refused() {
        let t = write_tmp(b"\x7fELFjunk");
        assert!(parse(&mut File::open(t.path()).unwrap()).is_err());
        assert_eq!(find_pvh_note(&[0xff; 40]), None);
    }
}
