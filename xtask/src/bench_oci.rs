//! `cargo xtask bench oci`: `create` + `start` + `delete` of a container running `true`
//! through `crx-runc`, next to Debian's `runc` and `crun` on the same bundle, alternating, in
//! the lab; then the host memory (PSS) of what stays alive for one idle `crx-runc` container
//! (monitor, crx-vmm, virtiofsd), split into guest RAM and the rest.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::guest_boot::{ms, percentile};
use crate::{bench_lab, cmd, virtiofsd, workspace_root};

/// Builds what the benchmark runs, and virtiofsd, then runs [`inner`] in the lab.
pub fn outer(runs: usize) -> Result<i32> {
    let virtiofsd = virtiofsd::ensure()?;
    let env = vec![(
        "CRX_VIRTIOFSD".into(),
        virtiofsd.to_string_lossy().into_owned(),
    )];
    bench_lab::outer("oci", runs, env)
}

/// The part that runs inside the lab.
pub fn inner(runs: usize) -> Result<()> {
    bench_lab::in_scratch("oci", runs, |work| measure(work, runs))
}

fn measure(work: &Path, runs: usize) -> Result<()> {
    let crx_runc = workspace_root().join("target/release/crx-runc");
    let runtimes: Vec<(&str, PathBuf)> = vec![
        ("crx-runc", crx_runc.clone()),
        ("runc", "runc".into()),
        ("crun", "crun".into()),
    ];
    let bundle = bundle(work, &["/bin/true"])?;
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); runtimes.len()];
    // One warm-up round, then `runs` measured rounds, alternating the runtimes.
    for round in 0..=runs {
        for (i, (name, bin)) in runtimes.iter().enumerate() {
            let root = work.join(format!("root-{name}"));
            let t = lifecycle(bin, &root, &bundle, &format!("b{round}"))
                .with_context(|| format!("{name}, round {round}"))?;
            if round > 0 {
                times[i].push(t);
            }
        }
    }
    println!(
        "create + start + delete of a container running `true`, same bundle (busybox rootfs), \
         {runs} runs each in the nested lab:"
    );
    let crx_median = percentile(&mut times[0].clone(), 50);
    for (i, (name, _)) in runtimes.iter().enumerate() {
        let median = percentile(&mut times[i], 50);
        println!(
            "  {name:<9} median {:>10}  p90 {:>10}  crx-runc/{name} {:.2}",
            ms(median),
            ms(percentile(&mut times[i], 90)),
            crx_median.as_secs_f64() / median.as_secs_f64().max(1e-9)
        );
    }
    idle_memory(&crx_runc, work)
}

/// `create`, `start`, wait until `stopped`, `delete`: the wall time of the whole.
fn lifecycle(bin: &Path, root: &Path, bundle: &Path, id: &str) -> Result<Duration> {
    let started = Instant::now();
    runtime(
        bin,
        root,
        &["create", "--bundle", &bundle.to_string_lossy(), id],
    )?;
    runtime(bin, root, &["start", id])?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let state = runtime(bin, root, &["state", id])?;
        let v: serde_json::Value = serde_json::from_str(&state)?;
        if v["status"] == "stopped" {
            break;
        }
        if Instant::now() > deadline {
            bail!("{id} did not stop within 120 s: {state}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    runtime(bin, root, &["delete", id])?;
    Ok(started.elapsed())
}

/// Runs `bin --root ROOT ARGS` and returns its stdout. Its stderr goes to a file, not a pipe:
/// `create` leaves processes behind (the container's init, crx-runc's monitor) that inherit
/// stdio, so waiting for a pipe's end would wait for the container.
fn runtime(bin: &Path, root: &Path, args: &[&str]) -> Result<String> {
    let log = root.with_extension("stderr");
    let mut c = Command::new(bin);
    c.arg("--root")
        .arg(root)
        .args(args)
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&log)?);
    let (status, stdout) = if args.first() == Some(&"state") {
        let out = c
            .output()
            .with_context(|| format!("running {}", bin.display()))?;
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    } else {
        let status = c
            .stdout(Stdio::null())
            .status()
            .with_context(|| format!("running {}", bin.display()))?;
        (status, String::new())
    };
    if !status.success() {
        bail!(
            "{} {}: {}",
            bin.display(),
            args.join(" "),
            std::fs::read_to_string(&log).unwrap_or_default().trim()
        );
    }
    Ok(stdout)
}

/// An OCI bundle whose rootfs is the lab's busybox-static, running `args`.
fn bundle(work: &Path, args: &[&str]) -> Result<PathBuf> {
    let bundle = work.join(format!("bundle-{}", args.len()));
    let bin = bundle.join("rootfs/bin");
    std::fs::create_dir_all(&bin)?;
    std::fs::copy("/bin/busybox", bin.join("busybox")).context("copying /bin/busybox")?;
    for applet in ["true", "sleep", "sh"] {
        std::os::unix::fs::symlink("busybox", bin.join(applet))?;
    }
    cmd::run(
        Command::new("runc")
            .args(["spec"])
            .current_dir(&bundle)
            .stdout(Stdio::null()),
    )?;
    let path = bundle.join("config.json");
    let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    spec["process"]["terminal"] = false.into();
    spec["process"]["args"] = serde_json::json!(args);
    std::fs::write(&path, serde_json::to_vec_pretty(&spec)?)?;
    Ok(bundle)
}

/// PSS of the host processes of one idle crx-runc container (`sleep`), in KiB.
fn idle_memory(crx_runc: &Path, work: &Path) -> Result<()> {
    let bundle = bundle(work, &["/bin/sleep", "1000"])?;
    let root = work.join("root-idle");
    let id = "idle";
    runtime(
        crx_runc,
        &root,
        &["create", "--bundle", &bundle.to_string_lossy(), id],
    )?;
    runtime(crx_runc, &root, &["start", id])?;
    std::thread::sleep(Duration::from_secs(3));
    let state: serde_json::Value =
        serde_json::from_str(&runtime(crx_runc, &root, &["state", id])?)?;
    let monitor = state["pid"].as_u64().context("state has no pid")? as u32;
    let pids = tree(monitor);
    println!("host memory of one idle crx-runc container (PSS, KiB):");
    let (mut rest, mut ram) = (0, 0);
    for pid in &pids {
        let (r, g) = pss(*pid)?;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        println!(
            "  {:<16} pid {pid:>6}: outside guest RAM {r:>7}, guest RAM {g:>7}",
            comm.trim()
        );
        rest += r;
        ram += g;
    }
    println!(
        "  total: outside guest RAM {rest} KiB ({:.1} MiB), guest RAM {ram} KiB",
        rest as f64 / 1024.0
    );
    runtime(crx_runc, &root, &["delete", "--force", id])?;
    Ok(())
}

/// `root` and its descendants.
fn tree(root: u32) -> Vec<u32> {
    let mut parents = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let ppid = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            parents.push((pid, ppid));
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        out.extend(parents.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    out
}

/// (PSS outside guest RAM, PSS of guest RAM) of `pid` in KiB, from /proc/PID/smaps: guest RAM
/// is the `crx-guest-ram` memfd (crx-vmm and virtiofsd map it).
fn pss(pid: u32) -> Result<(u64, u64)> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))
        .with_context(|| format!("/proc/{pid}/smaps"))?;
    let (mut rest, mut ram) = (0, 0);
    let mut in_ram = false;
    for line in smaps.lines() {
        if let Some(kb) = line.strip_prefix("Pss:") {
            let kb: u64 = kb.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
            if in_ram {
                ram += kb;
            } else {
                rest += kb;
            }
        } else if looks_like_header(line) {
            in_ram = line.contains("crx-guest-ram");
        }
    }
    Ok((rest, ram))
}

/// A mapping header: `start-end perms offset dev inode [path]`.
fn looks_like_header(line: &str) -> bool {
    let mut f = line.split_whitespace();
    matches!((f.next(), f.next()), (Some(range), Some(perms))
        if range.contains('-') && range.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
            && perms.len() == 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smaps_headers_are_told_from_fields() {
        assert!(looks_like_header(
            "7f0000000000-7f0010000000 rw-s 00000000 00:01 5 /memfd:crx-guest-ram (deleted)"
        ));
        assert!(looks_like_header(
            "55d0c0a00000-55d0c0a21000 rw-p 00000000 00:00 0 [heap]"
        ));
        assert!(!looks_like_header("Pss:                 120 kB"));
        assert!(!looks_like_header("VmFlags: rd wr mr mw me ac sd"));
    }

    #[test]
    fn our_own_pss_is_counted_outside_guest_ram() {
        let (rest, ram) = pss(std::process::id()).unwrap();
        assert!(rest > 0);
        assert_eq!(ram, 0);
    }
}
