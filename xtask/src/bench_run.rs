//! `cargo xtask bench run`: the phases of a cold `crx run --rm --network none busybox true`
//! (image cached), next to `runc run` of the same rootfs (its spec's fresh network namespace:
//! loopback only, as `--network none`), both inside the lab in one invocation; and the wall
//! time of crx's default, the CNI bridge network (`crx0`: CNI ADD before the boot, DEL after).
//!
//! The outer half (on this host) builds release `crx` and `crx-vmm` and the boot artefacts,
//! then runs the inner half in the lab, where KVM boots Linux. The inner half loads the
//! offline busybox image, makes an OCI bundle of the same busybox for runc, warms both up
//! once, and then alternates the two N times, so that load changes hit both alike.
//! Phases come from `CRX_TRACE=1` (`crx-trace: PHASE +MS ms`, milliseconds since crx's
//! `main`); the boot-timer phases are the guest's own marks, read from the VMM's log.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::guest_boot::{ms, percentile};
use crate::{bench_lab, cmd};

/// Builds what the benchmark runs and runs [`inner`] in the lab.
pub fn outer(runs: usize) -> Result<i32> {
    bench_lab::outer("run", runs, Vec::new())
}

/// The part that runs inside the lab.
pub fn inner(runs: usize) -> Result<()> {
    bench_lab::in_scratch("run", runs, |work| measure(work, runs))
}

fn measure(work: &Path, runs: usize) -> Result<()> {
    let (crx, root) = bench_lab::crx_with_busybox(work)?;
    let crx = crx.as_path();
    let bundle = runc_bundle(work)?;

    // One warm-up of each (page cache, first-use costs), then alternate.
    crx_once(crx, &root, NONE)?;
    crx_once(crx, &root, BRIDGE)?;
    runc_once(&bundle, 0)?;
    let mut phases: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
    let mut order = Vec::new();
    let mut crx_wall = Vec::new();
    let mut runc_wall = Vec::new();
    let mut bridge_wall = Vec::new();
    for i in 0..runs {
        bridge_wall.push(crx_once(crx, &root, BRIDGE)?.0);
        let (wall, marks) = crx_once(crx, &root, NONE)?;
        crx_wall.push(wall);
        for (phase, at) in marks {
            if !order.contains(&phase) {
                order.push(phase.clone());
            }
            phases.entry(phase).or_default().push(at);
        }
        runc_wall.push(runc_once(&bundle, i + 1)?);
    }

    println!(
        "crx run --rm --network none busybox true, {runs} cold microVMs in the nested lab \
         (image cached):"
    );
    println!(
        "  {:<36} {:>10} {:>10}",
        "phase (since crx main)", "median", "p90"
    );
    for phase in &order {
        let v = phases
            .get_mut(phase)
            .map(Vec::as_mut_slice)
            .unwrap_or(&mut []);
        println!(
            "  {phase:<36} {:>10} {:>10}{}",
            ms(percentile(v, 50)),
            ms(percentile(v, 90)),
            if v.len() < runs {
                "  (not in every run)"
            } else {
                ""
            }
        );
    }
    let crx_med = percentile(&mut crx_wall, 50);
    let runc_med = percentile(&mut runc_wall, 50);
    println!(
        "  {:<36} {:>10} {:>10}",
        "end to end (wall)",
        ms(crx_med),
        ms(percentile(&mut crx_wall, 90))
    );
    let bridge_med = percentile(&mut bridge_wall, 50);
    println!(
        "crx run --rm busybox true (default CNI bridge network), {runs} runs: median {} p90 {} \
         (+{} for the network)",
        ms(bridge_med),
        ms(percentile(&mut bridge_wall, 90)),
        ms(bridge_med.saturating_sub(crx_med))
    );
    println!(
        "runc run of the same busybox rootfs, same lab, {runs} runs: median {} p90 {}",
        ms(runc_med),
        ms(percentile(&mut runc_wall, 90))
    );
    println!(
        "ratio crx/runc (medians): {:.2}",
        crx_med.as_secs_f64() / runc_med.as_secs_f64().max(1e-9)
    );
    Ok(())
}

/// `crx run`'s network options: none (like runc's bundle), and the default bridge.
const NONE: &[&str] = &["--network", "none"];
const BRIDGE: &[&str] = &[];

/// One `crx run --rm NET busybox true`: its wall time and its traced phases.
fn crx_once(crx: &Path, root: &Path, net: &[&str]) -> Result<(Duration, Vec<(String, Duration)>)> {
    let started = Instant::now();
    let out = Command::new(crx)
        .arg("--root")
        .arg(root)
        // Cold: templates (on by default) are `bench warm`'s to measure.
        .args(["run", "--rm", "--cold"])
        .args(net)
        .args(["busybox", "true"])
        .env("CRX_TRACE", "1")
        .stdin(Stdio::null())
        .output()
        .context("running crx")?;
    let wall = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("crx run failed ({}): {stderr}", out.status);
    }
    Ok((wall, trace_marks(&stderr)))
}

/// `crx-trace: PHASE +MS ms` lines, in order.
fn trace_marks(stderr: &str) -> Vec<(String, Duration)> {
    stderr
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("crx-trace: ")?;
            let (phase, t) = rest.rsplit_once(" +")?;
            let ms: f64 = t.strip_suffix(" ms")?.trim().parse().ok()?;
            Some((phase.to_string(), Duration::from_secs_f64(ms / 1000.0)))
        })
        .collect()
}

/// An OCI bundle whose rootfs is the lab's busybox-static, for `runc run`.
pub(crate) fn runc_bundle(work: &Path) -> Result<PathBuf> {
    let bundle = work.join("bundle");
    let bin = bundle.join("rootfs/bin");
    std::fs::create_dir_all(&bin)?;
    std::fs::copy("/bin/busybox", bin.join("busybox")).context("copying /bin/busybox")?;
    std::os::unix::fs::symlink("busybox", bin.join("true"))?;
    cmd::run(Command::new("runc").args(["spec"]).current_dir(&bundle))?;
    let path = bundle.join("config.json");
    let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    spec["process"]["terminal"] = false.into();
    spec["process"]["args"] = serde_json::json!(["/bin/true"]);
    std::fs::write(&path, serde_json::to_vec_pretty(&spec)?)?;
    Ok(bundle)
}

pub(crate) fn runc_once(bundle: &Path, i: usize) -> Result<Duration> {
    let started = Instant::now();
    let status = Command::new("runc")
        .args(["run", "--bundle"])
        .arg(bundle)
        .arg(format!("crx-bench-{}-{i}", std::process::id()))
        .stdin(Stdio::null())
        .status()
        .context("running runc")?;
    if !status.success() {
        bail!("runc run failed: {status}");
    }
    Ok(started.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_lines_parse_in_order() {
        let err = "crx-trace: cli start +0.4 ms\nnoise\ncrx-trace: kernel booted +6625.0 ms\n";
        let marks = trace_marks(err);
        assert_eq!(marks.len(), 2);
        assert_eq!(marks[0].0, "cli start");
        assert_eq!(
            marks[1],
            ("kernel booted".into(), Duration::from_millis(6625))
        );
    }
}
