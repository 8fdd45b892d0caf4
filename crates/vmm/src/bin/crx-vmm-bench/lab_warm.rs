//! `crx-vmm-bench --lab-warm N` (inside the nested lab): a Linux guest started from a snapshot
//! against the same guest booted cold, in one invocation. The guest's init prints
//! `CRX-WARM-READY` and waits for a line on its console; the host answers `go`, the guest prints
//! `CRX-WARM-GO` and reboots. Cold: spawn to `CRX-WARM-READY` (the booted guest is ready).
//! Template: one cold boot snapshotted on SIGUSR1 at `CRX-WARM-READY`. Warm: spawn of
//! `crx-vmm --restore` to `CRX-WARM-GO` (restored, and answering `go` sent at spawn). Times on
//! the lab host's clock, median and p90.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{lab_initrd, median_p90, stage};

const INIT: &str = "#!/bin/sh\nmount -t proc proc /proc\necho CRX-WARM-READY\n\
                    read line < /dev/console\necho CRX-WARM-GO\nreboot -f\n";

fn spawn(vmm: &Path, base: &[String], extra: &[&str]) -> Result<Child> {
    Command::new(vmm)
        .args(base)
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("spawning crx-vmm")
}

/// Reads `c`'s console until a line holding `marker`; milliseconds since `t0`. The child is
/// killed after 120 s.
fn until(c: &mut Child, marker: &str, t0: Instant) -> Result<f64> {
    let pid = c.id();
    let out = c.stdout.take().context("stdout")?;
    let mut lines = BufReader::new(out).lines();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut tail = Vec::new();
    while Instant::now() < deadline {
        let Some(line) = lines.next() else { break };
        let line = line?;
        if line.contains(marker) {
            let ms = t0.elapsed().as_secs_f64() * 1e3;
            // Keep draining, so that the guest never blocks on a full pipe.
            std::thread::spawn(move || lines.for_each(drop));
            return Ok(ms);
        }
        tail.push(line);
    }
    // SAFETY: kill(2) of our own child.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    bail!("no {marker}; the console said:\n{}", tail.join("\n"))
}

fn finish(mut c: Child) -> Result<()> {
    if let Some(mut i) = c.stdin.take() {
        let _ = i.write_all(b"go\n");
    }
    let st = c.wait()?;
    if !st.success() {
        bail!("crx-vmm exited {st}");
    }
    Ok(())
}

pub fn run(vmm: &Path, runs: usize) -> Result<()> {
    let kdir = std::path::PathBuf::from(
        std::env::var_os("CRX_GUEST_KERNEL_DIR")
            .context("CRX_GUEST_KERNEL_DIR is not set: run inside the nested lab")?,
    );
    let dir = std::env::temp_dir().join(format!("crx-vmm-lab-warm-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = run_in(vmm, &kdir, &dir, runs);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_in(vmm: &Path, kdir: &Path, dir: &Path, runs: usize) -> Result<()> {
    let vmlinux = stage(&kdir.join("vmlinux"), dir)?;
    let initrd = lab_initrd(vmm, dir, INIT)?;
    let base: Vec<String> = [
        "--memory-mib",
        "256",
        "--serial",
        "stdout",
        "--kernel",
        &vmlinux.to_string_lossy(),
        "--initrd",
        &initrd.to_string_lossy(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // The template.
    let snap = dir.join("snap");
    let t0 = Instant::now();
    let mut c = spawn(
        vmm,
        &base,
        &["--snapshot-on-signal", &snap.to_string_lossy()],
    )?;
    until(&mut c, "CRX-WARM-READY", t0)?;
    let t1 = Instant::now();
    // SAFETY: kill(2) of our own child.
    unsafe { libc::kill(c.id() as i32, libc::SIGUSR1) };
    let st = c.wait()?;
    if !st.success() {
        bail!("the template's crx-vmm exited {st}");
    }
    let snap_ms = t1.elapsed().as_secs_f64() * 1e3;
    let (mut cold, mut warm) = (vec![], vec![]);
    for _ in 0..runs {
        let t0 = Instant::now();
        let mut c = spawn(vmm, &base, &[])?;
        cold.push(until(&mut c, "CRX-WARM-READY", t0)?);
        finish(c)?;
        let t0 = Instant::now();
        let mut c = spawn(vmm, &base, &["--restore", &snap.to_string_lossy()])?;
        if let Some(i) = c.stdin.as_mut() {
            i.write_all(b"go\n")?;
        }
        warm.push(until(&mut c, "CRX-WARM-GO", t0)?);
        let st = c.wait()?;
        if !st.success() {
            bail!("a restored crx-vmm exited {st}");
        }
    }
    let (cm, c9) = median_p90(cold);
    let (wm, w9) = median_p90(warm);
    println!(
        "lab warm: Linux guest, 256 MiB, 1 vCPU ({runs} runs each; template snapshot written in \
         {snap_ms:.0} ms)"
    );
    println!("cold: spawn -> booted guest ready      median {cm:>8.1} ms   p90 {c9:>8.1} ms");
    println!("warm: spawn -> restored guest answers  median {wm:>8.1} ms   p90 {w9:>8.1} ms");
    println!("cold/warm (medians)                    {:.1}", cm / wm);
    Ok(())
}
