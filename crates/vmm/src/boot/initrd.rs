//! Initrds laid one after another at the top of low RAM, each page-aligned (Linux skips the
//! zero padding between concatenated cpio archives), mapped copy-on-write or copied.

use std::fs::File;
use std::path::PathBuf;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::BootError;
use crate::layout::{page_down, page_up};
use crate::memory::map_file_private;

/// Where the initrds went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitrdSpan {
    /// First byte (page-aligned).
    pub addr: u64,
    /// From the first byte to the end of the last initrd.
    pub size: u64,
    /// Bytes mapped copy-on-write rather than copied.
    pub mapped_bytes: u64,
}

/// Places `sizes` below `limit` and above `floor`; returns each start and the span.
pub fn plan(sizes: &[u64], floor: u64, limit: u64) -> Option<(Vec<u64>, u64, u64)> {
    let nonempty: Vec<u64> = sizes.iter().copied().filter(|&s| s > 0).collect();
    let (last, rest) = nonempty.split_last()?;
    let span = rest.iter().map(|&s| page_up(s)).sum::<u64>() + last;
    let start = page_down(limit.checked_sub(span)?);
    if start < page_up(floor) {
        return None;
    }
    let mut at = start;
    let starts = sizes
        .iter()
        .map(|&s| {
            let a = at;
            at += page_up(s);
            a
        })
        .collect();
    Some((starts, start, span))
}

/// Loads `paths` into `mem` below `limit`, above `floor` (the kernel's end).
pub fn load(
    mem: &GuestMemoryMmap,
    paths: &[PathBuf],
    floor: u64,
    limit: u64,
    copy: bool,
) -> Result<Option<InitrdSpan>, BootError> {
    let mut files = Vec::new();
    for p in paths {
        let f = File::open(p).map_err(|source| BootError::OpenFile {
            path: p.clone(),
            source,
        })?;
        let len = f
            .metadata()
            .map_err(|source| BootError::OpenFile {
                path: p.clone(),
                source,
            })?
            .len();
        files.push((p, f, len));
    }
    let sizes: Vec<u64> = files.iter().map(|f| f.2).collect();
    if sizes.iter().all(|&s| s == 0) {
        return Ok(None);
    }
    let total: u64 = sizes.iter().sum();
    let (starts, addr, size) =
        plan(&sizes, floor, limit).ok_or(BootError::InitrdDoesNotFit { bytes: total })?;
    let mut mapped_bytes = 0;
    for ((path, file, len), at) in files.iter_mut().zip(starts) {
        if *len == 0 {
            continue;
        }
        if copy || !crate::memory::is_mappable(file) {
            mem.read_exact_volatile_from(GuestAddress(at), file, *len as usize)
                .map_err(|_| BootError::ReadFile(path.to_path_buf()))?;
        } else {
            map_file_private(mem, GuestAddress(at), file, 0, *len).map_err(BootError::MapFile)?;
            mapped_bytes += *len;
        }
    }
    Ok(Some(InitrdSpan {
        addr,
        size,
        mapped_bytes,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn plan_packs_page_aligned_at_top() {
        let (starts, addr, span) = plan(&[5000, 0, 100], 0x10_0000, 0x100_0000).unwrap();
        assert_eq!(span, 8192 + 100);
        assert_eq!(addr, page_down(0x100_0000 - span));
        assert_eq!(starts, vec![addr, addr + 8192, addr + 8192]);
        assert!(plan(&[0x100_0000], 0x10_0000, 0x100_0000).is_none());
        assert!(plan(&[0, 0], 0, 0x100_0000).is_none());
    }

    #[test]
    fn mapped_and_copied_agree() {
        let mut a = tempfile::NamedTempFile::new().unwrap();
        a.write_all(&[1u8; 5000]).unwrap();
        let mut b = tempfile::NamedTempFile::new().unwrap();
        b.write_all(&[2u8; 300]).unwrap();
        let paths = vec![a.path().to_owned(), b.path().to_owned()];
        let mut images = Vec::new();
        for copy in [true, false] {
            let mem = crate::memory::create_guest_memory(16 << 20).unwrap();
            let s = load(&mem, &paths, 1 << 20, 16 << 20, copy)
                .unwrap()
                .unwrap();
            assert_eq!(s.size, 8192 + 300);
            assert_eq!(s.mapped_bytes, if copy { 0 } else { 5300 });
            let mut img = vec![0u8; s.size as usize];
            mem.read_slice(&mut img, GuestAddress(s.addr)).unwrap();
            images.push(img);
        }
        assert_eq!(images[0], images[1]);
        assert_eq!(images[0][4999], 1);
        assert_eq!(images[0][5000], 0);
        assert_eq!(images[0][8192], 2);
    }
}
