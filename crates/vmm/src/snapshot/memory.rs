//! Guest RAM to and from the snapshot's memory file: written sparse (all-zero pages stay holes),
//! restored by mapping the file copy-on-write over each RAM region (`MAP_PRIVATE`): nothing is
//! read until the guest touches a page, and every VM restored from one file shares the page
//! cache pages none of them has written.

use std::fs::File;
use std::os::unix::fs::FileExt;

use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::layout::{ram_ranges, PAGE_SIZE};
use crate::memory::{create_guest_memory, map_file_private, MemoryError};

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

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn sparse_write_then_private_map_round_trips() {
        let bytes = 4 << 20;
        let mem = create_guest_memory(bytes).unwrap();
        mem.write_slice(b"first", GuestAddress(0x1000)).unwrap();
        mem.write_slice(b"last", GuestAddress(bytes - 4)).unwrap();
        let f = tempfile::tempfile().unwrap();
        f.set_len(file_len(bytes)).unwrap();
        let n = write(&mem, &f).unwrap();
        assert_eq!(n, 2 * PAGE_SIZE, "only the two non-zero pages are written");
        let back = map(&f, bytes).unwrap();
        let mut b = [0u8; 5];
        back.read_slice(&mut b, GuestAddress(0x1000)).unwrap();
        assert_eq!(&b, b"first");
        back.read_slice(&mut b[..4], GuestAddress(bytes - 4))
            .unwrap();
        assert_eq!(&b[..4], b"last");
        // A write to the restored RAM does not reach the file.
        back.write_slice(b"XX", GuestAddress(0x1000)).unwrap();
        let mut f2 = [0u8; 2];
        f.read_exact_at(&mut f2, 0x1000).unwrap();
        assert_eq!(&f2, b"fi");
    }
}
