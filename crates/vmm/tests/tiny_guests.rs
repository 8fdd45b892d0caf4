//! Tiny hand-assembled guests on the host's /dev/kvm (the `kvm_` tier: these fail, never
//! skip, without /dev/kvm). Assembly for each byte string is in the comment above it.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{require_kvm, run_vmm, VMM};
use crx_devices::bus::BusDevice;
use crx_vmm::boot::elf::build_test_elf;
use crx_vmm::config::{DiskConfig, SerialOutput, VsockConfig};
use crx_vmm::{run_vm, VmConfig, VmExit, VmOptions};

/// 64-bit guest: prints "Hi", the first command-line byte (via boot_params.cmd_line_ptr in
/// RSI), "\n"; writes boot-timer codes 1 and 7; resets through the i8042.
///
/// ```text
/// mov $0x3f8,%dx; mov $'H',%al; out %al,(%dx); mov $'i',%al; out %al,(%dx)
/// mov 0x228(%rsi),%eax; mov (%rax),%al; out %al,(%dx); mov $'\n',%al; out %al,(%dx)
/// mov $0x440,%dx; mov $1,%al; out %al,(%dx); mov $7,%al; out %al,(%dx)
/// mov $0xfe,%al; out %al,$0x64; 1: hlt; jmp 1b
/// ```
const HELLO_RESET: &[u8] = &[
    0x66, 0xba, 0xf8, 0x03, 0xb0, 0x48, 0xee, 0xb0, 0x69, 0xee, 0x8b, 0x86, 0x28, 0x02, 0x00, 0x00,
    0x8a, 0x00, 0xee, 0xb0, 0x0a, 0xee, 0x66, 0xba, 0x40, 0x04, 0xb0, 0x01, 0xee, 0xb0, 0x07, 0xee,
    0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfd,
];

/// 64-bit guest: prints "T", then `ud2` with an empty IDT: #UD -> #GP -> #DF -> triple fault.
const TRIPLE_FAULT: &[u8] = &[0x66, 0xba, 0xf8, 0x03, 0xb0, 0x54, 0xee, 0x0f, 0x0b];

/// 64-bit guest: boot-timer code 3, then `cli; hlt` forever (idle).
const IDLE: &[u8] = &[
    0x66, 0xba, 0x40, 0x04, 0xb0, 0x03, 0xee, 0xfa, 0xf4, 0xeb, 0xfd,
];

/// PVH (32-bit, paging off) BSP: writes hvm_start_info.magic (EBX) to MMIO 0xd1000000, 0x5a
/// to 0xd1000010, copies a 4-byte MMIO read of 0xd1000020 to 0xd1000030; software-enables
/// its LAPIC; sends INIT and SIPI (vector 0x10 -> 0x10000) to APIC 1; waits for the AP's flag
/// at 0x11000; prints "B"; resets through the i8042.
///
/// ```text
/// mov (%ebx),%eax; mov %eax,0xd1000000; movb $0x5a,0xd1000010
/// mov 0xd1000020,%eax; mov %eax,0xd1000030; movl $0x1ff,0xfee000f0
/// movl $0x01000000,0xfee00310; movl $0x4500,0xfee00300
/// movl $0x01000000,0xfee00310; movl $0x4610,0xfee00300
/// 1: cmpb $0,0x11000; je 1b; mov $0x3f8,%dx; mov $'B',%al; out %al,(%dx)
/// mov $0xfe,%al; out %al,$0x64; 2: hlt; jmp 2b
/// ```
const PVH_BSP: &[u8] = &[
    0x8b, 0x03, 0xa3, 0x00, 0x00, 0x00, 0xd1, 0xc6, 0x05, 0x10, 0x00, 0x00, 0xd1, 0x5a, 0xa1, 0x20,
    0x00, 0x00, 0xd1, 0xa3, 0x30, 0x00, 0x00, 0xd1, 0xc7, 0x05, 0xf0, 0x00, 0xe0, 0xfe, 0xff, 0x01,
    0x00, 0x00, 0xc7, 0x05, 0x10, 0x03, 0xe0, 0xfe, 0x00, 0x00, 0x00, 0x01, 0xc7, 0x05, 0x00, 0x03,
    0xe0, 0xfe, 0x00, 0x45, 0x00, 0x00, 0xc7, 0x05, 0x10, 0x03, 0xe0, 0xfe, 0x00, 0x00, 0x00, 0x01,
    0xc7, 0x05, 0x00, 0x03, 0xe0, 0xfe, 0x10, 0x46, 0x00, 0x00, 0x80, 0x3d, 0x00, 0x10, 0x01, 0x00,
    0x00, 0x74, 0xf7, 0x66, 0xba, 0xf8, 0x03, 0xb0, 0x42, 0xee, 0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xeb,
    0xfd,
];

/// Real-mode AP trampoline at 0x10000: prints "A", sets the byte at 0x11000, halts.
///
/// ```text
/// mov $0x3f8,%dx; mov $'A',%al; out %al,(%dx); mov $0x1000,%ax; mov %ax,%ds
/// movb $1,0x1000; 1: hlt; jmp 1b
/// ```
const AP_TRAMPOLINE: &[u8] = &[
    0xba, 0xf8, 0x03, 0xb0, 0x41, 0xee, 0xb8, 0x00, 0x10, 0x8e, 0xd8, 0xc6, 0x06, 0x00, 0x10, 0x01,
    0xf4, 0xeb, 0xfd,
];

/// Pads code to two pages so the mapped (copy-on-write) load path has whole pages to map.
fn padded(code: &[u8]) -> Vec<u8> {
    let mut v = code.to_vec();
    v.resize(8192 + 100, 0x90);
    v
}

fn write_kernel(dir: &Path, name: &str, elf: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p).unwrap().write_all(elf).unwrap();
    p
}

fn long_mode_kernel(dir: &Path, code: &[u8]) -> PathBuf {
    write_kernel(
        dir,
        "vmlinux",
        &build_test_elf(0x100000, &[(0x100000, &padded(code))], None),
    )
}

#[test]
fn kvm_serial_boot_timer_and_i8042_reset_exit_zero() {
    require_kvm();
    let d = tempfile::tempdir().unwrap();
    let k = long_mode_kernel(d.path(), HELLO_RESET);
    for extra in [&[][..], &["--copy-boot-files"][..]] {
        let mut args = vec![
            "--memory-mib",
            "32",
            "--kernel",
            k.to_str().unwrap(),
            "--boot-timer",
        ];
        args.extend_from_slice(extra);
        let o = run_vmm(&args);
        assert_eq!(o.code, Some(0), "{extra:?}: stderr: {}", o.stderr);
        // 'c' is the first byte of the default command line ("console=ttyS0 ...").
        assert_eq!(o.stdout, "Hic\n", "{extra:?}");
        let lines: Vec<&str> = o
            .stderr
            .lines()
            .filter(|l| l.starts_with("boot-timer:"))
            .collect();
        assert_eq!(lines.len(), 2, "{}", o.stderr);
        assert!(
            lines[0].starts_with("boot-timer: code=1 t="),
            "{}",
            o.stderr
        );
        assert!(
            lines[1].starts_with("boot-timer: code=7 t="),
            "{}",
            o.stderr
        );
        let t: u64 = lines[0].rsplit('=').next().unwrap().parse().unwrap();
        assert!(t > 0);
    }
}

#[test]
fn kvm_config_file_and_serial_to_file() {
    require_kvm();
    let d = tempfile::tempdir().unwrap();
    let k = long_mode_kernel(d.path(), HELLO_RESET);
    let log = d.path().join("serial.log");
    let cfg = d.path().join("vm.toml");
    std::fs::write(
        &cfg,
        format!(
            "memory_mib = 16\nvcpus = 1\nkernel = \"{}\"\ncmdline = \"zz\"\n\
             init_args = \"crxrun=/bin/x\"\n[serial]\noutput = \"file\"\npath = \"{}\"\n",
            k.display(),
            log.display()
        ),
    )
    .unwrap();
    let o = run_vmm(&["--config", cfg.to_str().unwrap()]);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    assert_eq!(o.stdout, "");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "Hiz\n");
    assert!(
        !o.stderr.contains("boot-timer"),
        "boot timer is off by default"
    );
}

#[test]
fn kvm_triple_fault_is_reported_nonzero() {
    require_kvm();
    let d = tempfile::tempdir().unwrap();
    let k = long_mode_kernel(d.path(), TRIPLE_FAULT);
    let o = run_vmm(&["--memory-mib", "16", "--kernel", k.to_str().unwrap()]);
    assert_eq!(o.stdout, "T");
    assert_eq!(o.code, Some(3), "stderr: {}", o.stderr);
    assert!(o.stderr.contains("triple fault"), "{}", o.stderr);
    assert!(o.stderr.contains("KVM_EXIT_SHUTDOWN"), "{}", o.stderr);
}

#[test]
fn kvm_sigterm_stops_an_idle_vm_with_exit_zero() {
    require_kvm();
    let d = tempfile::tempdir().unwrap();
    let k = long_mode_kernel(d.path(), IDLE);
    let mut child = Command::new(VMM)
        .args([
            "--memory-mib",
            "16",
            "--vcpus",
            "2",
            "--kernel",
            k.to_str().unwrap(),
            "--boot-timer",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(line.starts_with("boot-timer: code=3"), "{line}");
    // The guest is now halted with interrupts off: only the signal can end it.
    std::thread::sleep(Duration::from_millis(50));
    // SAFETY: plain kill(2) of our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let t = Instant::now();
    let status = child.wait().unwrap();
    let mut rest = String::new();
    err.read_to_string(&mut rest).unwrap();
    assert_eq!(status.code(), Some(0), "stderr: {rest}");
    assert!(t.elapsed() < Duration::from_secs(5));
}

/// Records MMIO writes; reads return 0xa5.
type Writes = Arc<Mutex<Vec<(u64, Vec<u8>)>>>;

struct Recorder(Writes);

impl BusDevice for Recorder {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xa5);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.0.lock().unwrap().push((offset, data.to_vec()));
    }
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn kvm_pvh_entry_mmio_dispatch_and_second_vcpu() {
    require_kvm();
    let d = tempfile::tempdir().unwrap();
    let elf = build_test_elf(
        0x100000,
        &[(0x100000, &padded(PVH_BSP)), (0x10000, AP_TRAMPOLINE)],
        Some(0x100000),
    );
    let k = write_kernel(d.path(), "vmlinux-pvh", &elf);
    let cfg = VmConfig {
        vcpus: 2,
        serial: SerialOutput::Off,
        ..VmConfig::new(32, &k)
    };
    cfg.validate().unwrap();
    let writes: Writes = Arc::default();
    let serial = Captured::default();
    let opts = VmOptions {
        serial_out: Some(Box::new(serial.clone())),
        extra_mmio: vec![(
            0xd100_0000,
            0x1000,
            Arc::new(Mutex::new(Recorder(writes.clone()))),
        )],
        ..Default::default()
    };
    let report = run_vm(&cfg, opts).unwrap();
    assert_eq!(report.exit, VmExit::GuestReset);
    assert!(matches!(
        report.boot.map(|b| b.entry),
        Some(crx_vmm::boot::EntryPoint::Pvh { .. })
    ));
    assert!(report.first_entry.is_some());
    assert_eq!(
        String::from_utf8(serial.0.lock().unwrap().clone()).unwrap(),
        "AB"
    );
    let w = writes.lock().unwrap().clone();
    assert_eq!(
        w,
        vec![
            (0, 0x336e_c578u32.to_le_bytes().to_vec()),
            (0x10, vec![0x5a]),
            (0x30, vec![0xa5; 4]),
        ]
    );
}

#[test]
fn invalid_config_exits_1_naming_the_field() {
    // No KVM needed: validation happens before /dev/kvm is opened.
    let o = run_vmm(&["--memory-mib", "0", "--kernel", "/nonexistent"]);
    assert_eq!(o.code, Some(1));
    assert!(o.stderr.contains("memory_mib"), "{}", o.stderr);
    let o = run_vmm(&["--memory-mib", "16", "--kernel", "/nonexistent/vmlinux"]);
    assert_eq!(o.code, Some(1));
    assert!(o.stderr.contains("`kernel`"), "{}", o.stderr);
    let o = run_vmm(&["--memory-mib", "16"]);
    assert_eq!(o.code, Some(1));
    assert!(o.stderr.contains("`kernel`"), "{}", o.stderr);
}

/// `--kvm-speed` prints the probe's figure and runs no VM; with any VM flag it is a usage error.
#[test]
fn kvm_speed_flag_prints_the_loop_speed() {
    require_kvm();
    let o = run_vmm(&["--kvm-speed"]);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let ns: f64 = o.stdout.trim().parse().expect("a number");
    assert!(ns > 0.0, "{ns}");
    let o = run_vmm(&["--kvm-speed", "--memory-mib", "16"]);
    assert_eq!(o.code, Some(2), "{}", o.stderr);
}

#[test]
fn unknown_flag_is_a_usage_error() {
    let o = run_vmm(&["--bogus"]);
    assert_eq!(o.code, Some(2));
}

/// PVH guest: copies the virtio-mmio magic of slot 0 and the device ids of slots 0, 1, 2 (at
/// 0xd0000000 + n * 0x1000) to the test device at 0xd1000000, then resets.
///
/// ```text
/// mov 0xd0000000,%eax; mov %eax,0xd1000000; mov 0xd0000008,%eax; mov %eax,0xd1000004
/// mov 0xd0001008,%eax; mov %eax,0xd1000008; mov 0xd0002008,%eax; mov %eax,0xd100000c
/// mov $0xfe,%al; out %al,$0x64; 1: hlt; jmp 1b
/// ```
const PROBE_VIRTIO: &[u8] = &[
    0xa1, 0x00, 0x00, 0x00, 0xd0, 0xa3, 0x00, 0x00, 0x00, 0xd1, 0xa1, 0x08, 0x00, 0x00, 0xd0, 0xa3,
    0x04, 0x00, 0x00, 0xd1, 0xa1, 0x08, 0x10, 0x00, 0xd0, 0xa3, 0x08, 0x00, 0x00, 0xd1, 0xa1, 0x08,
    0x20, 0x00, 0xd0, 0xa3, 0x0c, 0x00, 0x00, 0xd1, 0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfd,
];

#[test]
fn kvm_virtio_devices_answer_at_their_mmio_slots() {
    require_kvm();
    let d = tempfile::tempdir().unwrap();
    let k = write_kernel(
        d.path(),
        "vmlinux-probe",
        &build_test_elf(0x100000, &[(0x100000, PROBE_VIRTIO)], Some(0x100000)),
    );
    let disk = d.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let uds = d.path().join("v.sock");
    let cfg = VmConfig {
        disks: vec![DiskConfig {
            path: disk.clone(),
            read_only: false,
        }],
        vsock: Some(VsockConfig {
            guest_cid: 3,
            uds_path: uds.clone(),
        }),
        serial: SerialOutput::Off,
        ..VmConfig::new(16, &k)
    };
    cfg.validate().unwrap();
    let writes: Writes = Arc::default();
    let opts = VmOptions {
        extra_mmio: vec![(
            0xd100_0000,
            0x1000,
            Arc::new(Mutex::new(Recorder(writes.clone()))),
        )],
        ..Default::default()
    };
    let report = run_vm(&cfg, opts).unwrap();
    assert_eq!(report.exit, VmExit::GuestReset);
    let got: Vec<(u64, u32)> = writes
        .lock()
        .unwrap()
        .iter()
        .map(|(o, b)| (*o, u32::from_le_bytes(b[..4].try_into().unwrap())))
        .collect();
    // "virt", then block (2), vsock (19), rng (4).
    assert_eq!(got, vec![(0, 0x7472_6976), (4, 2), (8, 19), (12, 4)]);
    assert!(
        !uds.exists(),
        "the vsock socket is removed when the VM ends"
    );
}

/// 64-bit guest: prints "E", then `int3` with an empty IDT.
/// `mov $0x3f8,%dx; mov $'E',%al; out %al,(%dx); int3`
const INT3: &[u8] = &[0x66, 0xba, 0xf8, 0x03, 0xb0, 0x45, 0xee, 0xcc];

/// A KVM that runs `int3` natively triple-faults here (exit 3); this project's hosts, whose
/// KVM emulates instructions and lacks `int3`, report an emulation failure (exit 4) that must
/// name the cause and show the instruction bytes. Either way the exit is non-zero and explained.
#[test]
fn kvm_int3_is_a_triple_fault_or_a_named_emulation_failure() {
    require_kvm();
    let d = tempfile::tempdir().unwrap();
    let k = long_mode_kernel(d.path(), INT3);
    let o = run_vmm(&["--memory-mib", "16", "--kernel", k.to_str().unwrap()]);
    assert_eq!(o.stdout, "E");
    match o.code {
        Some(3) => assert!(o.stderr.contains("triple fault"), "{}", o.stderr),
        Some(4) => {
            assert!(o.stderr.contains("KVM_EXIT_INTERNAL_ERROR"), "{}", o.stderr);
            assert!(o.stderr.contains("emulation failure"), "{}", o.stderr);
            assert!(
                o.stderr.contains("emulating guest instructions"),
                "{}",
                o.stderr
            );
            assert!(o.stderr.contains("instruction bytes [cc "), "{}", o.stderr);
            assert!(o.stderr.contains("RIP 0x100007"), "{}", o.stderr);
        }
        other => panic!("exit {other:?}, stderr: {}", o.stderr),
    }
}

/// 64-bit guest: waits for a received byte on COM1 (LSR bit 0), echoes it, resets.
///
/// ```text
/// mov $0x3fd,%dx; 1: in (%dx),%al; test $1,%al; jz 1b
/// mov $0x3f8,%dx; in (%dx),%al; out %al,(%dx); mov $0xfe,%al; out %al,$0x64; 2: hlt; jmp 2b
/// ```
const ECHO: &[u8] = &[
    0x66, 0xba, 0xfd, 0x03, 0xec, 0xa8, 0x01, 0x74, 0xfb, 0x66, 0xba, 0xf8, 0x03, 0xec, 0xee, 0xb0,
    0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfd,
];

#[test]
fn kvm_stdin_reaches_the_serial_console() {
    require_kvm();
    let d = tempfile::tempdir().unwrap();
    let k = long_mode_kernel(d.path(), ECHO);
    let mut child = Command::new(VMM)
        .args(["--memory-mib", "16", "--kernel", k.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.as_mut().unwrap().write_all(b"Z").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"Z");
}
