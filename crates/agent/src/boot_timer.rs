//! The VMM's boot-timer port: crx-init writes one byte to I/O port 0x440 at milestones so the
//! VMM can time the boot (the codes: `crx_proto::console::mark`; 1: init started, 2: ready —
//! agent listening or program about to run; 3 and 4 mark steps between them, 5 the container
//! helper started, after 2).
//!
//! Two ways, tried in order:
//! 1. `ioperm(0x440, 1, 1)` then `out` from this thread. Needs CAP_SYS_RAWIO (PID 1 is root with
//!    all capabilities) and a kernel with `CONFIG_X86_IOPL_IOPERM=y`. Works before any mount.
//! 2. `pwrite` of the byte at offset 0x440 of `/dev/port` (needs `CONFIG_DEVPORT=y` and a mounted
//!    devtmpfs).
//!
//! Neither is guaranteed in a minimal kernel, so failure is silent: boot timing is optional.
#![allow(unsafe_code)]

/// The boot-timer I/O port.
pub const PORT: u16 = crx_proto::console::BOOT_TIMER_PORT;
pub use crx_proto::console::mark::{HELPER_STARTED, INIT_STARTED, MOUNTED, READY, REAPING};

/// Writes `value` to the boot-timer port if any way works; returns which way did.
pub fn mark(value: u8) -> Option<&'static str> {
    if outb_ioperm(value) {
        return Some("ioperm");
    }
    dev_port(value).then_some("/dev/port")
}

#[cfg(target_arch = "x86_64")]
fn outb_ioperm(value: u8) -> bool {
    // SAFETY: ioperm only changes this thread's I/O permission bitmap; the arguments are plain
    // integers and no memory is passed.
    let granted = unsafe { libc::ioperm(libc::c_ulong::from(PORT), 1, 1) } == 0;
    if !granted {
        return false;
    }
    // SAFETY: ioperm above granted this thread access to PORT, so `out` does not fault; it writes
    // one byte to the VMM's boot-timer device and touches no memory, stack or flags.
    unsafe {
        std::arch::asm!("out dx, al", in("dx") PORT, in("al") value,
            options(nomem, nostack, preserves_flags));
    }
    true
}

#[cfg(not(target_arch = "x86_64"))]
fn outb_ioperm(_value: u8) -> bool {
    false
}

fn dev_port(value: u8) -> bool {
    use std::os::unix::fs::FileExt;
    std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/port")
        .and_then(|f| f.write_at(&[value], u64::from(PORT)))
        .is_ok_and(|n| n == 1)
}
