//! A monitor's memory trimmed once it is set up. A monitor is the whole CLI binary started
//! again (ADR 0012): booting the VM touches many of its pages (the job's parsing, the boot
//! files' verification, vm.toml, the spawns, the agent's handshake, the container's creation)
//! that it never runs again while it waits for its container, which can take days. Only the
//! monitor maps them (its starter has exited), so it is charged all of them. Once its
//! container runs (crx-runc's monitor: after `start`; crx's: before its wait), [`release`]
//! hands them back: its own binary's pages are paged out
//! (`MADV_PAGEOUT`: clean file pages, dropped; those it runs again fault back in from the page
//! cache or the file, one at a time: `MADV_RANDOM`), and the allocator returns its free heap
//! (`malloc_trim`).
//!
//! `CRX_MONITOR_TRIM=0` keeps everything (to measure what it saves).
#![allow(unsafe_code)] // madvise(2) and malloc_trim(3): neither std nor nix wraps them

use std::ops::Range;

/// Trims this process as the module says (unless `CRX_MONITOR_TRIM=0`). Best effort: nothing
/// here can fail the monitor.
pub fn release() {
    if std::env::var_os("CRX_MONITOR_TRIM").is_some_and(|v| v == "0") {
        return;
    }
    let (Ok(maps), Ok(exe)) = (
        std::fs::read_to_string("/proc/self/maps"),
        std::fs::read_link("/proc/self/exe"),
    ) else {
        return;
    };
    for r in mappings_of(&maps, &exe.to_string_lossy()) {
        // SAFETY: `r` is a whole mapping of this process's own executable, as /proc/self/maps
        // lists it; MADV_RANDOM (no read-around: a page used again comes back alone, not with
        // its 128 KiB window) and MADV_PAGEOUT (its resident pages reclaimed; they fault back
        // in when used) change neither the mapping nor its contents.
        unsafe {
            let (addr, len) = (r.start as *mut _, r.end - r.start);
            nix::libc::madvise(addr, len, nix::libc::MADV_RANDOM);
            nix::libc::madvise(addr, len, nix::libc::MADV_PAGEOUT);
        }
    }
    // SAFETY: malloc_trim only returns the allocator's free memory to the kernel; it is
    // thread-safe (it takes the arenas' locks).
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

/// The address ranges of `maps` (the text of /proc/PID/maps) that map the file `path`.
fn mappings_of(maps: &str, path: &str) -> Vec<Range<usize>> {
    maps.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let range = f.next()?;
            // perms, offset, dev, inode, then the path (which may hold spaces).
            let name = l.splitn(6, char::is_whitespace).nth(5)?.trim_start();
            if name != path {
                return None;
            }
            let (a, b) = range.split_once('-')?;
            let (a, b) = (
                usize::from_str_radix(a, 16).ok()?,
                usize::from_str_radix(b, 16).ok()?,
            );
            (a < b).then_some(a..b)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_executables_mappings_are_found() {
        let maps = "\
5581a000-5581b000 r--p 00000000 08:01 123 /usr/bin/crx runc
5581b000-5581f000 r-xp 00001000 08:01 123 /usr/bin/crx runc
55820000-55821000 rw-p 00000000 00:00 0 [heap]
7f00-7f10 r-xp 00000000 08:01 9 /usr/lib/libc.so.6
zz-10 r-xp 00000000 08:01 123 /usr/bin/crx runc
20-10 r-xp 00000000 08:01 123 /usr/bin/crx runc
";
        assert_eq!(
            mappings_of(maps, "/usr/bin/crx runc"),
            vec![0x5581a000..0x5581b000, 0x5581b000..0x5581f000]
        );
        assert!(mappings_of(maps, "/usr/bin/crx").is_empty());
    }

    /// On this process: its pages are paged out and it runs on (the ones it uses fault back).
    #[test]
    fn release_keeps_the_process_running() {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        assert!(!mappings_of(&maps, &exe.to_string_lossy()).is_empty());
        release();
        assert!(mappings_of(&maps, "/nope").is_empty());
    }
}
