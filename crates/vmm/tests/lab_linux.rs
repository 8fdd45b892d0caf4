//! Lab tier of issue 3: crx-vmm boots the project's guest kernel inside the nested lab.
//!
//! Run inside the lab (`target/debug/xtask lab -- target/debug/deps/lab_linux-HASH lab_`).
//! A missing `CRX_GUEST_KERNEL_DIR`, kernel file, `/dev/kvm` or `/bin/busybox` is a failure,
//! never a skip. Each test builds its initrds with crx-initrd (a busybox + probe layer and a
//! layer holding the test's `/init`), runs crx-vmm as a child that is killed on timeout or
//! panic, and reads the serial console from a file.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crx_testkit::vm::Vm;
use crx_testkit::{busybox, env, vsock};

const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

/// `vmlinux` or `bzImage` from `$CRX_GUEST_KERNEL_DIR`, with /dev/kvm checked.
fn kernel(name: &str) -> PathBuf {
    env::guest_kernel(name)
}

/// The base layer: busybox, the guest probe and its libraries, mount points.
fn base_layer(dir: &Path) -> PathBuf {
    let spec = format!(
        "busybox /bin/busybox ${{BUSYBOX}}\n\
         binary /bin/crx-guest-probe {}\n\
         dir /proc\ndir /sys\ndir /dev\ndir /tmp\n\
         file /layer1.txt {}\n",
        env!("CARGO_BIN_EXE_crx-guest-probe"),
        busybox::write(dir, "layer1.txt", b"from-layer-one\n").display()
    );
    busybox::initrd(dir, "base.cpio", &spec)
}

/// The second layer: `/init` (mounts, BODY, `reboot -f`) plus `extra` spec lines.
fn init_layer(dir: &Path, body: &str, extra: &str) -> PathBuf {
    let script = format!(
        "#!/bin/sh\n\
         mount -t proc proc /proc\nmount -t sysfs sys /sys\nmount -t devtmpfs dev /dev\n\
         echo CRX-INIT-START\ncat /proc/uptime\n{body}\necho CRX-INIT-END\nreboot -f\n"
    );
    let init = busybox::write(dir, "init.sh", script.as_bytes());
    let spec = format!(
        "file /init {} 0755\nfile /layer2.txt {}\n{extra}\n",
        init.display(),
        busybox::write(dir, "layer2.txt", b"from-layer-two\n").display()
    );
    busybox::initrd(dir, "init.cpio", &spec)
}

/// crx-vmm (this crate's) with `args`: console and stderr in `dir` as `NAME.console`,
/// `NAME.stderr`.
fn spawn(dir: &Path, name: &str, args: &[&str]) -> Vm {
    Vm::spawn_vmm(Path::new(env!("CARGO_BIN_EXE_crx-vmm")), dir, name, args)
}

/// Boots to the end: exit status 0 and the init markers on the console.
fn expect_clean_run(vm: &mut Vm) -> String {
    let st = vm.wait(BOOT_TIMEOUT);
    let out = vm.console_text();
    assert!(
        out.contains("CRX-INIT-START"),
        "init never ran\n{}",
        vm.logs()
    );
    assert!(
        out.contains("CRX-INIT-END"),
        "init did not finish\n{}",
        vm.logs()
    );
    assert_eq!(
        st.code(),
        Some(0),
        "guest `reboot -f` must exit 0\n{}",
        vm.logs()
    );
    eprintln!("{out}");
    out
}

fn vm_args<'a>(kernel: &'a Path, initrds: &'a [PathBuf]) -> Vec<&'a str> {
    let mut a = vec!["--memory-mib", "256", "--kernel", kernel.to_str().unwrap()];
    for i in initrds {
        a.push("--initrd");
        a.push(i.to_str().unwrap());
    }
    a
}

fn boot_and_run(kernel_name: &str, body: &str, extra_args: &[&str]) -> String {
    let k = kernel(kernel_name);
    let dir = tempfile::tempdir().unwrap();
    let initrds = [base_layer(dir.path()), init_layer(dir.path(), body, "")];
    let mut args = vm_args(&k, &initrds);
    args.extend_from_slice(extra_args);
    let mut vm = spawn(dir.path(), "vm", &args);
    expect_clean_run(&mut vm)
}

#[test]
fn lab_vmlinux_pvh_reaches_init() {
    let out = boot_and_run("vmlinux", "echo hello-from-init", &[]);
    assert!(out.contains("hello-from-init"), "{out}");
}

#[test]
fn lab_bzimage_reaches_init() {
    let out = boot_and_run("bzImage", "echo hello-from-init", &[]);
    assert!(out.contains("hello-from-init"), "{out}");
}

#[test]
fn lab_two_initrds_both_visible() {
    let out = boot_and_run("vmlinux", "cat /layer1.txt /layer2.txt", &[]);
    assert!(
        out.contains("from-layer-one"),
        "file of the first initrd\n{out}"
    );
    assert!(
        out.contains("from-layer-two"),
        "file of the second initrd\n{out}"
    );
}

#[test]
fn lab_two_vcpus_online() {
    let out = boot_and_run(
        "vmlinux",
        "echo ONLINE=$(cat /sys/devices/system/cpu/online)",
        &["--vcpus", "2"],
    );
    assert!(out.contains("ONLINE=0-1"), "{out}");
}

#[test]
fn lab_disk_written_by_guest_and_read_only_disk_refused() {
    let k = kernel("vmlinux");
    let dir = tempfile::tempdir().unwrap();
    let rw = busybox::write(dir.path(), "rw.img", &vec![0u8; 4 << 20]);
    let ro_content: Vec<u8> = (0..(4u32 << 20)).map(|i| (i % 251) as u8).collect();
    let ro = busybox::write(dir.path(), "ro.img", &ro_content);
    let body = "printf CRX-DISK-WRITTEN > /tmp/msg\n\
                dd if=/tmp/msg of=/dev/vda conv=fsync && echo RW-OK\n\
                dd if=/dev/zero of=/dev/vda bs=4096 seek=256 count=256 conv=fsync && echo RW-BIG-OK\n\
                dd if=/tmp/msg of=/dev/vdb conv=fsync; echo RO-RC=$?\n\
                head -c 16 /dev/vdb | od -An -tx1";
    let initrds = [base_layer(dir.path()), init_layer(dir.path(), body, "")];
    let mut args = vm_args(&k, &initrds);
    let rw_arg = rw.to_str().unwrap().to_string();
    let ro_arg = format!("{}:ro", ro.display());
    args.extend_from_slice(&["--disk", &rw_arg, "--disk", &ro_arg]);
    // Mark the area the guest zeroes, so the host sees that write too.
    let mut f = std::fs::OpenOptions::new().write(true).open(&rw).unwrap();
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(1 << 20)).unwrap();
    f.write_all(&[0xaa; 1 << 20]).unwrap();
    drop(f);
    let mut vm = spawn(dir.path(), "vm", &args);
    let out = expect_clean_run(&mut vm);
    assert!(out.contains("RW-OK") && out.contains("RW-BIG-OK"), "{out}");
    let back = std::fs::read(&rw).unwrap();
    assert_eq!(
        &back[..16],
        b"CRX-DISK-WRITTEN",
        "host view of the guest's write"
    );
    assert!(
        back[1 << 20..2 << 20].iter().all(|&b| b == 0),
        "guest's 1 MiB of zeros at offset 1 MiB not on the host file"
    );
    let rc: i32 = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("RO-RC="))
        .unwrap_or_else(|| panic!("no RO-RC line\n{out}"))
        .trim()
        .parse()
        .unwrap();
    assert_ne!(rc, 0, "a write to the read-only disk succeeded\n{out}");
    assert!(
        std::fs::read(&ro).unwrap() == ro_content,
        "the read-only disk's host file changed"
    );
}

fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Writes `payload` on a thread while reading the echo to EOF; returns the echo.
fn echo_round_trip(s: UnixStream, payload: &[u8]) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut w = s.try_clone().unwrap();
    let data = payload.to_vec();
    let writer = std::thread::spawn(move || {
        w.write_all(&data).unwrap();
        w.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut back = Vec::new();
    let mut r = s;
    r.read_to_end(&mut back).expect("reading the echo");
    writer.join().unwrap();
    back
}

/// The first connection on `listener`, or a panic with the VM's logs once `limit` has passed
/// (a guest that never boots must fail the test, not hang the tier).
fn accept_within(listener: &UnixListener, limit: Duration, vm: &Vm) -> UnixStream {
    listener.set_nonblocking(true).unwrap();
    let end = Instant::now() + limit;
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                return s;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < end => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("no guest connection within {limit:?}: {e}\n{}", vm.logs()),
        }
    }
}

#[test]
fn lab_vsock_echo_both_directions() {
    const SIZE: usize = 6 << 20;
    let k = kernel("vmlinux");
    let dir = tempfile::tempdir().unwrap();
    let body = "/bin/crx-guest-probe listen 5000 &\n\
                L=$!\n\
                /bin/crx-guest-probe connect 2 6000\n\
                wait $L";
    let initrds = [base_layer(dir.path()), init_layer(dir.path(), body, "")];
    let mut args = vm_args(&k, &initrds);
    let uds = dir.path().join("vm.sock");
    let uds_s = uds.to_str().unwrap().to_string();
    args.extend_from_slice(&["--vsock-cid", "3", "--vsock-uds", &uds_s]);
    let host_listener = UnixListener::bind(format!("{uds_s}_6000")).unwrap();
    let mut vm = spawn(dir.path(), "vm", &args);
    assert_eq!(vm.uds, uds);
    let payload: Vec<u8> = (0..SIZE as u64)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let sum = fnv1a(&payload);

    // Guest to host: the guest's connection to port 6000 arrives on `<uds>_6000`.
    let s = accept_within(&host_listener, BOOT_TIMEOUT, &vm);
    let t = Instant::now();
    let back = echo_round_trip(s, &payload);
    assert_eq!(back.len(), SIZE, "guest->host echo length\n{}", vm.logs());
    assert_eq!(fnv1a(&back), sum, "guest->host echo checksum");
    eprintln!(
        "guest->host: {SIZE} bytes fnv1a={sum:016x} echoed in {:?}",
        t.elapsed()
    );

    // Host to guest: CONNECT 5000 to the guest's listener.
    let end = Instant::now() + BOOT_TIMEOUT;
    let s = loop {
        match vsock::connect_port(&uds, 5000) {
            Ok(s) => break s,
            Err(e) if Instant::now() > end => panic!("CONNECT 5000: {e}\n{}", vm.logs()),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let t = Instant::now();
    let back = echo_round_trip(s, &payload);
    assert_eq!(back.len(), SIZE, "host->guest echo length\n{}", vm.logs());
    assert_eq!(fnv1a(&back), sum, "host->guest echo checksum");
    eprintln!(
        "host->guest: {SIZE} bytes fnv1a={sum:016x} echoed in {:?}",
        t.elapsed()
    );

    let out = expect_clean_run(&mut vm);
    let line = format!("probe: echoed {SIZE} bytes fnv1a={sum:016x}");
    assert_eq!(out.matches(&line).count(), 2, "guest-side checksums\n{out}");
}

fn pss_kib(pid: u32) -> u64 {
    let t = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    t.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("Pss in smaps_rollup")
}

/// Two VMs of the same kernel + initrds, both idle at init; PSS of the second.
fn second_vm_pss(dir: &Path, k: &Path, initrds: &[PathBuf], copy: bool) -> u64 {
    let mut args = vm_args(k, initrds);
    // Linux poisons (writes 0xcc over) the initrd's memory when it frees it after unpacking,
    // which copies every mapped initrd page; `retain_initrd` keeps it, as a long-lived guest
    // that keeps its initrd (or one that reads it lazily) would.
    args.extend_from_slice(&["--init-args", "retain_initrd"]);
    if copy {
        args.push("--copy-boot-files");
    }
    let tag = if copy { "copy" } else { "map" };
    let mut a = spawn(dir, &format!("{tag}1"), &args);
    a.wait_console("CRX-IDLE", BOOT_TIMEOUT);
    let mut b = spawn(dir, &format!("{tag}2"), &args);
    b.wait_console("CRX-IDLE", BOOT_TIMEOUT);
    std::thread::sleep(Duration::from_millis(500));
    let (pa, pb) = (pss_kib(a.child.id()), pss_kib(b.child.id()));
    eprintln!("{tag}: PSS first VM {pa} KiB, second VM {pb} KiB");
    pb
}

#[test]
fn lab_shared_boot_files_lower_pss() {
    let k = kernel("vmlinux");
    let dir = tempfile::tempdir().unwrap();
    // 40 MiB of non-zero data that the guest never reads after unpacking.
    let pad: Vec<u8> = (0..(40u32 << 20)).map(|i| (i >> 12) as u8 | 1).collect();
    let pad_path = busybox::write(dir.path(), "pad.bin", &pad);
    let extra = format!("file /pad.bin {}", pad_path.display());
    let initrds = [
        base_layer(dir.path()),
        init_layer(dir.path(), "echo CRX-IDLE\nsleep 1000", &extra),
    ];
    let mapped = second_vm_pss(dir.path(), &k, &initrds, false);
    let copied = second_vm_pss(dir.path(), &k, &initrds, true);
    println!(
        "PSS of the second VM: mapped boot files {mapped} KiB, --copy-boot-files {copied} KiB, \
         saved {} KiB (initrds {} KiB, kernel {} KiB)",
        copied as i64 - mapped as i64,
        initrds
            .iter()
            .map(|i| i.metadata().unwrap().len())
            .sum::<u64>()
            / 1024,
        k.metadata().unwrap().len() / 1024
    );
    // Two VMs share the mapped initrds: the second should save at least a quarter of them.
    let initrd_kib: u64 = initrds
        .iter()
        .map(|i| i.metadata().unwrap().len())
        .sum::<u64>()
        / 1024;
    assert!(
        mapped + initrd_kib / 4 < copied,
        "PSS with mapped boot files ({mapped} KiB) not clearly below the copying baseline \
         ({copied} KiB; initrds {initrd_kib} KiB)"
    );
}

#[test]
fn lab_sigterm_exits_zero_while_guest_runs() {
    let k = kernel("vmlinux");
    let dir = tempfile::tempdir().unwrap();
    let initrds = [
        base_layer(dir.path()),
        init_layer(dir.path(), "echo CRX-IDLE\nsleep 1000", ""),
    ];
    let mut vm = spawn(dir.path(), "vm", &vm_args(&k, &initrds));
    vm.wait_console("CRX-IDLE", BOOT_TIMEOUT);
    // SAFETY: plain kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(vm.child.id() as i32, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let st = vm.wait(Duration::from_secs(30));
    assert_eq!(st.code(), Some(0), "SIGTERM must exit 0\n{}", vm.logs());
    assert!(
        !vm.console_text().contains("CRX-INIT-END"),
        "the guest was still running"
    );
}
