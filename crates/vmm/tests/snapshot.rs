//! Snapshot and restore of tiny guests on the host's /dev/kvm (the `kvm_` tier): a guest
//! snapshotted mid-run by one crx-vmm process continues in another, and damaged or foreign
//! snapshots are refused with one line. (The format's own tests are unit tests in
//! `src/snapshot/format/tests.rs`.)

mod common;

use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{require_kvm, run_vmm, Output, VMM};
use crx_vmm::boot::elf::build_test_elf;
use sha2::{Digest, Sha256};

const PORT: &str = "0x4f0";

/// 64-bit guest: prints "S", stores a marker at 0x200008 and 0x1234 in R15, counts RCX to 100
/// storing it at 0x200000, writes port 0x4f0 (the snapshot), then prints "R" if RCX is 100,
/// "G" if R15 is 0x1234, "M" if both memory words are intact, counts on to 200 and prints
/// "\n", then resets. Without a snapshot port the write is ignored: "SRGM\n".
///
/// ```text
/// mov $0x3f8,%dx; mov $'S',%al; out %al,(%dx); mov $0xc0ffee,%eax; mov %rax,0x200008
/// mov $0x1234,%r15d; xor %ecx,%ecx
/// 1: inc %rcx; mov %rcx,0x200000; cmp $100,%rcx; jne 1b
/// mov $0x4f0,%dx; out %al,(%dx); mov $0x3f8,%dx
/// mov $'R',%al; cmp $100,%rcx; jne 2f; out %al,(%dx)
/// 2: mov $'G',%al; cmp $0x1234,%r15; jne 3f; out %al,(%dx)
/// 3: mov $'M',%al; cmpq $100,0x200000; jne 4f; cmpq $0xc0ffee,0x200008; jne 4f; out %al,(%dx)
/// 4: inc %rcx; mov %rcx,0x200000; cmp $200,%rcx; jne 4b
/// mov $'\n',%al; out %al,(%dx); mov $0xfe,%al; out %al,$0x64; 5: hlt; jmp 5b
/// ```
const COUNTER: &[u8] = &[
    0x66, 0xba, 0xf8, 0x03, 0xb0, 0x53, 0xee, 0xb8, 0xee, 0xff, 0xc0, 0x00, 0x48, 0x89, 0x04, 0x25,
    0x08, 0x00, 0x20, 0x00, 0x41, 0xbf, 0x34, 0x12, 0x00, 0x00, 0x31, 0xc9, 0x48, 0xff, 0xc1, 0x48,
    0x89, 0x0c, 0x25, 0x00, 0x00, 0x20, 0x00, 0x48, 0x83, 0xf9, 0x64, 0x75, 0xef, 0x66, 0xba, 0xf0,
    0x04, 0xee, 0x66, 0xba, 0xf8, 0x03, 0xb0, 0x52, 0x48, 0x83, 0xf9, 0x64, 0x75, 0x01, 0xee, 0xb0,
    0x47, 0x49, 0x81, 0xff, 0x34, 0x12, 0x00, 0x00, 0x75, 0x01, 0xee, 0xb0, 0x4d, 0x48, 0x83, 0x3c,
    0x25, 0x00, 0x00, 0x20, 0x00, 0x64, 0x75, 0x0f, 0x48, 0x81, 0x3c, 0x25, 0x08, 0x00, 0x20, 0x00,
    0xee, 0xff, 0xc0, 0x00, 0x75, 0x01, 0xee, 0x48, 0xff, 0xc1, 0x48, 0x89, 0x0c, 0x25, 0x00, 0x00,
    0x20, 0x00, 0x48, 0x81, 0xf9, 0xc8, 0x00, 0x00, 0x00, 0x75, 0xec, 0xb0, 0x0a, 0xee, 0xb0, 0xfe,
    0xe6, 0x64, 0xf4, 0xeb, 0xfd,
];

fn kernel(dir: &Path) -> PathBuf {
    let mut code = COUNTER.to_vec();
    code.resize(8192 + 100, 0x90);
    let p = dir.join("vmlinux");
    std::fs::write(&p, build_test_elf(0x100000, &[(0x100000, &code)], None)).unwrap();
    p
}

/// Runs the counter guest with `extra` flags (16 MiB, kernel `k`).
fn counter(k: &Path, extra: &[&str]) -> Output {
    counter_mib(k, "16", extra)
}

/// The same with `mib` MiB of RAM.
fn counter_mib(k: &Path, mib: &str, extra: &[&str]) -> Output {
    let mut args = vec!["--memory-mib", mib, "--kernel", k.to_str().unwrap()];
    args.extend_from_slice(extra);
    run_vmm(&args)
}

/// Takes a snapshot of the counter guest into `dir/snap`.
fn snapshot(dir: &Path, k: &Path) -> PathBuf {
    let snap = dir.join("snap");
    let o = counter(k, &["--snapshot-on-port", PORT, snap.to_str().unwrap()]);
    assert_eq!(o.code, Some(0), "stderr: {}", o.stderr);
    assert_eq!(o.stdout, "S", "the guest stops at the snapshot");
    assert!(o.stderr.contains("snapshot written to"), "{}", o.stderr);
    snap
}

#[test]
fn kvm_snapshot_mid_run_continues_in_a_new_process() {
    require_kvm();
    let d = tempfile::tempdir().unwrap();
    let k = kernel(d.path());
    let cold = counter(&k, &[]);
    assert_eq!(cold.code, Some(0), "{}", cold.stderr);
    assert_eq!(
        cold.stdout, "SRGM\n",
        "without a snapshot port the write is ignored"
    );

    let snap = snapshot(d.path(), &k);
    // What the state file holds: the counter in RCX, RIP past the port write, kvmclock with
    // the host's real time (so a restore moves the guest's clock on by the time on disk).
    let cfg = crx_vmm::VmConfig::new(16, &k);
    let loaded = crx_vmm::snapshot::load(&snap, &crx_vmm::snapshot::expect_for(&cfg)).unwrap();
    let v = &loaded.state.vcpus[0];
    assert_eq!((v.regs.rcx, v.regs.r15), (100, 0x1234));
    assert_eq!(v.regs.rip, 0x100000 + 0x32, "after `out %al,(%dx)` at 0x31");
    assert!(!v.msrs.is_empty() && !v.cpuid.is_empty());
    assert_ne!(
        loaded.state.kvm.clock.flags & kvm_bindings::KVM_CLOCK_REALTIME,
        0,
        "KVM_GET_CLOCK reports the host's real time (Linux >= 5.16)"
    );
    let mem = std::fs::metadata(snap.join("memory")).unwrap();
    assert_eq!(mem.len(), 16 << 20);
    assert!(
        mem.blocks() * 512 < mem.len() / 4,
        "the memory file is sparse: {} blocks",
        mem.blocks()
    );
    // Twice from the same snapshot (the memory file is mapped, never written): register,
    // memory and serial continue where the guest stopped, under the seccomp filters.
    for _ in 0..2 {
        let o = counter(&k, &["--restore", snap.to_str().unwrap()]);
        assert_eq!(o.code, Some(0), "stderr: {}", o.stderr);
        assert_eq!(o.stdout, "RGM\n", "stderr: {}", o.stderr);
    }
    // A new snapshot into the same directory replaces the files, never truncates them: a VM
    // restored from the old memory file keeps it whole.
    let old = std::fs::File::open(snap.join("memory")).unwrap();
    let old_ino = old.metadata().unwrap().ino();
    snapshot(d.path(), &k);
    assert_ne!(
        std::fs::metadata(snap.join("memory")).unwrap().ino(),
        old_ino
    );
    assert_eq!(old.metadata().unwrap().len(), 16 << 20);
    let s = snap.to_str().unwrap();
    let o = counter(&k, &["--restore", s, "--snapshot-on-port", PORT, s]);
    assert_eq!(o.code, Some(1), "{}", o.stderr);
    assert!(o.stderr.contains("the same directory"), "{}", o.stderr);
}

/// A second vCPU, never started by the guest (waiting for INIT/SIPI), is kicked out of KVM_RUN,
/// saves its state and is restored waiting.
#[test]
fn kvm_snapshot_of_two_vcpus() {
    require_kvm();
    let d = tempfile::tempdir().unwrap();
    let k = kernel(d.path());
    let snap = d.path().join("snap2");
    let s = snap.to_str().unwrap();
    let o = counter(&k, &["--vcpus", "2", "--snapshot-on-port", PORT, s]);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    assert_eq!(o.stdout, "S");
    let o = counter(&k, &["--vcpus", "2", "--restore", s]);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    assert_eq!(o.stdout, "RGM\n");
}

/// Rewrites the state file's header bytes `at..` with `bytes` and fixes the checksum.
fn rewrite_header(state: &Path, at: usize, bytes: &[u8]) {
    let mut b = std::fs::read(state).unwrap();
    b[at..at + bytes.len()].copy_from_slice(bytes);
    let body = b.len() - 32;
    let sum = Sha256::digest(&b[..body]);
    b[body..].copy_from_slice(&sum);
    std::fs::write(state, b).unwrap();
}

fn refused(k: &Path, snap: &Path, extra: &[&str], what: &str) {
    refused_mib(k, snap, "16", extra, what)
}

fn refused_mib(k: &Path, snap: &Path, mib: &str, extra: &[&str], what: &str) {
    let mut args = vec!["--restore", snap.to_str().unwrap()];
    args.extend_from_slice(extra);
    let o = counter_mib(k, mib, &args);
    assert_eq!(o.code, Some(1), "{what}: {}", o.stderr);
    assert_eq!(o.stdout, "", "{what}: no guest code ran");
    assert_eq!(
        o.stderr.lines().count(),
        1,
        "{what}: one line: {}",
        o.stderr
    );
    assert!(o.stderr.contains(what), "{what}: {}", o.stderr);
}

#[test]
fn kvm_damaged_or_foreign_snapshots_are_refused_with_one_line() {
    require_kvm();
    let d = tempfile::tempdir().unwrap();
    let k = kernel(d.path());
    let snap = snapshot(d.path(), &k);
    let state = snap.join("state");
    let good = std::fs::read(&state).unwrap();
    let restore_good = || std::fs::write(&state, &good).unwrap();

    std::fs::write(&state, &good[..good.len() - 1]).unwrap();
    refused(&k, &snap, &[], "truncated");
    let mut altered = good.clone();
    altered[100] ^= 0x40;
    std::fs::write(&state, &altered).unwrap();
    refused(&k, &snap, &[], "checksum mismatch");
    restore_good();
    rewrite_header(&state, 8, &2u32.to_le_bytes());
    refused(&k, &snap, &[], "format version 2");
    restore_good();
    rewrite_header(&state, 16, b"OtherVendor!");
    refused(&k, &snap, &[], "another CPU");
    restore_good();
    refused_mib(&k, &snap, "32", &[], "another configuration");
    refused(&k, &snap, &["--vcpus", "2"], "another configuration");
    let mem = std::fs::OpenOptions::new()
        .write(true)
        .open(snap.join("memory"))
        .unwrap();
    mem.set_len(8 << 20).unwrap();
    refused(&k, &snap, &[], "memory file is");
    std::fs::remove_file(&state).unwrap();
    refused(&k, &snap, &[], "No such file");
}

/// The VM shape, not its files: a VM with a disk and a vsock device is restored with another
/// disk image and socket path; another vsock CID is another shape.
#[test]
fn kvm_restore_takes_other_backing_files_of_the_same_shape() {
    require_kvm();
    let d = tempfile::tempdir().unwrap();
    let k = kernel(d.path());
    for n in ["a.img", "b.img"] {
        std::fs::write(d.path().join(n), vec![0u8; 1 << 20]).unwrap();
    }
    let path = |n: &str| d.path().join(n).to_str().unwrap().to_owned();
    let snap = path("snap");
    let (a, b, va, vb) = (path("a.img"), path("b.img"), path("a.sock"), path("b.sock"));
    let o = counter(
        &k,
        &[
            "--disk",
            &a,
            "--vsock-cid",
            "3",
            "--vsock-uds",
            &va,
            "--snapshot-on-port",
            PORT,
            &snap,
        ],
    );
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    assert_eq!(o.stdout, "S");
    let o = counter(
        &k,
        &[
            "--disk",
            &b,
            "--vsock-cid",
            "3",
            "--vsock-uds",
            &vb,
            "--restore",
            &snap,
        ],
    );
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    assert_eq!(o.stdout, "RGM\n");
    let o = counter(
        &k,
        &[
            "--disk",
            &b,
            "--vsock-cid",
            "4",
            "--vsock-uds",
            &vb,
            "--restore",
            &snap,
        ],
    );
    assert_eq!(o.code, Some(1), "{}", o.stderr);
    assert!(o.stderr.contains("another configuration"), "{}", o.stderr);
}

/// 64-bit guest: prints "S", then counts RCX forever, storing it at 0x200000 each time and
/// printing "." every 65536 counts.
///
/// ```text
/// mov $0x3f8,%dx; mov $'S',%al; out %al,(%dx); xor %ecx,%ecx
/// 1: inc %rcx; mov %rcx,0x200000; test $0xffff,%ecx; jnz 1b; mov $'.',%al; out %al,(%dx)
/// jmp 1b
/// ```
const FOREVER: &[u8] = &[
    0x66, 0xba, 0xf8, 0x03, 0xb0, 0x53, 0xee, 0x31, 0xc9, 0x48, 0xff, 0xc1, 0x48, 0x89, 0x0c, 0x25,
    0x00, 0x00, 0x20, 0x00, 0xf7, 0xc1, 0xff, 0xff, 0x00, 0x00, 0x75, 0xed, 0xb0, 0x2e, 0xee, 0xeb,
    0xe8,
];

/// Runs crx-vmm with `args` until the guest has printed `dots` dots, then sends SIGUSR1 and
/// expects the snapshot written and exit 0. Stdout is drained all along.
fn snapshot_on_signal_after(args: &[&str], dots: usize) {
    let mut child = Command::new(VMM)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut seen = 0;
        let mut b = [0u8; 4096];
        while let Ok(n) = out.read(&mut b) {
            if n == 0 {
                break;
            }
            seen += b[..n].iter().filter(|&&c| c == b'.').count();
            let _ = tx.send(seen);
        }
    });
    let mut seen = 0;
    while seen < dots {
        seen = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("the guest prints dots");
    }
    // SAFETY: plain kill(2) of our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGUSR1) }, 0);
    let status = child.wait().unwrap();
    reader.join().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(err.contains("snapshot written to"), "{err}");
}

/// RCX and its copy in guest memory, from the snapshot in `dir`.
fn counter_in(dir: &Path, k: &Path) -> (u64, u64) {
    let cfg = crx_vmm::VmConfig::new(16, k);
    let loaded = crx_vmm::snapshot::load(dir, &crx_vmm::snapshot::expect_for(&cfg)).unwrap();
    let mut word = [0u8; 8];
    loaded.memory.read_exact_at(&mut word, 0x200000).unwrap();
    (loaded.state.vcpus[0].regs.rcx, u64::from_le_bytes(word))
}

/// `--snapshot-on-signal`: the host asks with SIGUSR1 while the guest runs; the snapshot holds
/// the counter in RCX and its copy in memory from one instant; the restored guest counts on
/// (a second snapshot, of the restored VM, holds a larger count).
#[test]
fn kvm_sigusr1_snapshots_a_running_guest() {
    require_kvm();
    let d = tempfile::tempdir().unwrap();
    let mut code = FOREVER.to_vec();
    code.resize(8192 + 100, 0x90);
    let k = d.path().join("vmlinux-forever");
    std::fs::write(&k, build_test_elf(0x100000, &[(0x100000, &code)], None)).unwrap();
    let (s1, s2) = (d.path().join("snap1"), d.path().join("snap2"));
    let base = ["--memory-mib", "16", "--kernel", k.to_str().unwrap()];
    let mut first = base.to_vec();
    first.extend(["--snapshot-on-signal", s1.to_str().unwrap()]);
    snapshot_on_signal_after(&first, 1);
    let (rcx1, mem1) = counter_in(&s1, &k);
    assert!(rcx1 >= 65536, "RCX {rcx1} after a dot");
    assert!(
        mem1 == rcx1 || mem1 + 1 == rcx1,
        "RCX {rcx1}, memory {mem1}"
    );

    let mut second = base.to_vec();
    second.extend(["--restore", s1.to_str().unwrap()]);
    second.extend(["--snapshot-on-signal", s2.to_str().unwrap()]);
    snapshot_on_signal_after(&second, 1);
    let (rcx2, mem2) = counter_in(&s2, &k);
    assert!(
        rcx2 >= rcx1 + 65536 - rcx1 % 65536,
        "RCX {rcx1} then {rcx2}"
    );
    assert!(
        mem2 == rcx2 || mem2 + 1 == rcx2,
        "RCX {rcx2}, memory {mem2}"
    );
}
