//! The compiled filters, checked in forked children (a filter binds only the thread that
//! installs it, and a forbidden call kills the child, never the test process).

use super::*;

#[test]
fn syscall_names_by_number() {
    assert_eq!(syscall_name(0), Some("read"));
    assert_eq!(syscall_name(41), Some("socket"));
    assert_eq!(syscall_name(231), Some("exit_group"));
    assert_eq!(syscall_name(-1), None);
    assert_eq!(syscall_name(100_000), None);
    assert!(names::X86_64.windows(2).all(|w| w[0].0 < w[1].0));
}

#[test]
fn filters_are_compiled_and_distinct() {
    for k in [ThreadKind::Main, ThreadKind::Vcpu] {
        // Architecture check, syscall load, at least a few rules, the default action.
        assert!(k.program().len() > 10, "{} filter too short", k.name());
    }
    assert_ne!(ThreadKind::Main.program(), ThreadKind::Vcpu.program());
}

/// How a forked child that installed `kind`'s filter and ran `f` ended: `Ok(exit code)` or
/// `Err(signal)`. The child runs only async-signal-safe code (fork in a threaded process).
fn in_child(kind: ThreadKind, f: fn() -> i32) -> Result<i32, i32> {
    // SAFETY: fork(2); the child only installs the filter (prctl, seccomp: no allocation),
    // makes raw calls and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = match seccompiler::apply_filter(kind.program()) {
            Ok(()) => f(),
            Err(_) => 99,
        };
        // SAFETY: ends the child without running the parent's exit handlers.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for our own child; `status` is a live local.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    if libc::WIFSIGNALED(status) {
        Err(libc::WTERMSIG(status))
    } else {
        Ok(libc::WEXITSTATUS(status))
    }
}

/// The errno of the last failed call, as an exit code.
fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn socket(family: i32) -> i32 {
    // SAFETY: socket(2) with constant arguments; the child exits right after.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM, 0) };
    if fd >= 0 {
        0
    } else {
        errno()
    }
}

fn mmap(prot: i32) -> i32 {
    // SAFETY: an anonymous private mapping that nothing uses; the child exits right after.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            prot,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        errno()
    } else {
        0
    }
}

#[test]
fn main_filter_allows_unix_sockets_only() {
    assert_eq!(in_child(ThreadKind::Main, || socket(libc::AF_UNIX)), Ok(0));
    assert_eq!(
        in_child(ThreadKind::Main, || socket(libc::AF_INET)),
        Err(libc::SIGSYS)
    );
}

#[test]
fn no_thread_maps_executable_memory() {
    for k in [ThreadKind::Main, ThreadKind::Vcpu] {
        assert_eq!(
            in_child(k, || mmap(libc::PROT_READ | libc::PROT_WRITE)),
            Ok(0)
        );
        assert_eq!(
            in_child(k, || mmap(libc::PROT_READ | libc::PROT_EXEC)),
            Err(libc::SIGSYS),
            "{}",
            k.name()
        );
    }
}

#[test]
fn vcpu_filter_allows_kvm_run_but_not_other_ioctls_or_sockets() {
    const KVM_RUN: libc::c_ulong = 0xae80;
    const KVM_CREATE_VM: libc::c_ulong = 0xae01;
    // SAFETY: ioctl on an invalid descriptor only fails (EBADF) when the filter lets it pass.
    let kvm_run = || unsafe { libc::ioctl(-1, KVM_RUN) }.min(0).abs() * errno();
    assert_eq!(in_child(ThreadKind::Vcpu, kvm_run), Ok(libc::EBADF));
    // SAFETY: as above.
    let create_vm = || unsafe { libc::ioctl(-1, KVM_CREATE_VM) }.min(0).abs() * errno();
    assert_eq!(in_child(ThreadKind::Vcpu, create_vm), Err(libc::SIGSYS));
    assert_eq!(
        in_child(ThreadKind::Vcpu, || socket(libc::AF_UNIX)),
        Err(libc::SIGSYS)
    );
}
