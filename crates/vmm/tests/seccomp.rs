//! The seccomp filters are on in the crx-vmm binary (ADR 0010): a tiny guest (host KVM) pokes
//! the test-only probe device (`CRX_VMM_SECCOMP_PROBE=1`, debug builds), which makes the VMM
//! issue a forbidden call (`socket(AF_INET)`) on a vCPU thread or on the event-loop thread.
//! With filters the VMM dies of SIGSYS and its log names the call; with `--no-seccomp` the call
//! goes through and the guest carries on.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use crx_vmm::boot::elf::build_test_elf;
use crx_vmm::seccomp::probe::{ON_EVENT_LOOP, ON_VCPU, PROBE_MMIO_BASE};

const VMM: &str = env!("CARGO_BIN_EXE_crx-vmm");

/// PVH entry (32-bit, paging off): writes `value` to the probe, prints "K" on COM1, then
/// resets through the i8042 (`reset`) or idles with interrupts off.
///
/// ```text
/// movb $value,PROBE_MMIO_BASE; mov $0x3f8,%dx; mov $'K',%al; out %al,(%dx)
/// [mov $0xfe,%al; out %al,$0x64]; cli; 1: hlt; jmp 1b
/// ```
fn probe_guest(dir: &Path, value: u8, reset: bool) -> PathBuf {
    let base = (PROBE_MMIO_BASE as u32).to_le_bytes();
    let mut code = vec![0xc6, 0x05, base[0], base[1], base[2], base[3], value];
    code.extend([0x66, 0xba, 0xf8, 0x03, 0xb0, b'K', 0xee]);
    if reset {
        code.extend([0xb0, 0xfe, 0xe6, 0x64]);
    }
    code.extend([0xfa, 0xf4, 0xeb, 0xfd]);
    code.resize(8192 + 100, 0x90);
    let p = dir.join("vmlinux-probe");
    std::fs::write(
        &p,
        build_test_elf(0x100000, &[(0x100000, &code)], Some(0x100000)),
    )
    .unwrap();
    p
}

fn spawn(kernel: &Path, extra: &[&str]) -> Child {
    assert!(
        Path::new("/dev/kvm").exists(),
        "this kvm_ test needs /dev/kvm"
    );
    Command::new(VMM)
        .args(["--memory-mib", "32", "--serial", "stdout", "--kernel"])
        .arg(kernel)
        .args(extra)
        .env("CRX_VMM_SECCOMP_PROBE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn crx-vmm")
}

/// Kills `pid` after a minute if it is still there: a hung VMM fails the test instead of
/// hanging it (no timing is asserted).
fn watchdog(pid: u32) {
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(60));
        // SAFETY: kill(2) of our own child (at worst an already-reaped pid: ESRCH).
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    });
}

fn finish(mut c: Child) -> (ExitStatus, String, String) {
    let (mut out, mut err) = (String::new(), String::new());
    c.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    c.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    (c.wait().unwrap(), out, err)
}

#[test]
fn kvm_seccomp_kills_the_vmm_for_a_forbidden_call_on_a_vcpu_thread() {
    let d = tempfile::tempdir().unwrap();
    let c = spawn(&probe_guest(d.path(), ON_VCPU, true), &[]);
    watchdog(c.id());
    let (status, out, err) = finish(c);
    assert_eq!(
        status.signal(),
        Some(libc::SIGSYS),
        "{status}; stderr: {err}"
    );
    assert!(
        err.contains("crx-vmm: seccomp: forbidden system call 41 (socket) on the vcpu thread"),
        "stderr: {err}"
    );
    assert!(
        !out.contains('K'),
        "the guest ran on after the call: {out:?}"
    );
}

#[test]
fn kvm_seccomp_kills_the_vmm_for_a_forbidden_call_on_the_event_loop() {
    let d = tempfile::tempdir().unwrap();
    let c = spawn(&probe_guest(d.path(), ON_EVENT_LOOP, false), &[]);
    watchdog(c.id());
    let (status, _, err) = finish(c);
    assert_eq!(
        status.signal(),
        Some(libc::SIGSYS),
        "{status}; stderr: {err}"
    );
    assert!(
        err.contains("crx-vmm: seccomp: forbidden system call 41 (socket) on the main thread"),
        "stderr: {err}"
    );
}

#[test]
fn kvm_no_seccomp_lets_the_call_through_and_says_so() {
    let d = tempfile::tempdir().unwrap();
    let c = spawn(&probe_guest(d.path(), ON_VCPU, true), &["--no-seccomp"]);
    watchdog(c.id());
    let (status, out, err) = finish(c);
    assert_eq!(status.code(), Some(0), "{status}; stderr: {err}");
    assert!(
        err.contains("crx-vmm: seccomp: off (--no-seccomp"),
        "stderr: {err}"
    );
    assert!(
        err.contains("socket(AF_INET) on the vcpu thread returned"),
        "stderr: {err}"
    );
    assert_eq!(out, "K");

    // The event-loop variant idles after the poke: stop it once the call was made.
    let mut c = spawn(
        &probe_guest(d.path(), ON_EVENT_LOOP, false),
        &["--no-seccomp"],
    );
    watchdog(c.id());
    let mut err = BufReader::new(c.stderr.take().unwrap());
    let mut seen = String::new();
    let mut line = String::new();
    while err.read_line(&mut line).unwrap() > 0 {
        seen.push_str(&line);
        if line.contains("socket(AF_INET) on the main thread returned") {
            break;
        }
        line.clear();
    }
    assert!(
        seen.contains("on the main thread returned"),
        "stderr: {seen}"
    );
    // SAFETY: kill(2) of our own, still running child.
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    let status = c.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{status}; stderr: {seen}");
}
