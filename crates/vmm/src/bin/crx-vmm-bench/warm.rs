//! `crx-vmm-bench --warm`: a restore against a cold start of the same tiny guest, runs
//! interleaved. The guest writes boot-timer code 1 as its first instruction, then the snapshot
//! port, then code 2: a cold run's first line is code 1 (its first instruction), a run restored
//! from the snapshot taken at the port writes code 2 as its first instruction after the restore.
//! Both are timed from the VMM's `main` (the line's `t=`) and from the parent's `spawn()` (the
//! process start, exec and dynamic loading included) to reading that line.

use std::path::Path;
use std::process::Stdio;

use anyhow::{bail, Result};

use super::{first_entry_once, kernel, median_p90, summary};

/// `mov $0x440,%dx; mov $1,%al; out %al,(%dx); mov $0x4f0,%dx; out %al,(%dx);
/// mov $0x440,%dx; mov $2,%al; out %al,(%dx); mov $0xfe,%al; out %al,$0x64; 1: hlt; jmp 1b`
const WARM: &[u8] = &[
    0x66, 0xba, 0x40, 0x04, 0xb0, 0x01, 0xee, 0x66, 0xba, 0xf0, 0x04, 0xee, 0x66, 0xba, 0x40, 0x04,
    0xb0, 0x02, 0xee, 0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfd,
];

/// The snapshot port the guest writes.
const PORT: &str = "0x4f0";

/// Takes the snapshot once, then `runs` cold starts and restores, interleaved.
pub fn run(vmm: &Path, dir: &Path, runs: usize) -> Result<()> {
    let k = kernel(dir, "warm", WARM)?;
    let snap = dir.join("snap");
    let out = super::tiny_vm(vmm, &k, 64)
        .args(["--snapshot-on-port", PORT])
        .arg(&snap)
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        bail!(
            "taking the snapshot failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let snap_arg = snap.to_string_lossy().into_owned();
    let (mut cold, mut cold_spawn, mut warm, mut warm_spawn) = (vec![], vec![], vec![], vec![]);
    for _ in 0..runs {
        let (t, line, _) = first_entry_once(vmm, &k, &[], 1)?;
        cold.push(t);
        cold_spawn.push(line);
        let (t, line, _) = first_entry_once(vmm, &k, &["--restore", &snap_arg], 2)?;
        warm.push(t);
        warm_spawn.push(line);
    }
    let ratio = median_p90(cold_spawn.clone()).0 / median_p90(warm_spawn.clone()).0;
    summary("cold: VMM main() -> first instruction", cold);
    summary("cold: spawn() -> first instruction seen", cold_spawn);
    summary("restore: VMM main() -> first instruction", warm);
    summary("restore: spawn() -> first instruction seen", warm_spawn);
    println!("{:<44} {ratio:.2}", "cold/restore (spawn medians)");
    Ok(())
}
