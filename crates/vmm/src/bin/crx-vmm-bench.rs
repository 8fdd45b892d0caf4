//! `crx-vmm-bench`: prints VMM start-up and memory numbers for tiny guests on the host's KVM.
//! A program, not a test: it asserts nothing about time.
//!
//! Usage: `crx-vmm-bench [--runs N] [--vmm PATH]` (default: the `crx-vmm` next to this binary).
//! `crx-vmm-bench --lab-boot N` (inside the nested lab) runs only section 3.
//! `crx-vmm-bench --warm [--runs N]` runs only section 4.
//!
//! 1. Start to first vCPU entry: spawns `crx-vmm` N times with a guest whose first instruction
//!    writes boot-timer code 1, then resets. Reports the guest-side time (`t=` of that line,
//!    measured from the VMM's `main`), the host-side time from `spawn()` to reading that line,
//!    and spawn to exit; and the guest-side time again with `--no-seccomp` (runs interleaved),
//!    with the difference of the medians: what the seccomp filters cost.
//! 2. RSS outside guest RAM for an idle VM (from /proc/PID/smaps, with `CRX_VMM_DEBUG=1`
//!    telling where guest RAM is), and guest-RAM RSS with a 32 MiB initrd copied vs mapped.
//! 3. `--lab-boot N`: boots `$CRX_GUEST_KERNEL_DIR`'s kernel with a busybox initrd (built with
//!    the `crx-initrd` next to this binary; its `/init` prints a marker and reboots) N times
//!    under crx-vmm (vmlinux) and N times under `qemu-system-x86_64 -M microvm,acpi=off
//!    -accel kvm -cpu host` (bzImage). Prints the time from spawn to the init's marker on the
//!    console and the wall time (spawn to exit), both on the host's clock (in the nested lab
//!    the guest's uptime lags the real clock by seconds per boot: it is no clock there),
//!    median/p90 of each and the crx-vmm/QEMU ratio of the medians; also crx-vmm with
//!    `--copy-boot-files`. The kernels are first copied to the local temp directory (tmpfs in
//!    the lab): on the lab's 9p share crx-vmm would copy them, never map them, and the
//!    "mapped" row would measure a copy.
//! 4. `--warm`: restore from a snapshot against a cold start of the same tiny guest, process
//!    start to the first guest instruction (see `warm.rs`).
//! 5. `--lab-warm N` (inside the nested lab): a Linux guest restored from a snapshot against
//!    the same guest booted cold, spawn to its answer (see `lab_warm.rs`).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use crx_vmm::boot::elf::build_test_elf;

/// `mov $0x440,%dx; mov $1,%al; out %al,(%dx); mov $0xfe,%al; out %al,$0x64; 1: hlt; jmp 1b`
const FIRST_ENTRY: &[u8] = &[
    0x66, 0xba, 0x40, 0x04, 0xb0, 0x01, 0xee, 0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfd,
];
/// `mov $0x440,%dx; mov $3,%al; out %al,(%dx); cli; 1: hlt; jmp 1b`
const IDLE: &[u8] = &[
    0x66, 0xba, 0x40, 0x04, 0xb0, 0x03, 0xee, 0xfa, 0xf4, 0xeb, 0xfd,
];

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary(name: &str, mut v: Vec<f64>) {
    v.sort_by(|a, b| a.total_cmp(b));
    println!(
        "{name:<44} median {:>9.1} us   p90 {:>9.1} us   (n={})",
        percentile(&v, 0.5),
        percentile(&v, 0.9),
        v.len()
    );
}

fn kernel(dir: &Path, name: &str, code: &[u8]) -> Result<PathBuf> {
    let p = dir.join(name);
    std::fs::write(&p, build_test_elf(0x100000, &[(0x100000, code)], None))?;
    Ok(p)
}

#[path = "crx-vmm-bench/lab_warm.rs"]
mod lab_warm;
#[path = "crx-vmm-bench/warm.rs"]
mod warm;

/// crx-vmm booting the tiny guest `k` in `memory_mib` MiB, serial off, boot timer on.
fn tiny_vm(vmm: &Path, k: &Path, memory_mib: u32) -> Command {
    let mut c = Command::new(vmm);
    c.arg("--memory-mib")
        .arg(memory_mib.to_string())
        .args(["--serial", "off", "--boot-timer", "--kernel"])
        .arg(k);
    c
}

/// One crx-vmm run of the first-entry guest: (guest-side `t=` of its first boot-timer line,
/// which must carry `code`, spawn to that line, spawn to exit), in microseconds.
fn first_entry_once(vmm: &Path, k: &Path, extra: &[&str], code: u8) -> Result<(f64, f64, f64)> {
    let t0 = Instant::now();
    let mut c = tiny_vm(vmm, k, 64)
        .args(extra)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut err = BufReader::new(c.stderr.take().context("stderr")?);
    let mut line = String::new();
    // `--no-seccomp` says so first: the boot-timer line is the first other one.
    while err.read_line(&mut line)? > 0 && line.starts_with("crx-vmm: seccomp: off") {
        line.clear();
    }
    let t_line = t0.elapsed();
    let status = c.wait()?;
    let t_exit = t0.elapsed();
    let t: f64 = line
        .trim()
        .strip_prefix(&format!("boot-timer: code={code} t="))
        .with_context(|| format!("unexpected line {line:?}"))?
        .parse()?;
    if !status.success() {
        bail!("crx-vmm exited with {status}");
    }
    Ok((t, t_line.as_secs_f64() * 1e6, t_exit.as_secs_f64() * 1e6))
}

/// Start to first vCPU entry, with the seccomp filters (the default) and with `--no-seccomp`,
/// runs interleaved so that both see the same host; the difference of the medians is what the
/// filters cost before the guest runs (ADR 0010).
fn first_entry(vmm: &Path, k: &Path, runs: usize) -> Result<()> {
    let (mut guest, mut line_seen, mut exit, mut bare) = (vec![], vec![], vec![], vec![]);
    for _ in 0..runs {
        let (t, line, ex) = first_entry_once(vmm, k, &[], 1)?;
        guest.push(t);
        line_seen.push(line);
        exit.push(ex);
        bare.push(first_entry_once(vmm, k, &["--no-seccomp"], 1)?.0);
    }
    let (with, without) = (median_p90(guest.clone()).0, median_p90(bare.clone()).0);
    summary("VMM main() -> guest's first instruction", guest);
    summary("  the same with --no-seccomp", bare);
    println!(
        "{:<44} median {:>9.1} us",
        "  seccomp filters add (difference of medians)",
        with - without
    );
    summary("spawn() -> boot-timer line read by parent", line_seen);
    summary("spawn() -> VMM exit (guest resets at once)", exit);
    Ok(())
}

/// Microseconds a fresh thread takes to install `kind`'s filter (the thread then ends).
fn install_time(kind: crx_vmm::seccomp::ThreadKind) -> Result<f64> {
    std::thread::spawn(move || {
        let t0 = Instant::now();
        crx_vmm::seccomp::install(kind)?;
        Ok::<_, crx_vmm::seccomp::SeccompError>(t0.elapsed().as_secs_f64() * 1e6)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("filter thread panicked"))?
    .map_err(Into::into)
}

/// The filters' own cost, in this process: a fresh thread installs the main filter and
/// another the vCPU filter (the kernel copies and checks each program), N times.
fn filter_install(runs: usize) -> Result<()> {
    use crx_vmm::seccomp::ThreadKind;
    let mut v = vec![];
    for _ in 0..runs {
        v.push(install_time(ThreadKind::Main)? + install_time(ThreadKind::Vcpu)?);
    }
    summary("installing the main + a vCPU filter", v);
    Ok(())
}

struct Rss {
    guest_kib: u64,
    other_kib: u64,
}

fn smaps_rss(pid: u32, guest: &[(u64, u64)]) -> Result<Rss> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let (mut in_guest, mut r) = (
        false,
        Rss {
            guest_kib: 0,
            other_kib: 0,
        },
    );
    for l in text.lines() {
        let first = l.split_whitespace().next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                in_guest = guest.iter().any(|&(s, e)| a >= s && b <= e);
                continue;
            }
        }
        if let Some(v) = l.strip_prefix("Rss:") {
            let kib: u64 = v.trim().trim_end_matches("kB").trim().parse()?;
            if in_guest {
                r.guest_kib += kib;
            } else {
                r.other_kib += kib;
            }
        }
    }
    Ok(r)
}

/// Keeps draining the child's stderr so its writes never fail.
fn drain(mut r: BufReader<std::process::ChildStderr>) {
    std::thread::spawn(move || std::io::copy(&mut r, &mut std::io::sink()));
}

fn idle_vm(vmm: &Path, k: &Path, extra: &[&str]) -> Result<(Child, Vec<(u64, u64)>)> {
    let mut c = tiny_vm(vmm, k, 128)
        .args(extra)
        .env("CRX_VMM_DEBUG", "1")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut err = BufReader::new(c.stderr.take().context("stderr")?);
    let mut ranges = vec![];
    loop {
        let mut line = String::new();
        if err.read_line(&mut line)? == 0 {
            bail!("crx-vmm exited early");
        }
        if let Some(rest) = line.strip_prefix("guest-ram: host=") {
            let r = rest.split_whitespace().next().unwrap_or("");
            let (a, b) = r.split_once('-').context("range")?;
            let p = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16);
            ranges.push((p(a)?, p(b)?));
        }
        if line.starts_with("boot-timer: code=3") {
            break;
        }
    }
    drain(err);
    std::thread::sleep(Duration::from_millis(200));
    Ok((c, ranges))
}

fn stop(mut c: Child) -> Result<()> {
    // SAFETY: kill(2) of our own child process.
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    let s = c.wait()?;
    if !s.success() {
        bail!("crx-vmm did not exit 0 on SIGTERM: {s}");
    }
    Ok(())
}

fn memory(vmm: &Path, k: &Path, dir: &Path) -> Result<()> {
    let (c, ranges) = idle_vm(vmm, k, &[])?;
    let r = smaps_rss(c.id(), &ranges)?;
    stop(c)?;
    println!(
        "idle VM, 128 MiB guest: RSS outside guest RAM {:>6} KiB, guest RAM RSS {:>6} KiB",
        r.other_kib, r.guest_kib
    );
    let initrd = dir.join("initrd.bin");
    let mut f = std::fs::File::create(&initrd)?;
    let chunk: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 253) as u8).collect();
    for _ in 0..32 {
        f.write_all(&chunk)?;
    }
    drop(f);
    let i = initrd.to_str().context("path")?;
    for (label, extra) in [
        ("mapped (default)", vec!["--initrd", i]),
        (
            "--copy-boot-files",
            vec!["--initrd", i, "--copy-boot-files"],
        ),
    ] {
        let (c, ranges) = idle_vm(vmm, k, &extra)?;
        let r = smaps_rss(c.id(), &ranges)?;
        stop(c)?;
        println!(
            "idle VM + 32 MiB initrd, {label:<18}: guest RAM RSS {:>6} KiB, other {:>6} KiB",
            r.guest_kib, r.other_kib
        );
    }
    Ok(())
}

/// The first thing the guest's init does is print [`INIT_MARKER`].
const LAB_INIT: &str = "#!/bin/sh\necho CRX-AT-INIT\nreboot -f\n";
const INIT_MARKER: &str = "CRX-AT-INIT";

fn median_p90(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (percentile(&v, 0.5), percentile(&v, 0.9))
}

/// Runs `cmd` to exit (killed after 120 s); returns the milliseconds from spawn to reading
/// the init's marker on the console, and from spawn to exit, both on the host's clock.
fn lab_boot_once(mut cmd: Command) -> Result<(f64, f64)> {
    let t0 = Instant::now();
    let mut c = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("spawn")?;
    let out = c.stdout.take().context("stdout")?;
    let pid = c.id();
    let watchdog = std::thread::spawn(move || {
        let end = Instant::now() + Duration::from_secs(120);
        while Instant::now() < end {
            std::thread::sleep(Duration::from_millis(100));
            if std::fs::metadata(format!("/proc/{pid}")).is_err() {
                return;
            }
        }
        // SAFETY: kill(2) on our child's pid; at worst it is already a zombie we still own.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    });
    let mut at_init = None;
    let mut tail = std::collections::VecDeque::new();
    for line in BufReader::new(out).lines() {
        let line = line?;
        if at_init.is_none() && line.contains(INIT_MARKER) {
            at_init = Some(t0.elapsed().as_secs_f64() * 1e3);
        }
        if tail.len() == 30 {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    let st = c.wait()?;
    let wall = t0.elapsed().as_secs_f64() * 1e3;
    let _ = watchdog.join();
    let Some(at_init) = at_init else {
        let tail: Vec<String> = tail.into();
        bail!(
            "no {INIT_MARKER} line (exit {st}); the console ended with:\n{}",
            tail.join("\n")
        );
    };
    Ok((at_init, wall))
}

/// Copies `file` into `dir` (a local filesystem) and checks that crx-vmm will map it from
/// there rather than copy it.
fn stage(file: &Path, dir: &Path) -> Result<PathBuf> {
    let dest = dir.join(file.file_name().context("file name")?);
    std::fs::copy(file, &dest).with_context(|| format!("copying {}", file.display()))?;
    mappable(&dest)?;
    Ok(dest)
}

/// Fails unless crx-vmm maps `file` into guest RAM (rather than copying it).
fn mappable(file: &Path) -> Result<()> {
    if !crx_vmm::memory::is_mappable(&std::fs::File::open(file)?) {
        bail!(
            "{} is on a filesystem crx-vmm does not map boot files from: the \"mapped\" \
             figures would measure a copy (set TMPDIR to a local filesystem)",
            file.display()
        );
    }
    Ok(())
}

/// `dir/initrd.cpio`: busybox, /proc, /dev (with a console node) and `init` as `/init`, built
/// with the `crx-initrd` next to `vmm`; checked to be mappable.
fn lab_initrd(vmm: &Path, dir: &Path, init: &str) -> Result<PathBuf> {
    let script = dir.join("init.sh");
    std::fs::write(&script, init)?;
    let spec = dir.join("bench.spec");
    std::fs::write(
        &spec,
        format!(
            "busybox /bin/busybox /bin/busybox\ndir /proc\ndir /dev\nnod /dev/console 0600 c 5 1\nfile /init {} 0755\n",
            script.display()
        ),
    )?;
    let tool = vmm.with_file_name("crx-initrd");
    let initrd = dir.join("initrd.cpio");
    let st = Command::new(&tool)
        .arg("build")
        .arg(&spec)
        .arg("-o")
        .arg(&initrd)
        .status()
        .with_context(|| format!("{} (cargo build -p crx-initrd)", tool.display()))?;
    if !st.success() {
        bail!("crx-initrd build failed");
    }
    mappable(&initrd)?;
    Ok(initrd)
}

fn lab_boot(vmm: &Path, runs: usize) -> Result<()> {
    let kdir = PathBuf::from(
        std::env::var_os("CRX_GUEST_KERNEL_DIR")
            .context("CRX_GUEST_KERNEL_DIR is not set: run inside the nested lab")?,
    );
    let dir = std::env::temp_dir().join(format!("crx-vmm-lab-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = lab_boot_in(vmm, &kdir, &dir, runs);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn lab_boot_in(vmm: &Path, kdir: &Path, dir: &Path, runs: usize) -> Result<()> {
    // Both VMMs boot local copies (QEMU reads its kernel whole either way).
    let vmlinux = stage(&kdir.join("vmlinux"), dir)?;
    let bzimage = stage(&kdir.join("bzImage"), dir)?;
    let initrd = lab_initrd(vmm, dir, LAB_INIT)?;
    let cmdline = "console=ttyS0 reboot=k panic=-1 pci=off nomodule i8042.noaux i8042.nomux \
                   i8042.dumbkbd";
    let (mut crx, mut copy, mut qemu) = ((vec![], vec![]), (vec![], vec![]), (vec![], vec![]));
    for _ in 0..runs {
        for (extra, acc) in [(None, &mut crx), (Some("--copy-boot-files"), &mut copy)] {
            let mut c = Command::new(vmm);
            c.args(["--memory-mib", "256", "--serial", "stdout", "--kernel"])
                .arg(&vmlinux)
                .arg("--initrd")
                .arg(&initrd)
                .args(extra);
            let (g, w) = lab_boot_once(c).context("crx-vmm")?;
            acc.0.push(g);
            acc.1.push(w);
        }
        let mut q = Command::new("qemu-system-x86_64");
        q.args([
            "-M",
            "microvm,acpi=off",
            "-accel",
            "kvm",
            "-cpu",
            "host",
            "-m",
            "256",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
            "-kernel",
        ])
        .arg(&bzimage)
        .arg("-initrd")
        .arg(&initrd)
        .arg("-append")
        .arg(cmdline.replace("reboot=k", "reboot=t"));
        let (g, w) = lab_boot_once(q).context("qemu-system-x86_64")?;
        qemu.0.push(g);
        qemu.1.push(w);
    }
    println!(
        "lab boot: {} staged in {} ({runs} runs each, 256 MiB, 1 vCPU; host clock)",
        kdir.display(),
        dir.display()
    );
    for (what, i) in [("spawn->init's marker", 0), ("wall time spawn->exit", 1)] {
        let (cv, kv, qv) = if i == 0 {
            (crx.0.clone(), copy.0.clone(), qemu.0.clone())
        } else {
            (crx.1.clone(), copy.1.clone(), qemu.1.clone())
        };
        let (cm, c9) = median_p90(cv);
        let (km, k9) = median_p90(kv);
        let (qm, q9) = median_p90(qv);
        println!(
            "{what:<28} crx-vmm --copy-boot-files median {km:>8.1} ms p90 {k9:>8.1} ms | ratio to QEMU {:.2}",
            km / qm
        );
        println!("{what:<28} crx-vmm median {cm:>8.1} ms p90 {c9:>8.1} ms | QEMU median {qm:>8.1} ms p90 {q9:>8.1} ms | ratio crx-vmm/QEMU {:.2}", cm / qm);
    }
    Ok(())
}

fn main() -> Result<()> {
    let mut runs = 20;
    let mut lab: Option<usize> = None;
    let mut warm_only = false;
    let mut lab_warm: Option<usize> = None;
    let mut vmm = std::env::current_exe()?
        .parent()
        .context("exe dir")?
        .join("crx-vmm");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => runs = args.next().context("--runs N")?.parse()?,
            "--vmm" => vmm = args.next().context("--vmm PATH")?.into(),
            "--lab-boot" => lab = Some(args.next().context("--lab-boot N")?.parse()?),
            "--warm" => warm_only = true,
            "--lab-warm" => lab_warm = Some(args.next().context("--lab-warm N")?.parse()?),
            _ => bail!(
                "usage: crx-vmm-bench [--runs N] [--vmm PATH] [--lab-boot N | --lab-warm N | --warm]"
            ),
        }
    }
    if let Some(n) = lab_warm {
        return lab_warm::run(&vmm, n);
    }
    if let Some(n) = lab {
        return lab_boot(&vmm, n);
    }
    let dir = std::env::temp_dir().join(format!("crx-vmm-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = (|| {
        let k1 = kernel(&dir, "first-entry", FIRST_ENTRY)?;
        let k2 = kernel(&dir, "idle", IDLE)?;
        println!("crx-vmm-bench: {} ({runs} runs)", vmm.display());
        if warm_only {
            return warm::run(&vmm, &dir, runs);
        }
        first_entry(&vmm, &k1, runs)?;
        filter_install(runs)?;
        memory(&vmm, &k2, &dir)
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}
