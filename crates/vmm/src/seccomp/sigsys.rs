//! The SIGSYS handler: names the forbidden system call on stderr (the VMM log), then lets the
//! process die of SIGSYS.
//!
//! A filter's mismatch action is `trap`: the kernel does not run the call and sends SIGSYS to
//! the thread, with the call's number in the siginfo. The handler writes one line with
//! async-signal-safe calls only (write(2) on a stack buffer; no allocation, no locks), then
//! makes the very same call again, with the same arguments (from the saved registers). The
//! filter traps it again, but SIGSYS is now blocked (we are in its handler, installed without
//! SA_NODEFER), so the kernel resets SIGSYS to its default action and delivers it: the process
//! ends killed by SIGSYS, which its parent sees in the wait status, like Firecracker's
//! `KillProcess` but with the call named first. Re-issuing needs no extra syscall in any
//! allow-list (no rt_sigaction, no tgkill).

use std::cell::Cell;
use std::os::unix::io::IntoRawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use super::ThreadKind;

/// Debug aid (debug builds, `CRX_VMM_SECCOMP_CONTINUE=FILE`): a forbidden call is named (on
/// stderr and appended to FILE, opened before any filter) and fails with ENOSYS instead of
/// killing the process, so that one run lists every call a workload misses, even where the
/// VMM's stderr is not kept. Never honoured in release builds.
static CONTINUE: AtomicBool = AtomicBool::new(false);
/// FILE's descriptor in continue mode, else -1.
static CONTINUE_FD: AtomicI32 = AtomicI32::new(-1);

/// `si_code` of a SIGSYS raised by a seccomp filter (`SYS_SECCOMP`).
const SYS_SECCOMP: i32 = 1;

thread_local! {
    /// The calling thread's kind, for the message (set when it installs its filter).
    static KIND: Cell<Option<ThreadKind>> = const { Cell::new(None) };
}

/// Records the calling thread's kind for the SIGSYS message.
pub(super) fn set_thread_kind(kind: ThreadKind) {
    KIND.with(|k| k.set(Some(kind)));
}

/// Installs [`on_sigsys`] for SIGSYS (process-wide).
pub(super) fn install_handler() -> std::io::Result<()> {
    if let Some(path) =
        std::env::var_os("CRX_VMM_SECCOMP_CONTINUE").filter(|_| cfg!(debug_assertions))
    {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        CONTINUE_FD.store(log.into_raw_fd(), Ordering::SeqCst);
        CONTINUE.store(true, Ordering::SeqCst);
    }
    // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; the handler is an
    // `extern "C"` function with the SA_SIGINFO signature and does only async-signal-safe
    // work; the return value is checked.
    let ret = unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigsys as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut())
    };
    if ret != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The SIGSYS part of `siginfo_t` on x86_64 (`_sigsys` in the kernel's union): after
/// si_signo, si_errno, si_code and padding come `_call_addr`, `_syscall`, `_arch`.
#[repr(C)]
struct SigsysInfo {
    signo: i32,
    errno: i32,
    code: i32,
    _pad: i32,
    call_addr: u64,
    syscall: i32,
    arch: u32,
}

/// A fixed-size line buffer for the handler (no allocation).
struct Line {
    buf: [u8; 160],
    len: usize,
}

impl Line {
    fn push(&mut self, s: &[u8]) {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
    }

    fn push_num(&mut self, mut v: i64) {
        if v < 0 {
            self.push(b"-");
            v = v.checked_neg().unwrap_or(i64::MAX);
        }
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

/// The line the handler writes for a forbidden call `nr` on a thread of `kind`.
fn message(nr: i64, kind: Option<ThreadKind>, fatal: bool) -> Line {
    let mut l = Line {
        buf: [0; 160],
        len: 0,
    };
    l.push(b"crx-vmm: seccomp: forbidden system call ");
    l.push_num(nr);
    l.push(b" (");
    l.push(super::syscall_name(nr).unwrap_or("unknown").as_bytes());
    l.push(b") on the ");
    l.push(kind.map_or("unfiltered", ThreadKind::name).as_bytes());
    l.push(if fatal {
        b" thread: killed by SIGSYS\n".as_slice()
    } else {
        b" thread: failed with ENOSYS (CRX_VMM_SECCOMP_CONTINUE)\n".as_slice()
    });
    l
}

extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for an SA_SIGINFO handler; SigsysInfo is a
    // prefix of its SIGSYS layout on x86_64 (siginfo_t is 128 bytes).
    let si = unsafe { &*info.cast::<SigsysInfo>() };
    if si.code != SYS_SECCOMP {
        // Not from a filter (someone sent SIGSYS): end as its default action would.
        // SAFETY: _exit is async-signal-safe and ends the process.
        unsafe { libc::_exit(128 + libc::SIGSYS) };
    }
    let nr = i64::from(si.syscall);
    let kind = KIND.try_with(Cell::get).ok().flatten();
    let fatal = !CONTINUE.load(Ordering::Relaxed);
    let line = message(nr, kind, fatal);
    // SAFETY: write(2) of a live stack buffer is async-signal-safe; its result is irrelevant
    // (a closed stderr only loses the line).
    unsafe { libc::write(2, line.buf.as_ptr().cast(), line.len) };
    if !fatal {
        // SAFETY: as above, on the descriptor opened for continue mode.
        unsafe {
            libc::write(
                CONTINUE_FD.load(Ordering::Relaxed),
                line.buf.as_ptr().cast(),
                line.len,
            )
        };
        // SAFETY: `ctx` is the ucontext_t the kernel restores when the handler returns; RAX
        // holds the trapped call's return value.
        unsafe {
            (*ctx.cast::<libc::ucontext_t>()).uc_mcontext.gregs[libc::REG_RAX as usize] =
                -i64::from(libc::ENOSYS);
        }
        return;
    }
    // SAFETY: `ctx` is the ucontext_t the kernel saved for this handler; the general registers
    // hold the trapped call's arguments (rdi, rsi, rdx, r10, r8, r9). Re-issuing the call traps
    // again while SIGSYS is blocked, so the kernel delivers SIGSYS with its default action and
    // the process dies here; `_exit` covers a call that would unexpectedly pass.
    unsafe {
        let g = &(*ctx.cast::<libc::ucontext_t>()).uc_mcontext.gregs;
        libc::syscall(
            nr,
            g[libc::REG_RDI as usize],
            g[libc::REG_RSI as usize],
            g[libc::REG_RDX as usize],
            g[libc::REG_R10 as usize],
            g[libc::REG_R8 as usize],
            g[libc::REG_R9 as usize],
        );
        libc::_exit(128 + libc::SIGSYS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(l: &Line) -> &str {
        std::str::from_utf8(&l.buf[..l.len]).unwrap()
    }

    #[test]
    fn message_names_call_and_thread() {
        assert_eq!(
            text(&message(41, Some(ThreadKind::Vcpu), true)),
            "crx-vmm: seccomp: forbidden system call 41 (socket) on the vcpu thread: killed by \
             SIGSYS\n"
        );
        assert!(text(&message(9999, None, true)).contains("9999 (unknown) on the unfiltered"));
        assert!(text(&message(0, Some(ThreadKind::Main), false))
            .contains(" 0 (read) on the main thread: failed with ENOSYS"));
        assert!(text(&message(i64::MIN, None, true)).contains("-9223372036854775807"));
    }

    #[test]
    fn siginfo_layout_matches_the_kernel() {
        assert_eq!(std::mem::size_of::<SigsysInfo>(), 32);
        assert!(std::mem::size_of::<libc::siginfo_t>() >= std::mem::size_of::<SigsysInfo>());
    }
}
