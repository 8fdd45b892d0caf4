//! Guest RAM to and from the snapshot's memory file: written sparse (all-zero pages stay holes),
//! restored by mapping the file copy-on-write over each RAM region (`MAP_PRIVATE`): nothing is
//! read until the guest touches a page, and every VM restored from one file shares the page
//! cache pages none of them has written. A VM with a vhost-user device (virtio-fs) needs RAM its
//! backend maps too, which a private mapping cannot be: its RAM is a shared memfd into which the
//! file's data (not its holes) is copied ([`copy_shared`]).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::layout::{ram_ranges, PAGE_SIZE};
use crate::memory::{
    create_guest_memory, create_shared_guest_memory, map_file_private, MemoryError,
};

/// The memory file's length for `memory_bytes` of RAM (the RAM ranges laid end to end).
pub fn file_len(memory_bytes: u64) -> u64 {
    ram_ranges(memory_bytes).iter().map(|&(_, l)| l).sum()
}

/// Writes each non-zero page of `mem` at its offset in `file` (already sized to
/// [`file_len`], so zero pages are holes); returns the bytes written.
pub fn write(mem: &GuestMemoryMmap, file: &File) -> std::io::Result<u64> {
    let mut offset = 0u64;
    let mut written = 0u64;
    for region in mem.iter() {
        let len = region.len() as usize;
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|_| std::io::Error::other("guest RAM region without host address"))?;
        // SAFETY: `host..host+len` is one live guest RAM mapping owned by `mem`; the vCPUs have
        // stopped and the devices run on this thread, so nothing writes it while it is read.
        let bytes = unsafe { std::slice::from_raw_parts(host as *const u8, len) };
        written += write_nonzero(bytes, file, offset)?;
        offset += region.len();
    }
    Ok(written)
}

/// Writes the runs of non-zero pages of `bytes` to `file` at `base + their offset`.
fn write_nonzero(bytes: &[u8], file: &File, base: u64) -> std::io::Result<u64> {
    let page = PAGE_SIZE as usize;
    let mut written = 0u64;
    let mut run: Option<usize> = None;
    let mut flush = |start: usize, end: usize| -> std::io::Result<()> {
        file.write_all_at(&bytes[start..end], base + start as u64)?;
        written += (end - start) as u64;
        Ok(())
    };
    for (i, p) in bytes.chunks(page).enumerate() {
        let zero = p.iter().all(|&b| b == 0);
        match (zero, run) {
            (false, None) => run = Some(i * page),
            (true, Some(s)) => {
                flush(s, i * page)?;
                run = None;
            }
            _ => {}
        }
    }
    if let Some(s) = run {
        flush(s, bytes.len())?;
    }
    Ok(written)
}

/// Guest RAM of `memory_bytes` whose every region is `file` mapped copy-on-write.
pub fn map(file: &File, memory_bytes: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let mem = create_guest_memory(memory_bytes)?;
    let mut offset = 0u64;
    for region in mem.iter() {
        map_file_private(&mem, region.start_addr(), file, offset, region.len())?;
        offset += region.len();
    }
    Ok(mem)
}

/// Guest RAM of `memory_bytes` as a shared memfd holding a copy of `file`: only the file's
/// data extents are read (`SEEK_DATA`/`SEEK_HOLE`; all of it where the filesystem cannot say),
/// so a restore pays for the pages the snapshot holds, not for the RAM's size, and every page
/// is this VM's own (nothing is shared with other clones).
pub fn copy_shared(file: &File, memory_bytes: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let mem = create_shared_guest_memory(memory_bytes)?;
    let mut offset = 0u64;
    for region in mem.iter() {
        let len = region.len();
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|_| MemoryError::ReadSnapshot(std::io::Error::other("no host address")))?;
        // SAFETY: `host..host+len` is one live guest RAM mapping owned by `mem`, which no vCPU
        // or device uses yet: this is the only reference to it.
        let bytes = unsafe { std::slice::from_raw_parts_mut(host, len as usize) };
        for (start, end) in data_extents(file, offset, offset + len) {
            let range = &mut bytes[(start - offset) as usize..(end - offset) as usize];
            file.read_exact_at(range, start)
                .map_err(MemoryError::ReadSnapshot)?;
        }
        offset += len;
    }
    Ok(mem)
}

/// The data extents of `file` within `[from, to)`, in order; the whole range where `lseek`
/// cannot tell (a filesystem without `SEEK_DATA`).
fn data_extents(file: &File, from: u64, to: u64) -> Vec<(u64, u64)> {
    let seek = |at: u64, whence| {
        // SAFETY: lseek on a descriptor `file` keeps open for the call; the result is checked.
        let r = unsafe { libc::lseek(file.as_raw_fd(), at as libc::off_t, whence) };
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(r as u64)
        }
    };
    let mut out = Vec::new();
    let mut at = from;
    while at < to {
        let start = match seek(at, libc::SEEK_DATA) {
            Ok(s) => s,
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => break, // only a hole is left
            Err(_) => return vec![(from, to)],
        };
        if start >= to {
            break;
        }
        let end = seek(start, libc::SEEK_HOLE).map_or(to, |e| e.min(to));
        if end <= start {
            return vec![(from, to)];
        }
        out.push((start, end));
        at = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    /// Writes a 4 MiB RAM with two non-zero pages, restores it with `restore`, and checks
    /// that the restored RAM reads the same and that its writes never reach the file.
    fn round_trip(
        restore: fn(&File, u64) -> Result<GuestMemoryMmap, MemoryError>,
    ) -> GuestMemoryMmap {
        let bytes = 4 << 20;
        let mem = create_guest_memory(bytes).unwrap();
        mem.write_slice(b"first", GuestAddress(0x1000)).unwrap();
        mem.write_slice(b"last", GuestAddress(bytes - 4)).unwrap();
        let f = tempfile::tempfile().unwrap();
        f.set_len(file_len(bytes)).unwrap();
        let n = write(&mem, &f).unwrap();
        assert_eq!(n, 2 * PAGE_SIZE, "only the two non-zero pages are written");
        let back = restore(&f, bytes).unwrap();
        let mut b = [0u8; 5];
        back.read_slice(&mut b, GuestAddress(0x1000)).unwrap();
        assert_eq!(&b, b"first");
        back.read_slice(&mut b[..4], GuestAddress(bytes - 4))
            .unwrap();
        assert_eq!(&b[..4], b"last");
        back.read_slice(&mut b, GuestAddress(0x20_0000)).unwrap();
        assert_eq!(b, [0; 5], "a hole reads as zeros");
        back.write_slice(b"XX", GuestAddress(0x1000)).unwrap();
        let mut f2 = [0u8; 2];
        f.read_exact_at(&mut f2, 0x1000).unwrap();
        assert_eq!(&f2, b"fi", "a write to the restored RAM reached the file");
        back
    }

    #[test]
    fn sparse_write_then_private_map_round_trips() {
        round_trip(map);
    }

    #[test]
    fn a_shared_copy_holds_the_data_and_is_the_vms_own() {
        let back = round_trip(copy_shared);
        assert!(
            back.iter().all(|r| r.file_offset().is_some()),
            "every region is the memfd a backend can map"
        );
    }

    #[test]
    fn data_extents_cover_what_was_written() {
        let f = tempfile::tempfile().unwrap();
        f.set_len(16 * PAGE_SIZE).unwrap();
        f.write_all_at(&[1u8; 4096], 3 * PAGE_SIZE).unwrap();
        let ext = data_extents(&f, 0, 16 * PAGE_SIZE);
        assert!(!ext.is_empty());
        assert!(ext
            .iter()
            .any(|&(s, e)| s <= 3 * PAGE_SIZE && e >= 4 * PAGE_SIZE));
        assert!(ext.iter().all(|&(s, e)| s < e && e <= 16 * PAGE_SIZE));
    }
}
