//! Booting the guest kernel under QEMU (TCG on the host, KVM inside the lab) to a trivial
//! busybox init that reports its uptime: the guest kernel's boot baseline, and the reference
//! crx-vmm is compared with.

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::kernel::{self, Flavor};
use crate::{apt, cache};

const MARKER: &str = "CRX-GUEST-INIT uptime=";

const INIT: &str = "#!/bin/busybox sh\n\
/bin/busybox mount -t proc proc /proc\n\
read up idle < /proc/uptime\n\
echo \"CRX-GUEST-INIT uptime=$up\"\n\
/bin/busybox reboot -f\n";

/// One boot: wall time from starting QEMU to init's first line, and the guest's own uptime
/// when init ran (kernel start to init, by the guest clock).
#[derive(Debug, Clone, Copy)]
pub struct Boot {
    pub wall: Duration,
    pub guest_uptime: Duration,
}

/// A cpio initrd holding busybox-static and the trivial init above, cached.
pub fn busybox_initrd() -> Result<PathBuf> {
    apt::ensure(&["busybox-static", "cpio"])?;
    let busybox = fs::read("/bin/busybox").context("reading /bin/busybox (busybox-static)")?;
    let dir = cache::root().join("initrd");
    let path = dir.join(format!(
        "busybox-init-{}.cpio",
        cache::key([INIT.as_bytes(), &busybox])
    ));
    if path.exists() {
        return Ok(path);
    }
    fs::create_dir_all(&dir)?;
    let staging = cache::staging_dir(&path.with_extension("tree"))?;
    for d in ["bin", "proc", "dev"] {
        fs::create_dir_all(staging.join(d))?;
    }
    fs::write(staging.join("bin/busybox"), &busybox)?;
    fs::write(staging.join("init"), INIT)?;
    for f in ["bin/busybox", "init"] {
        fs::set_permissions(staging.join(f), fs::Permissions::from_mode(0o755))?;
    }
    let tmp = path.with_extension("partial");
    let list = "bin\nbin/busybox\ndev\ninit\nproc\n";
    let mut child = Command::new("cpio")
        .args([
            "--quiet",
            "-o",
            "-H",
            "newc",
            "--reproducible",
            "-R",
            "0:0",
            "-O",
        ])
        .arg(&tmp)
        .current_dir(&staging)
        .stdin(Stdio::piped())
        .spawn()
        .context("starting cpio")?;
    std::io::Write::write_all(child.stdin.as_mut().context("cpio stdin")?, list.as_bytes())?;
    drop(child.stdin.take());
    if !child.wait()?.success() {
        bail!("cpio failed to pack the busybox initrd");
    }
    fs::remove_dir_all(&staging)?;
    fs::rename(&tmp, &path)?;
    Ok(path)
}

/// Boots the guest kernel once under QEMU microvm with `accel` ("tcg" or "kvm").
pub fn boot_once(bzimage: &Path, initrd: &Path, accel: &str) -> Result<Boot> {
    let cpu = if accel == "kvm" { "host" } else { "max" };
    let started = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args(crate::lab::MICROVM)
        .args(["-accel", accel, "-cpu", cpu, "-m", "256M", "-smp", "1"])
        .arg("-kernel")
        .arg(bzimage)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 quiet reboot=t panic=-1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let stdout = child.stdout.take().context("qemu stdout")?;
    let mut found = None;
    let mut log = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        if let Some(up) = line.split(MARKER).nth(1) {
            let secs: f64 = up.trim().parse().context("parsing the guest's uptime")?;
            found = Some(Boot {
                wall: started.elapsed(),
                guest_uptime: Duration::from_secs_f64(secs),
            });
        } else {
            log.push(line);
        }
    }
    let status = child.wait()?;
    match found {
        Some(boot) => Ok(boot),
        None => bail!(
            "the guest never reached init (qemu: {status}); console:\n{}",
            log.join("\n")
        ),
    }
}

/// Boots `runs` times and prints median and p90 of both figures.
pub fn bench(runs: usize, accel: &str) -> Result<Vec<Boot>> {
    let kernel = kernel::ensure(Flavor::Guest)?;
    let initrd = busybox_initrd()?;
    let mut boots = Vec::new();
    for _ in 0..runs {
        boots.push(boot_once(&kernel.bzimage, &initrd, accel)?);
    }
    let mut wall: Vec<Duration> = boots.iter().map(|b| b.wall).collect();
    let mut up: Vec<Duration> = boots.iter().map(|b| b.guest_uptime).collect();
    println!(
        "guest kernel to init, QEMU microvm -accel {accel}, {runs} runs: guest uptime at init median {} p90 {}; wall (QEMU start to init) median {} p90 {}",
        ms(percentile(&mut up, 50)),
        ms(percentile(&mut up, 90)),
        ms(percentile(&mut wall, 50)),
        ms(percentile(&mut wall, 90)),
    );
    Ok(boots)
}

pub fn percentile(values: &mut [Duration], p: usize) -> Duration {
    values.sort();
    if values.is_empty() {
        return Duration::ZERO;
    }
    let idx = (values.len() * p)
        .div_ceil(100)
        .saturating_sub(1)
        .min(values.len() - 1);
    values[idx]
}

pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_picks_the_nearest_rank() {
        let mut v: Vec<Duration> = (1..=10).rev().map(Duration::from_millis).collect();
        assert_eq!(percentile(&mut v, 50), Duration::from_millis(5));
        assert_eq!(percentile(&mut v, 90), Duration::from_millis(9));
        assert_eq!(
            percentile(&mut [Duration::from_millis(3)], 90),
            Duration::from_millis(3)
        );
    }
}
