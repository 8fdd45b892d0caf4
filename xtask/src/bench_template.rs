//! The runtime half of `cargo xtask bench warm` (inside the lab, after `crx-vmm-bench
//! --lab-warm`): `crx run --rm --network none busybox true` booted cold (`--cold`) against
//! restored from its template (ADR 0017) against `runc run` of the same rootfs, alternated N
//! times after one warm-up each (the warm-up builds the template); then the host memory (PSS)
//! of 10 idle sandboxes restored from one template against 10 booted cold.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::bench_run::{runc_bundle, runc_once};
use crate::guest_boot::{ms, percentile};
use crate::{bench_lab, cmd};

/// The inner half: runs in the lab.
pub fn inner(runs: usize) -> Result<()> {
    bench_lab::in_scratch("warm", runs, |work| measure(work, runs))
}

fn measure(work: &Path, runs: usize) -> Result<()> {
    let (crx, root) = bench_lab::crx_with_busybox(work)?;
    let templates = work.join("templates");
    let bundle = runc_bundle(work)?;
    let run = |cold: bool| crx_run(&crx, &root, &templates, cold);
    run(true)?;
    run(false)?;
    runc_once(&bundle, 0)?;
    let (mut cold, mut warm, mut runc) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        cold.push(run(true)?);
        warm.push(run(false)?);
        runc.push(runc_once(&bundle, i + 1)?);
    }
    let row = |name: &str, v: &mut Vec<Duration>| {
        println!(
            "  {name:<44} median {:>10} p90 {:>10}",
            ms(percentile(v, 50)),
            ms(percentile(v, 90))
        );
        percentile(v, 50).as_secs_f64().max(1e-9)
    };
    println!("crx run --rm --network none busybox true, {runs} runs each, alternated:");
    let c = row("cold (--cold: kernel boot)", &mut cold);
    let w = row("warm (restored from the template)", &mut warm);
    let r = row("runc run (same busybox rootfs)", &mut runc);
    println!(
        "  cold/warm {:.2} (target >= 5); warm/runc {:.2}",
        c / w,
        w / r
    );
    for (label, cold) in [("restored from one template", false), ("booted cold", true)] {
        let per = idle_pss(&crx, &root, &templates, cold)?;
        println!(
            "  PSS of 10 idle sandboxes {label}: {per:.1} MiB per sandbox (crx-vmm processes)"
        );
    }
    Ok(())
}

fn crx_cmd(crx: &Path, root: &Path, templates: &Path, cold: bool) -> Command {
    let mut c = Command::new(crx);
    c.arg("--root")
        .arg(root)
        .env("CRX_TEMPLATE_DIR", templates)
        .env("CRX_TEMPLATES", "1")
        .env_remove("CRX_TRACE")
        .stdin(Stdio::null());
    if cold {
        c.env("CRX_COLD", "1");
    } else {
        c.env_remove("CRX_COLD");
    }
    c
}

/// One `crx run --rm --network none busybox true`, its wall time.
fn crx_run(crx: &Path, root: &Path, templates: &Path, cold: bool) -> Result<Duration> {
    let started = Instant::now();
    let out = crx_cmd(crx, root, templates, cold)
        .args(["run", "--rm", "--network", "none", "busybox", "true"])
        .output()
        .context("running crx")?;
    if !out.status.success() {
        bail!("crx run failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(started.elapsed())
}

/// Starts 10 idle sandboxes, lets them settle, sums the PSS of every crx-vmm process (MiB per
/// sandbox), removes them.
fn idle_pss(crx: &Path, root: &Path, templates: &Path, cold: bool) -> Result<f64> {
    let names: Vec<String> = (0..10).map(|i| format!("pss{i}")).collect();
    for n in &names {
        cmd::run(
            crx_cmd(crx, root, templates, cold)
                .args(["run", "-d", "--network", "none", "--name", n])
                .args(["busybox", "sleep", "3600"])
                .stdout(Stdio::null()),
        )?;
    }
    std::thread::sleep(Duration::from_secs(5));
    let kib: u64 = vmm_pids()?.into_iter().map(pss_kib).sum();
    for n in &names {
        cmd::run(
            crx_cmd(crx, root, templates, cold)
                .args(["rm", "-f", n])
                .stdout(Stdio::null()),
        )?;
    }
    Ok(kib as f64 / 1024.0 / names.len() as f64)
}

/// The pids of the running crx-vmm processes.
fn vmm_pids() -> Result<Vec<u32>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if comm.trim() == "crx-vmm" {
            out.push(pid);
        }
    }
    Ok(out)
}

/// A process's PSS in KiB (`smaps_rollup`), 0 once it is gone.
fn pss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
