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
//! The sandbox's other host processes (crx-vmm, virtiofsd and its serving child) are in the
//! same case: what they ran to start is not run again while the VM idles, and the pages of
//! their files that they alone map are charged to them. [`release_processes`] pages those
//! out from the monitor (`process_madvise(MADV_PAGEOUT)`, root's right over its own
//! children; pages another process maps too are left alone by the kernel). A page used again
//! faults back in. ADR 0018 measures both.
//!
//! `CRX_MONITOR_TRIM=0` keeps everything (to measure what it saves).
#![allow(unsafe_code)] // madvise(2), process_madvise(2), pidfd_open(2), malloc_trim(3)

use std::ops::Range;

/// Trims this process as the module says (unless `CRX_MONITOR_TRIM=0`). Best effort: nothing
/// here can fail the monitor.
pub fn release() {
    if !enabled() {
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

fn enabled() -> bool {
    std::env::var_os("CRX_MONITOR_TRIM").is_none_or(|v| v != "0")
}

/// How long after a container's start the monitor trims ([`release_later`]): the front-end
/// that asked for the start (`crx-runc start`) is still exiting when it gets its answer, and
/// the pages of the binary it still maps are shared, which `MADV_PAGEOUT` leaves alone.
pub const SETTLE: std::time::Duration = std::time::Duration::from_secs(1);

/// On a thread of its own, after [`SETTLE`] and if `still_running` then says so: [`release`]
/// for this process, then [`release_processes`] for `pids` and their descendants (crx-vmm,
/// the virtiofsd daemons). A container that stopped meanwhile (a short one) is left alone: its
/// monitor is shutting the VM down and would only fault back what it paged out.
pub fn release_later(pids: Vec<u32>, still_running: impl FnOnce() -> bool + Send + 'static) {
    if !enabled() {
        return;
    }
    std::thread::spawn(move || {
        std::thread::sleep(SETTLE);
        if !still_running() {
            return;
        }
        release();
        release_processes(&with_descendants(&pids));
    });
}

/// Pages out the file pages (binaries and libraries; not the guest RAM's memfd) that each of
/// `pids` maps, as [`release`] does for this process. Best effort: a process gone or a call
/// refused (no pidfd_open or process_madvise before Linux 5.10, not root) is skipped.
pub fn release_processes(pids: &[u32]) {
    for &pid in pids {
        let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
            continue;
        };
        let ranges = file_mappings(&maps);
        // SAFETY: pidfd_open(2) takes a pid and flags, reads no memory; the result is checked.
        let fd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid as i32, 0) };
        if fd < 0 {
            continue;
        }
        // SAFETY: a new descriptor that nothing else owns.
        let fd =
            unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
        let iov: Vec<nix::libc::iovec> = ranges
            .iter()
            .map(|r| nix::libc::iovec {
                iov_base: r.start as *mut _,
                iov_len: r.end - r.start,
            })
            .collect();
        for chunk in iov.chunks(512) {
            // SAFETY: process_madvise(2) reads `chunk` (live for the call) and advises ranges
            // of the other process's address space (never ours): MADV_PAGEOUT reclaims their
            // clean file pages, which fault back in when used; nothing else changes.
            unsafe {
                nix::libc::syscall(
                    nix::libc::SYS_process_madvise,
                    std::os::fd::AsRawFd::as_raw_fd(&fd),
                    chunk.as_ptr(),
                    chunk.len(),
                    nix::libc::MADV_PAGEOUT,
                    0,
                );
            }
        }
    }
}

/// `pids` and every process below them (by the parent pid in /proc/PID/stat: not every
/// kernel has /proc/PID/task/TID/children).
fn with_descendants(pids: &[u32]) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            Some((pid, parent_in_stat(&stat)?))
        })
        .collect();
    let mut out = pids.to_vec();
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        out.extend(parents.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    out
}

/// The parent pid of a /proc/PID/stat line (the field after the state, after the name's
/// closing parenthesis, which the name itself may contain).
fn parent_in_stat(stat: &str) -> Option<u32> {
    let (_, rest) = stat.rsplit_once(") ")?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The ranges of `maps` that map a file by path, but for memfds (the guest's RAM: shared
/// memory, which `MADV_PAGEOUT` could only push to swap).
fn file_mappings(maps: &str) -> Vec<Range<usize>> {
    maps.lines()
        .filter_map(|l| {
            let name = l.splitn(6, char::is_whitespace).nth(5)?.trim_start();
            if !name.starts_with('/') || name.starts_with("/memfd:") {
                return None;
            }
            range_of(l)
        })
        .collect()
}

fn range_of(line: &str) -> Option<Range<usize>> {
    let (a, b) = line.split_whitespace().next()?.split_once('-')?;
    let (a, b) = (
        usize::from_str_radix(a, 16).ok()?,
        usize::from_str_radix(b, 16).ok()?,
    );
    (a < b).then_some(a..b)
}

/// The address ranges of `maps` (the text of /proc/PID/maps) that map the file `path`.
fn mappings_of(maps: &str, path: &str) -> Vec<Range<usize>> {
    maps.lines()
        .filter_map(|l| {
            // range, perms, offset, dev, inode, then the path (which may hold spaces).
            let name = l.splitn(6, char::is_whitespace).nth(5)?.trim_start();
            if name != path {
                return None;
            }
            range_of(l)
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

    #[test]
    fn file_mappings_leave_out_anonymous_memory_and_memfds() {
        let maps = "\
5581a000-5581b000 r--p 00000000 08:01 123 /usr/bin/crx-vmm
55820000-55821000 rw-p 00000000 00:00 0 [heap]
7e00-7f00 rw-s 00000000 00:01 77 /memfd:crx-guest-ram (deleted)
7f00-7f10 r-xp 00000000 08:01 9 /usr/lib/libc.so.6
7f20-7f30 rw-p 00000000 00:00 0
";
        assert_eq!(
            file_mappings(maps),
            vec![0x5581a000..0x5581b000, 0x7f00..0x7f10]
        );
    }

    #[test]
    fn a_parent_pid_is_read_past_a_name_holding_parentheses() {
        assert_eq!(parent_in_stat("42 (a) b) S 7 42 42 0"), Some(7));
        assert_eq!(parent_in_stat("42 (x"), None);
    }

    /// A child of ours, paged out from here, runs on; and it is found below us.
    #[test]
    fn a_child_trimmed_from_here_runs_on() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        assert!(with_descendants(&[std::process::id()]).contains(&pid));
        release_processes(&[pid, u32::MAX]);
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        assert!(!stat.contains(") Z"), "{stat}");
        child.kill().unwrap();
        child.wait().unwrap();
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
