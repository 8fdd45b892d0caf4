//! `cargo xtask bench pod`: Kubernetes pods through containerd's CRI plugin (issue 15), the
//! `crx` runtime handler (containerd-shim-crx-v2: one microVM per pod) next to the `runc`
//! handler, alternating, in the lab, with the CRI harness of the tests
//! (`crx_testkit::cri_env`): RunPodSandbox -> the first container running (its latency), and
//! the host memory (PSS) of the pod's runtime processes once its containers run, for pods of
//! 1 and of 3 containers. The crx pod's processes are its shim and everything under it (VMM,
//! virtiofsd), guest RAM counted apart; runc's are its shim and the pause process.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use crx_testkit::cri::{container_config, pod_config, Cri};
use crx_testkit::cri_env::CriLab;
use crx_testkit::cri_images::BUSYBOX_IMAGE;
use k8s_cri::v1::ContainerState;

use crate::bench_oci::{pss, tree, Usage};
use crate::guest_boot::{ms, percentile};
use crate::{bench_lab, virtiofsd, workspace_root};

/// The handlers compared, crx first (the ratios are crx / runc).
const HANDLERS: [&str; 2] = ["crx", "runc"];
/// The pod sizes measured (containers per pod).
const SIZES: [usize; 2] = [1, 3];
/// The containers' command: idle, and told from the pause process (`sleep 2147483647`).
const IDLE: [&str; 2] = ["sleep", "999999"];

/// Builds the shim and what the crx handler runs, then runs [`inner`] in the lab.
pub fn outer(runs: usize) -> Result<i32> {
    bench_lab::build_release(&["containerd-shim-crx-v2"])?;
    let virtiofsd = virtiofsd::ensure()?;
    let env = vec![(
        "CRX_VIRTIOFSD".into(),
        virtiofsd.to_string_lossy().into_owned(),
    )];
    bench_lab::outer("pod", runs, env)
}

/// The part that runs inside the lab.
pub fn inner(runs: usize) -> Result<()> {
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let shim = workspace_root().join("target/release/containerd-shim-crx-v2");
    let lab = CriLab::start(Some(&shim));
    let mut cri = lab.client();
    cri.pull(BUSYBOX_IMAGE)?;
    let mut figures: Vec<Figures> = Vec::new();
    for (h, handler) in HANDLERS.iter().enumerate() {
        for (s, size) in SIZES.iter().enumerate() {
            figures.push(Figures::new(handler, *size));
            debug_assert_eq!(figures.len() - 1, h * SIZES.len() + s);
        }
    }
    // One warm-up round, then `runs` measured ones, alternating handlers and sizes. A
    // handler that fails a pod is reported and left out of the remaining rounds.
    let mut failed: Vec<(&str, String)> = Vec::new();
    for round in 0..=runs {
        for f in figures.iter_mut() {
            if failed.iter().any(|(h, _)| *h == f.handler) {
                continue;
            }
            match one_pod(&lab, &mut cri, f.handler, f.size, round) {
                Ok((latency, usage)) if round > 0 => {
                    f.latency.push(latency);
                    f.outside_ram.push(usage.files + usage.anon);
                    f.guest_ram.push(usage.ram);
                }
                Ok(_) => {}
                Err(e) => failed.push((
                    f.handler,
                    format!("pod of {}, round {round}: {e:#}", f.size),
                )),
            }
        }
    }
    figures.retain(|f| !f.latency.is_empty());
    report(&mut figures, runs);
    for (handler, e) in &failed {
        println!("  {handler} FAILED: {e}");
    }
    if !failed.is_empty() {
        bail!("{} handler(s) failed", failed.len());
    }
    Ok(())
}

/// One configuration's measurements.
struct Figures {
    handler: &'static str,
    size: usize,
    latency: Vec<Duration>,
    /// KiB per run.
    outside_ram: Vec<u64>,
    guest_ram: Vec<u64>,
}

impl Figures {
    fn new(handler: &'static str, size: usize) -> Figures {
        Figures {
            handler,
            size,
            latency: Vec::new(),
            outside_ram: Vec::new(),
            guest_ram: Vec::new(),
        }
    }
}

fn report(figures: &mut [Figures], runs: usize) {
    println!(
        "Kubernetes pods through containerd 1.6's CRI plugin, {runs} runs each (after one \
         warm-up) in the nested lab; memory is PSS of the pod's host processes once its \
         containers run:"
    );
    for f in figures.iter_mut() {
        println!(
            "  {:<4} pod of {}: RunPodSandbox -> first container running median {:>10} p90 {:>10}; \
             host memory outside guest RAM median {:>6} KiB ({:.1} MiB), guest RAM {:>7} KiB",
            f.handler,
            f.size,
            ms(percentile(&mut f.latency, 50)),
            ms(percentile(&mut f.latency, 90)),
            median(&mut f.outside_ram),
            median(&mut f.outside_ram) as f64 / 1024.0,
            median(&mut f.guest_ram),
        );
    }
    for size in SIZES {
        let find = |h: &str| {
            figures
                .iter()
                .position(|f| f.handler == h && f.size == size)
        };
        let (Some(crx), Some(runc)) = (find("crx"), find("runc")) else {
            continue;
        };
        let lat = |i: usize, f: &mut [Figures]| percentile(&mut f[i].latency, 50).as_secs_f64();
        let mem = |i: usize, f: &mut [Figures]| median(&mut f[i].outside_ram) as f64;
        println!(
            "  pod of {size}: crx/runc latency {:.2}, host memory outside guest RAM {:.2}",
            lat(crx, figures) / lat(runc, figures).max(1e-9),
            mem(crx, figures) / mem(runc, figures).max(1.0)
        );
    }
}

fn median(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    v.get(v.len().saturating_sub(1) / 2).copied().unwrap_or(0)
}

/// Runs a pod of `size` idle containers with `handler`: the time from RunPodSandbox to its
/// first container running, and the PSS of its host processes; then removes it.
fn one_pod(
    lab: &CriLab,
    cri: &mut Cri,
    handler: &str,
    size: usize,
    round: usize,
) -> Result<(Duration, Usage)> {
    let name = format!("b{size}-{round}");
    let uid = format!("{name}-{handler}");
    let log_dir = lab.logs.join(&uid);
    std::fs::create_dir_all(&log_dir)?;
    let config = pod_config(&name, &uid, &name, &log_dir, &[]);
    let started = Instant::now();
    let pod = cri.run_pod(&config, handler)?;
    let mut first = None;
    for i in 0..size {
        let c = container_config(&format!("c{i}"), BUSYBOX_IMAGE, &IDLE, &[]);
        let id = cri.create(&pod, c, &config)?;
        cri.start(&id)?;
        let s = cri.wait_state(
            &id,
            ContainerState::ContainerRunning,
            Duration::from_secs(120),
        )?;
        if s.state != ContainerState::ContainerRunning as i32 {
            bail!("container {i} is not running: {s:?}");
        }
        first.get_or_insert(started.elapsed());
    }
    // Let start-up's transient allocations settle, as an idle pod would, and the crx shim
    // trim the pod a second after its last start (crx_runtime::trim::SETTLE).
    std::thread::sleep(Duration::from_secs(3));
    let usage = pod_memory(&pod)?;
    cri.stop_and_remove_pod(&pod)?;
    Ok((first.expect("size >= 1"), usage))
}

/// The PSS of pod `pod`'s host processes: its shim (the one whose command line names the
/// pod's id) and the shim's descendants but the containers' own processes ([`IDLE`]).
fn pod_memory(pod: &str) -> Result<Usage> {
    let shim = shim_of(pod)?;
    let mut total = Usage::default();
    for pid in tree(shim) {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if cmdline == [IDLE[0], "\0", IDLE[1], "\0"].concat().as_bytes() {
            continue;
        }
        total.add(&pss(pid)?);
    }
    Ok(total)
}

/// The shim process serving pod `pod`: `containerd-shim-* ... -id POD ...`.
fn shim_of(pod: &str) -> Result<u32> {
    for e in std::fs::read_dir("/proc")?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_shim = args
            .first()
            .and_then(|a| Path::new(std::str::from_utf8(a).ok()?).file_name())
            .is_some_and(|n| n.to_string_lossy().starts_with("containerd-shim"));
        if is_shim
            && args
                .windows(2)
                .any(|w| w[0] == b"-id" && w[1] == pod.as_bytes())
        {
            return Ok(pid);
        }
    }
    bail!("no shim process names pod {pod}")
}
