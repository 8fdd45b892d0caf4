//! `cargo xtask bench confine`: what each layer of the VMM's host confinement costs a
//! `crx run --rm busybox true` (issue 16; ADR 0010, 0011): the default (the jail, its cgroup,
//! seccomp) next to the same run with `CRX_SECCOMP=0`, with `CRX_JAIL=0`, and with both,
//! alternating the four N times in the lab (after one warm-up each), so that load changes hit
//! all alike. Each layer's cost is the default's median minus the median without that layer,
//! as a share of the unconfined run's. `CRX_JAIL=0` and `CRX_SECCOMP=0` are debugging knobs.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::bench_lab;
use crate::guest_boot::{ms, percentile};

/// The variants measured: a name and the environment that makes it.
pub const VARIANTS: [(&str, &[(&str, &str)]); 4] = [
    ("jail + cgroup + seccomp (default)", &[]),
    ("jail + cgroup, no seccomp", &[("CRX_SECCOMP", "0")]),
    ("seccomp, no jail", &[("CRX_JAIL", "0")]),
    ("neither", &[("CRX_JAIL", "0"), ("CRX_SECCOMP", "0")]),
];

/// Builds what the benchmark runs and runs [`inner`] in the lab.
pub fn outer(runs: usize) -> Result<i32> {
    bench_lab::outer("confine", runs, Vec::new())
}

/// The part that runs inside the lab.
pub fn inner(runs: usize) -> Result<()> {
    bench_lab::in_scratch("confine", runs, |work| measure(work, runs))
}

fn measure(work: &Path, runs: usize) -> Result<()> {
    let (crx, root) = bench_lab::crx_with_busybox(work)?;
    let crx = crx.as_path();
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); VARIANTS.len()];
    for round in 0..=runs {
        for (i, (name, env)) in VARIANTS.iter().enumerate() {
            let t = run_once(crx, &root, env).with_context(|| format!("{name}, round {round}"))?;
            if round > 0 {
                times[i].push(t);
            }
        }
    }
    let medians: Vec<Duration> = times.iter_mut().map(|t| percentile(t, 50)).collect();
    println!(
        "crx run --rm busybox true, {runs} runs of each variant alternating, in the nested lab \
         (image cached):"
    );
    for (i, (name, _)) in VARIANTS.iter().enumerate() {
        println!(
            "  {name:<36} median {:>10}  p90 {:>10}",
            ms(medians[i]),
            ms(percentile(&mut times[i], 90))
        );
    }
    let base = medians[3].as_secs_f64().max(1e-9);
    for (layer, without) in [("seccomp", 1), ("jail + cgroup", 2), ("all layers", 3)] {
        let added = medians[0].as_secs_f64() - medians[without].as_secs_f64();
        println!(
            "  {:<36} {:>+9.1} ms  ({:+.1}% of the unconfined run)",
            format!("added by {layer}"),
            added * 1000.0,
            100.0 * added / base
        );
    }
    Ok(())
}

/// One `crx run --rm busybox true` with `env`: its wall time.
fn run_once(crx: &Path, root: &Path, env: &[(&str, &str)]) -> Result<Duration> {
    let started = Instant::now();
    let out = Command::new(crx)
        .arg("--root")
        .arg(root)
        .args(["run", "--rm", "busybox", "true"])
        .env_remove("CRX_JAIL")
        .env_remove("CRX_SECCOMP")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .context("running crx")?;
    let wall = started.elapsed();
    if !out.status.success() {
        bail!(
            "crx run failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(wall)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_variants_turn_off_one_layer_each_then_both() {
        assert!(VARIANTS[0].1.is_empty());
        assert_eq!(VARIANTS[1].1, [("CRX_SECCOMP", "0")]);
        assert_eq!(VARIANTS[2].1, [("CRX_JAIL", "0")]);
        assert_eq!(VARIANTS[3].1.len(), 2);
    }
}
