//! Guest RAM: anonymous mappings, with boot files optionally mapped copy-on-write over them.

use std::fs::File;
use std::os::unix::io::AsRawFd;

use std::os::fd::FromRawFd;
use std::sync::Arc;

use vm_memory::{
    Address, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};

use crate::layout::{ram_ranges, PAGE_SIZE};

/// Guest memory errors.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// Allocating guest RAM failed.
    #[error("cannot allocate {mib} MiB of guest RAM")]
    Allocate {
        /// Requested size.
        mib: u64,
        /// Cause.
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
    /// Creating or sizing the memfd behind shared guest RAM failed.
    #[error("cannot create a {mib} MiB memfd for shared guest RAM")]
    Memfd {
        /// Requested size.
        mib: u64,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Reading a snapshot's memory file into shared guest RAM failed.
    #[error("cannot read the snapshot's memory file into shared guest RAM")]
    ReadSnapshot(#[source] std::io::Error),
    /// A file mapping would not sit inside one RAM region, or is not page-aligned.
    #[error("cannot map {len:#x} bytes of a boot file at guest {addr:#x}: outside guest RAM or unaligned")]
    BadFileRange {
        /// Guest address.
        addr: u64,
        /// Length.
        len: u64,
    },
    /// mmap(MAP_FIXED|MAP_PRIVATE) of a boot file failed.
    #[error("cannot map a boot file over guest RAM at {addr:#x}")]
    MapFile {
        /// Guest address.
        addr: u64,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Allocates `mem_bytes` of guest RAM laid out per [`crate::layout`].
pub fn create_guest_memory(mem_bytes: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let ranges: Vec<_> = ram_ranges(mem_bytes)
        .into_iter()
        .map(|(s, l)| (GuestAddress(s), l as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(|source| MemoryError::Allocate {
        mib: mem_bytes >> 20,
        source,
    })
}

/// Allocates `mem_bytes` of guest RAM as one memfd mapped `MAP_SHARED` (one mapping per RAM
/// range, at consecutive file offsets), so that a vhost-user backend given the memfd sees the
/// same pages as the guest and the VMM. Never combine with [`map_file_private`]: a private
/// file mapping would hide the memfd pages from the VMM and the guest but not from a backend.
pub fn create_shared_guest_memory(mem_bytes: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let mib = mem_bytes >> 20;
    // SAFETY: the name is a NUL-terminated literal; the result is checked.
    let fd = unsafe { libc::memfd_create(c"crx-guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(MemoryError::Memfd {
            mib,
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: `fd` was just created and nothing else owns it.
    let file = Arc::new(unsafe { File::from_raw_fd(fd) });
    let ranges = ram_ranges(mem_bytes);
    let total: u64 = ranges.iter().map(|&(_, l)| l).sum();
    file.set_len(total)
        .map_err(|source| MemoryError::Memfd { mib, source })?;
    let mut offset = 0;
    let mut regions = Vec::new();
    for (start, len) in ranges {
        regions.push((
            GuestAddress(start),
            len as usize,
            Some(FileOffset::from_arc(file.clone(), offset)),
        ));
        offset += len;
    }
    GuestMemoryMmap::from_ranges_with_files(regions)
        .map_err(|source| MemoryError::Allocate { mib, source })
}

/// Filesystems whose page cache can be invalidated or replaced by another client at any time
/// (9p, NFS, FUSE, CIFS/SMB, Ceph, AFS): a private mapping of a file there would not keep the
/// guest's view stable, so boot files on them are copied instead.
const REMOTE_FS_MAGICS: &[i64] = &[
    0x0102_1997, // V9FS_MAGIC
    0x6969,      // NFS_SUPER_MAGIC
    0x6573_5546, // FUSE_SUPER_MAGIC
    0xff53_4d42, // CIFS_MAGIC_NUMBER
    0xfe53_4d42, // SMB2_MAGIC_NUMBER
    0x00c3_6400, // CEPH_SUPER_MAGIC
    0x5346_414f, // AFS_FS_MAGIC
];

/// Whether `file` lives on a local filesystem whose page cache only this host changes, which
/// is what makes mapping it copy-on-write into guest RAM safe (see README).
pub fn is_mappable(file: &File) -> bool {
    // SAFETY: a zeroed statfs is a valid out-parameter; fstatfs only writes into it and the
    // fd is open for the call's duration. The result is checked.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let ret = unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) };
    ret == 0 && !REMOTE_FS_MAGICS.contains(&(st.f_type as i64))
}

/// Replaces guest pages `[addr, addr + len)` with a private (copy-on-write) mapping of `file`
/// at `file_offset`, so VMs booting the same file share its page-cache pages until the guest
/// writes to one. `addr`, `file_offset` must be page-aligned; `len` is rounded up to pages
/// (bytes past the end of the file read as zero within the last page).
pub fn map_file_private(
    mem: &GuestMemoryMmap,
    addr: GuestAddress,
    file: &File,
    file_offset: u64,
    len: u64,
) -> Result<(), MemoryError> {
    let bad = || MemoryError::BadFileRange {
        addr: addr.raw_value(),
        len,
    };
    if !addr.raw_value().is_multiple_of(PAGE_SIZE)
        || !file_offset.is_multiple_of(PAGE_SIZE)
        || len == 0
    {
        return Err(bad());
    }
    let len = crate::layout::page_up(len);
    let region = mem.find_region(addr).ok_or_else(bad)?;
    let end = addr.checked_add(len - 1).ok_or_else(bad)?;
    if end > region.last_addr() {
        return Err(bad());
    }
    let host = mem.get_host_address(addr).map_err(|_| bad())?;
    // SAFETY: `host..host+len` lies inside one guest RAM mapping owned by `mem` (checked
    // above), which no Rust reference covers; MAP_FIXED replaces those pages in place with a
    // private file mapping of the same protection, so the region stays fully mapped and its
    // eventual munmap by vm-memory covers the new pages too. The result is checked.
    let ret = unsafe {
        libc::mmap(
            host.cast(),
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_FIXED | libc::MAP_NORESERVE,
            file.as_raw_fd(),
            file_offset as libc::off_t,
        )
    };
    if ret == libc::MAP_FAILED {
        return Err(MemoryError::MapFile {
            addr: addr.raw_value(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use vm_memory::Bytes;

    #[test]
    fn file_mapping_is_visible_and_private() {
        let mem = create_guest_memory(4 << 20).unwrap();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let data: Vec<u8> = (0..6000u32).map(|i| (i % 251) as u8).collect();
        f.write_all(&data).unwrap();
        let file = File::open(f.path()).unwrap();
        mem.write_slice(&[0xaa; 16], GuestAddress(0x20_0000 + 8190))
            .unwrap();
        map_file_private(&mem, GuestAddress(0x20_0000), &file, 0, data.len() as u64).unwrap();
        let mut back = vec![0u8; 8192];
        mem.read_slice(&mut back, GuestAddress(0x20_0000)).unwrap();
        assert_eq!(&back[..6000], &data[..]);
        assert!(
            back[6000..].iter().all(|&b| b == 0),
            "tail of last page is zero"
        );
        // A guest write does not reach the file.
        mem.write_slice(&[1, 2, 3], GuestAddress(0x20_0000))
            .unwrap();
        assert_eq!(&std::fs::read(f.path()).unwrap()[..3], &data[..3]);
        // Neighbouring RAM is untouched.
        let mut b = [0u8; 2];
        mem.read_slice(&mut b, GuestAddress(0x20_0000 + 8192))
            .unwrap();
        assert_eq!(b, [0xaa, 0xaa]);
    }

    #[test]
    fn shared_memory_is_one_memfd_seen_through_every_region() {
        use std::os::unix::fs::FileExt;
        // 3.5 GiB + 1 MiB spans the MMIO hole: two regions (mapped lazily, nothing touched).
        let bytes = (3584 + 1) << 20;
        let mem = create_shared_guest_memory(bytes).unwrap();
        assert_eq!(mem.num_regions(), ram_ranges(bytes).len());
        assert!(mem.num_regions() >= 2);
        let mut offset = 0;
        for r in mem.iter() {
            let fo = r.file_offset().expect("file-backed");
            assert_eq!(fo.start(), offset);
            offset += r.len();
            // A write through guest memory shows in the file (MAP_SHARED), as a backend sees it.
            mem.write_slice(b"crx", r.start_addr()).unwrap();
            let mut back = [0u8; 3];
            fo.file().read_exact_at(&mut back, fo.start()).unwrap();
            assert_eq!(&back, b"crx");
        }
    }

    #[test]
    fn local_files_are_mappable() {
        let f = tempfile::tempfile().unwrap();
        assert!(is_mappable(&f));
    }

    #[test]
    fn unaligned_or_outside_is_refused() {
        let mem = create_guest_memory(1 << 20).unwrap();
        let f = tempfile::tempfile().unwrap();
        assert!(map_file_private(&mem, GuestAddress(0x1001), &f, 0, 10).is_err());
        assert!(map_file_private(&mem, GuestAddress(0xff000), &f, 0, 0x2000).is_err());
        assert!(map_file_private(&mem, GuestAddress(0x1000), &f, 1, 10).is_err());
    }
}
