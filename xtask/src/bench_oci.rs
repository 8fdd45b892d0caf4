//! `cargo xtask bench oci`: `create` + `start` + `delete` of a container running `true`
//! through `crx-runc`, next to Debian's `runc` and `crun` on the same bundle, alternating, in
//! the lab; then the host memory (PSS) of what stays alive for an idle `crx-runc` container
//! (monitor, crx-vmm, virtiofsd), split into guest RAM and the rest: one alone, and the
//! average of several side by side.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::guest_boot::{ms, percentile};
use crate::{bench_lab, cmd, virtiofsd, workspace_root};

/// Builds what the benchmark runs, and virtiofsd, then runs [`inner`] in the lab.
/// `CRX_BENCH_OCI_ALSO=NAME=PATH[,NAME=PATH]` adds runtimes to the comparison (another
/// build of crx-runc, say: the same lab session is the only fair baseline).
pub fn outer(runs: usize) -> Result<i32> {
    let virtiofsd = virtiofsd::ensure()?;
    let mut env = vec![(
        "CRX_VIRTIOFSD".into(),
        virtiofsd.to_string_lossy().into_owned(),
    )];
    if let Ok(also) = std::env::var(ALSO) {
        env.push((ALSO.into(), also));
    }
    bench_lab::outer("oci", runs, env)
}

/// The variable naming extra runtimes to compare.
const ALSO: &str = "CRX_BENCH_OCI_ALSO";

/// The extra runtimes `CRX_BENCH_OCI_ALSO` names (`NAME=PATH`, comma-separated).
fn also() -> Vec<(String, PathBuf)> {
    let list = std::env::var(ALSO).unwrap_or_default();
    list.split(',')
        .filter_map(|e| e.split_once('='))
        .map(|(name, path)| (name.to_owned(), PathBuf::from(path)))
        .collect()
}

/// The part that runs inside the lab.
pub fn inner(runs: usize) -> Result<()> {
    bench_lab::in_scratch("oci", runs, |work| measure(work, runs))
}

fn measure(work: &Path, runs: usize) -> Result<()> {
    let crx_runc = workspace_root().join("target/release/crx-runc");
    let mut runtimes: Vec<(String, PathBuf)> = vec![
        ("crx-runc".into(), crx_runc.clone()),
        ("runc".into(), "runc".into()),
        ("crun".into(), "crun".into()),
    ];
    runtimes.extend(also());
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
    create_and_start(bin, root, bundle, id)?;
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

/// `create` then `start` of container `id` from `bundle`.
fn create_and_start(bin: &Path, root: &Path, bundle: &Path, id: &str) -> Result<()> {
    runtime(
        bin,
        root,
        &["create", "--bundle", &bundle.to_string_lossy(), id],
    )?;
    runtime(bin, root, &["start", id])?;
    Ok(())
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

/// How many idle containers run side by side for the per-container average.
const SIDE_BY_SIDE: usize = 4;

/// PSS of the host processes of idle crx-runc containers (`sleep`), in KiB: one container alone
/// (every shared page of the binaries charged to it), broken down by process, mapping kind and
/// the largest mappings; then [`SIDE_BY_SIDE`] containers at once, whose average is what each
/// costs on a host that runs many (the binaries' pages are shared through the page cache).
fn idle_memory(crx_runc: &Path, work: &Path) -> Result<()> {
    let bundle = bundle(work, &["/bin/sleep", "1000"])?;
    let root = work.join("root-idle");
    let ids: Vec<String> = (0..SIDE_BY_SIDE).map(|i| format!("idle{i}")).collect();
    let monitor = start_idle(crx_runc, &root, &bundle, &ids[0])?;
    println!("host memory of one idle crx-runc container (PSS, KiB):");
    let mut total = Usage::default();
    for pid in tree(monitor) {
        let u = pss(pid)?;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        println!(
            "  {:<16} pid {pid:>6}: outside guest RAM {:>6} (files {:>6}, anonymous {:>6}), guest RAM {:>7}",
            comm.trim(),
            u.files + u.anon,
            u.files,
            u.anon,
            u.ram
        );
        for (kb, name) in &u.largest {
            println!("      {kb:>6}  {name}");
        }
        total.add(&u);
    }
    println!(
        "  total: outside guest RAM {} KiB ({:.1} MiB; files {}, anonymous {}), guest RAM {} KiB",
        total.files + total.anon,
        (total.files + total.anon) as f64 / 1024.0,
        total.files,
        total.anon,
        total.ram
    );
    let mut monitors = vec![monitor];
    for id in &ids[1..] {
        monitors.push(start_idle(crx_runc, &root, &bundle, id)?);
    }
    let mut all = Usage::default();
    for m in &monitors {
        for pid in tree(*m) {
            all.add(&pss(pid)?);
        }
    }
    let n = SIDE_BY_SIDE as u64;
    println!(
        "{SIDE_BY_SIDE} idle crx-runc containers at once: outside guest RAM {} KiB in all, \
         {} KiB ({:.1} MiB) per container (files {}, anonymous {})",
        all.files + all.anon,
        (all.files + all.anon) / n,
        (all.files + all.anon) as f64 / n as f64 / 1024.0,
        all.files / n,
        all.anon / n
    );
    // What each container past the first adds (the first paid for the binaries' pages).
    let (alone, together) = (total.files + total.anon, all.files + all.anon);
    println!(
        "  each container after the first adds {} KiB ({:.1} MiB)",
        together.saturating_sub(alone) / (n - 1),
        together.saturating_sub(alone) as f64 / (n - 1) as f64 / 1024.0
    );
    for id in &ids {
        runtime(crx_runc, &root, &["delete", "--force", id])?;
    }
    Ok(())
}

/// Creates and starts idle container `id`; returns its monitor's pid once it has settled.
fn start_idle(crx_runc: &Path, root: &Path, bundle: &Path, id: &str) -> Result<u32> {
    create_and_start(crx_runc, root, bundle, id)?;
    std::thread::sleep(Duration::from_secs(3));
    let state: serde_json::Value = serde_json::from_str(&runtime(crx_runc, root, &["state", id])?)?;
    Ok(state["pid"].as_u64().context("state has no pid")? as u32)
}

/// `root` and its descendants.
pub(crate) fn tree(root: u32) -> Vec<u32> {
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

/// One process's PSS in KiB, from /proc/PID/smaps.
#[derive(Debug, Default)]
pub(crate) struct Usage {
    /// Mappings of files other than guest RAM: binaries and libraries, mostly shared.
    pub(crate) files: u64,
    /// Anonymous mappings: heap, stacks, private copies.
    pub(crate) anon: u64,
    /// The guest RAM memfd (`crx-guest-ram`, mapped by crx-vmm and virtiofsd).
    pub(crate) ram: u64,
    /// The largest mappings outside guest RAM: (KiB, name), largest first.
    largest: Vec<(u64, String)>,
}

impl Usage {
    pub(crate) fn add(&mut self, o: &Usage) {
        self.files += o.files;
        self.anon += o.anon;
        self.ram += o.ram;
    }
}

pub(crate) fn pss(pid: u32) -> Result<Usage> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))
        .with_context(|| format!("/proc/{pid}/smaps"))?;
    let mut u = Usage::default();
    let mut mappings: Vec<(u64, String)> = Vec::new();
    let mut name = String::new();
    for line in smaps.lines() {
        if let Some(kb) = line.strip_prefix("Pss:") {
            let kb: u64 = kb.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
            if name.contains("crx-guest-ram") {
                u.ram += kb;
                continue;
            }
            if name.starts_with('/') {
                u.files += kb;
            } else {
                u.anon += kb;
            }
            match mappings.iter_mut().find(|(_, n)| *n == name) {
                Some(m) => m.0 += kb,
                None => mappings.push((kb, name.clone())),
            }
        } else if looks_like_header(line) {
            let path = line.split_whitespace().nth(5).unwrap_or("");
            name = if path.is_empty() {
                "[anon]".into()
            } else {
                path.into()
            };
        }
    }
    mappings.sort_by_key(|m| std::cmp::Reverse(m.0));
    mappings.truncate(4);
    u.largest = mappings;
    Ok(u)
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
        let u = pss(std::process::id()).unwrap();
        assert!(u.files > 0 && u.anon > 0);
        assert_eq!(u.ram, 0);
        assert!(u.largest.len() <= 4 && u.largest[0].0 >= u.largest.last().unwrap().0);
    }
}
