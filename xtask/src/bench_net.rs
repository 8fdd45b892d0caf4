//! `cargo xtask bench net`: the network datapath, in the lab. TCP throughput for 10 s each way
//! (Debian's iperf3: the lab host against a server in the guest, `-R` for guest -> host) and
//! request/response latency (one byte there and back, many times, over one TCP connection to
//! busybox `nc -e cat`), for
//!
//! - a `crx-runc` container on podman's CNI network (crx-vmm's virtio-net over a tap, tc
//!   redirects from the veth; ADR 0015),
//! - a `runc` container on the same network (the veth itself: the ceiling),
//! - a QEMU VM of the same guest kernel with QEMU's user-space virtio-net on a tap
//!   (`-netdev tap,vhost=off`, `virtio-net-device` on `-M microvm`),
//! - QEMU on podman's CNI network attached the way crx-runc attaches a VM (`qemu-cni`: a
//!   runc container holds the namespace and its veth, a tap beside the veth, tc redirects both
//!   ways, the guest with the veth's MAC and address): the two devices on the path the
//!   containers' traffic takes,
//! - crx-vmm alone in QEMU's setup (the same kernel and initramfs, its virtio-net on a tap of
//!   its own): the two devices compared without the CNI path (veth, tc redirects, bridge) that
//!   only the containers' traffic crosses,
//!
//! in the same invocation, each serving from the same tree (busybox, iperf3 and its
//! libraries). Host CPU per GB moved is the busy time of all host CPUs (`/proc/stat`) over the
//! run divided by the bytes. Ratios are crx-vmm-tap's and crx-runc's over QEMU's. `--runs`
//! rounds, each target started, measured (one 10 s run per direction) and stopped in turn in
//! each; medians are printed and recorded in docs/benchmarks.md. `CRX_BENCH_NET_TARGETS`
//! (comma-separated names of [`TARGETS`]) measures only those, for a quicker comparison.
//! `CRX_BENCH_NET_BASELINE_VMM=PATH` (a crx-vmm built from another commit, under the workspace
//! so that the lab sees it) adds `crx-vmm-base`: that binary in crx-vmm-tap's setup, measured
//! in the same rounds, and the ratio of the two.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::guest_boot::percentile;
use crate::{bench_lab, cmd, virtiofsd, workspace_root};

/// Seconds of each iperf3 run.
const SECONDS: u32 = 10;
/// Round trips of the latency test.
const ROUND_TRIPS: usize = 2000;
/// The QEMU VM's tap and addresses.
const QEMU_TAP: &str = "crxbenchq0";
const QEMU_HOST: &str = "10.97.0.1";
const QEMU_GUEST: &str = "10.97.0.2";
/// crx-vmm's own tap and addresses (the same setup as QEMU's: the device alone, no CNI path).
const VMM_TAP: &str = "crxbenchc0";
const VMM_HOST: &str = "10.98.0.1";
const VMM_GUEST: &str = "10.98.0.2";
/// The tap beside the veth in the namespace of `qemu-cni`'s container.
const CNI_TAP: &str = "crxbenchn0";

/// Builds release crx-runc (and what every lab bench needs), then runs [`inner`] in the lab.
pub fn outer(runs: usize) -> Result<i32> {
    chosen_targets()?;
    let virtiofsd = virtiofsd::ensure()?;
    let mut env = vec![(
        "CRX_VIRTIOFSD".into(),
        virtiofsd.to_string_lossy().into_owned(),
    )];
    for var in [TARGETS_VAR, BASELINE_VAR] {
        if let Ok(v) = std::env::var(var) {
            env.push((var.into(), v));
        }
    }
    bench_lab::outer("net", runs, env)
}

/// The part that runs inside the lab.
pub fn inner(runs: usize) -> Result<()> {
    bench_lab::in_scratch("net", runs, |work| measure(work, runs))
}

/// One target's figures.
#[derive(Debug, Clone, Copy, Default)]
struct Figures {
    /// Gbit/s host -> guest and guest -> host.
    to_guest: f64,
    to_host: f64,
    /// Host CPU seconds per GB, both directions together.
    cpu_per_gb: f64,
    /// Round-trip median and p90.
    rtt_median: Duration,
    rtt_p90: Duration,
}

/// The targets, in the order of each round.
const TARGETS: [&str; 6] = [
    "crx-runc",
    "runc",
    "crx-vmm-tap",
    "crx-vmm-base",
    "qemu-tap",
    "qemu-cni",
];
/// Names the targets to measure (all when unset).
const TARGETS_VAR: &str = "CRX_BENCH_NET_TARGETS";
/// A baseline crx-vmm binary: the `crx-vmm-base` target.
const BASELINE_VAR: &str = "CRX_BENCH_NET_BASELINE_VMM";

/// The targets `CRX_BENCH_NET_TARGETS` names, in round order; an unknown name is an error.
fn chosen_targets() -> Result<Vec<&'static str>> {
    let baseline = std::env::var_os(BASELINE_VAR).is_some();
    let Ok(list) = std::env::var(TARGETS_VAR) else {
        return Ok(TARGETS
            .into_iter()
            .filter(|t| *t != "crx-vmm-base" || baseline)
            .collect());
    };
    let names: Vec<&str> = list.split(',').map(str::trim).collect();
    if names.contains(&"crx-vmm-base") && !baseline {
        bail!("{TARGETS_VAR} names crx-vmm-base: set {BASELINE_VAR} to a crx-vmm binary");
    }
    if let Some(bad) = names.iter().find(|n| !TARGETS.contains(n)) {
        bail!(
            "{TARGETS_VAR}: unknown target `{bad}` (known: {})",
            TARGETS.join(", ")
        );
    }
    Ok(TARGETS.into_iter().filter(|t| names.contains(t)).collect())
}

fn measure(work: &Path, runs: usize) -> Result<()> {
    let targets = chosen_targets()?;
    let tree = server_tree(work)?;
    // Round after round, each target started, measured alone (nothing else running: an idle
    // VM beside it costs the lab's CPUs) and stopped: a drift of the machine over the
    // invocation falls on all of them alike.
    let mut results: Vec<(&str, Vec<Figures>)> = targets.iter().map(|t| (*t, Vec::new())).collect();
    for round in 1..=runs {
        for (i, name) in targets.iter().enumerate() {
            match measure_one(name, work, &tree) {
                Ok(f) => {
                    // Printed as measured: a later failure keeps what was measured.
                    println!("  round {round} {name}: {f:?}");
                    results[i].1.push(f);
                }
                Err(e) => eprintln!("bench net: {name} not measured in round {round}: {e:#}"),
            }
        }
    }
    remove_podman_storage();
    report(&results, runs);
    Ok(())
}

/// Starts target `name`, measures it, stops it.
fn measure_one(name: &str, work: &Path, tree: &Path) -> Result<Figures> {
    let in_podman = |runtime: &Path| -> Result<Figures> {
        let pod = Podman::start(work, runtime, tree, SERVE)?;
        figures(&pod.ip).with_context(|| format!("at {}", pod.ip))
    };
    let (vm, ip) = match name {
        "crx-runc" => return in_podman(&workspace_root().join("target/release/crx-runc")),
        "runc" => return in_podman(Path::new("runc")),
        "crx-vmm-tap" => {
            let vmm = workspace_root().join("target/release/crx-vmm");
            (TapVm::crx_vmm(work, tree, &vmm)?, VMM_GUEST)
        }
        "qemu-cni" => {
            // Dropped in reverse order: QEMU stops before its container goes.
            let pod = Podman::start(work, Path::new("runc"), tree, "exec sleep 100000")?;
            let vm = TapVm::qemu_cni(work, tree, &pod)?;
            return figures(&pod.ip).inspect_err(|_| vm.print_log_tail());
        }
        "crx-vmm-base" => {
            let vmm = PathBuf::from(std::env::var_os(BASELINE_VAR).context(BASELINE_VAR)?);
            (TapVm::crx_vmm(work, tree, &vmm)?, VMM_GUEST)
        }
        _ => (TapVm::qemu(work, tree)?, QEMU_GUEST),
    };
    figures(ip).inspect_err(|_| vm.print_log_tail())
}

/// The median of `f` over `v`: of an even count, the mean of the middle two (0: none).
fn median(v: &[Figures], f: impl Fn(&Figures) -> f64) -> f64 {
    let mut x: Vec<f64> = v.iter().map(f).collect();
    x.sort_by(|a, b| a.total_cmp(b));
    match x.len() {
        0 => 0.0,
        n if n % 2 == 1 => x[n / 2],
        n => (x[n / 2 - 1] + x[n / 2]) / 2.0,
    }
}

/// The median of a latency over the rounds that measured one (0: none did).
fn rtt_median(v: &[Figures], f: impl Fn(&Figures) -> Duration) -> Duration {
    let measured: Vec<Figures> = v.iter().filter(|x| !f(x).is_zero()).copied().collect();
    Duration::from_secs_f64(median(&measured, |x| f(x).as_secs_f64()))
}

fn report(results: &[(&str, Vec<Figures>)], runs: usize) {
    println!(
        "TCP throughput ({SECONDS} s each way, iperf3) and 1-byte request/response over TCP \
         ({ROUND_TRIPS} round trips), lab host <-> guest, in the nested lab; medians of {runs} \
         rounds (targets measured in turn each round):"
    );
    let med = |v: &[Figures]| Figures {
        to_guest: median(v, |f| f.to_guest),
        to_host: median(v, |f| f.to_host),
        cpu_per_gb: median(v, |f| f.cpu_per_gb),
        rtt_median: rtt_median(v, |f| f.rtt_median),
        rtt_p90: rtt_median(v, |f| f.rtt_p90),
    };
    let meds: Vec<(&str, Figures)> = results
        .iter()
        .filter(|r| !r.1.is_empty())
        .map(|r| (r.0, med(&r.1)))
        .collect();
    for (name, f) in &meds {
        println!(
            "  {name:<11} host->guest {:>7.3} Gbit/s  guest->host {:>7.3} Gbit/s  \
             host CPU {:>6.1} s/GB  rtt median {:>7.3} ms  p90 {:>7.3} ms",
            f.to_guest,
            f.to_host,
            f.cpu_per_gb,
            f.rtt_median.as_secs_f64() * 1e3,
            f.rtt_p90.as_secs_f64() * 1e3
        );
    }
    let get = |n: &str| meds.iter().find(|r| r.0 == n).map(|r| r.1);
    for (name, base) in [
        ("crx-vmm-tap", "qemu-tap"),
        ("crx-runc", "qemu-tap"),
        ("crx-runc", "qemu-cni"),
        ("crx-vmm-tap", "crx-vmm-base"),
    ] {
        if let (Some(c), Some(q)) = (get(name), get(base)) {
            println!(
                "  {name}/{base}: throughput host->guest {:.2}, guest->host {:.2}; \
                 CPU per GB {:.2}; rtt median {:.2}",
                c.to_guest / q.to_guest.max(1e-12),
                c.to_host / q.to_host.max(1e-12),
                c.cpu_per_gb / q.cpu_per_gb.max(1e-12),
                c.rtt_median.as_secs_f64() / q.rtt_median.as_secs_f64().max(1e-12)
            );
        }
    }
}

/// Throughput both ways, CPU per GB, latency, against a guest serving at `ip`.
fn figures(ip: &str) -> Result<Figures> {
    wait_for_port(ip, 5201)?;
    // The probe's connection is over before the server takes the measured one.
    std::thread::sleep(Duration::from_secs(1));
    let cpu0 = busy_cpu_seconds()?;
    let (to_guest, b1) = iperf(ip, false)?;
    let (to_host, b2) = iperf(ip, true)?;
    let cpu = busy_cpu_seconds()? - cpu0;
    // No echo server (a busybox without `nc -e`): the latency is left out, said once.
    let mut rtts = round_trips(ip).unwrap_or_else(|e| {
        eprintln!("bench net: no round trips with {ip}: {e:#}");
        Vec::new()
    });
    Ok(Figures {
        to_guest,
        to_host,
        cpu_per_gb: cpu / ((b1 + b2) / 1e9).max(1e-12),
        rtt_median: percentile(&mut rtts, 50),
        rtt_p90: percentile(&mut rtts, 90),
    })
}

/// One iperf3 run to `ip` (`-R`: the guest sends): Gbit/s received and bytes.
fn iperf(ip: &str, reverse: bool) -> Result<(f64, f64)> {
    let mut c = Command::new("iperf3");
    c.args(["-c", ip, "-J", "-t", &SECONDS.to_string()]);
    if reverse {
        c.arg("-R");
    }
    let out = c.output().context("iperf3 (apt package iperf3)")?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("iperf3 -c {ip}: {}", String::from_utf8_lossy(&out.stderr)))?;
    let sum = &v["end"]["sum_received"];
    match (sum["bits_per_second"].as_f64(), sum["bytes"].as_f64()) {
        (Some(bps), Some(bytes)) => Ok((bps / 1e9, bytes)),
        _ => bail!("iperf3 -c {ip}: no result: {v}"),
    }
}

/// Busy seconds of all host CPUs so far (`/proc/stat`: everything but idle and iowait).
fn busy_cpu_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().unwrap_or_default();
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if f.len() < 5 {
        bail!("/proc/stat: unexpected first line {line:?}");
    }
    let busy: f64 = f.iter().sum::<f64>() - f[3] - f[4];
    // USER_HZ is 100 on Linux x86_64.
    Ok(busy / 100.0)
}

/// [`ROUND_TRIPS`] one-byte exchanges with the echo server on port 7.
fn round_trips(ip: &str) -> Result<Vec<Duration>> {
    let mut s = TcpStream::connect((ip, 7)).with_context(|| format!("echo server {ip}:7"))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut b = [0u8; 1];
    let mut rtts = Vec::with_capacity(ROUND_TRIPS);
    for i in 0..ROUND_TRIPS {
        let t = Instant::now();
        s.write_all(&[i as u8])?;
        s.read_exact(&mut b)?;
        rtts.push(t.elapsed());
    }
    Ok(rtts)
}

fn wait_for_port(ip: &str, port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(180);
    while TcpStream::connect((ip, port)).is_err() {
        if Instant::now() > deadline {
            bail!("{ip}:{port} not listening after 180 s");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(())
}

/// What every guest runs: iperf3's server and an echo server, then waits.
/// The servers: iperf3, and an echo server on port 7 for one connection at a time, again and
/// again (a round each).
const SERVE: &str =
    "iperf3 -s -D; (while :; do nc -l -p 7 -e /bin/cat || sleep 1; done) & exec sleep 100000";

/// A tree with busybox (and its applets), iperf3 and the libraries it loads.
fn server_tree(work: &Path) -> Result<PathBuf> {
    let tree = work.join("tree");
    for d in ["bin", "proc", "sys", "dev", "tmp", "etc", "usr/bin"] {
        std::fs::create_dir_all(tree.join(d))?;
    }
    std::fs::copy("/bin/busybox", tree.join("bin/busybox"))?;
    for applet in ["sh", "nc", "cat", "sleep", "ip", "mount", "ls"] {
        std::os::unix::fs::symlink("busybox", tree.join("bin").join(applet))?;
    }
    let iperf = Path::new("/usr/bin/iperf3");
    let mut files = vec![iperf.to_owned()];
    let ldd = Command::new("ldd").arg(iperf).output()?;
    for l in String::from_utf8_lossy(&ldd.stdout).lines() {
        let path = l.split("=>").last().unwrap_or(l).split_whitespace().next();
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            files.push(p.into());
        }
    }
    for f in files {
        let dest = tree.join(f.strip_prefix("/")?);
        std::fs::create_dir_all(dest.parent().unwrap_or(&tree))?;
        std::fs::copy(&f, &dest).with_context(|| f.display().to_string())?;
    }
    std::fs::write(tree.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n")?;
    Ok(tree)
}

/// A container serving from `tree` through podman (its default CNI network) with `runtime`.
struct Podman {
    base: Vec<String>,
    id: String,
    ip: String,
}

impl Podman {
    /// Runs `script` (`sh -c`) in a container of `tree`.
    fn start(work: &Path, runtime: &Path, tree: &Path, script: &str) -> Result<Podman> {
        // Under /var (the lab's ext4 root): podman's overlay storage does not work on tmpfs.
        let dir = Path::new("/var/tmp").join(format!("crx-bench-net-{}", std::process::id()));
        let _ = work;
        let base: Vec<String> = [
            "--root",
            &dir.join("root").to_string_lossy(),
            "--runroot",
            &dir.join("run").to_string_lossy(),
            "--runtime",
            &runtime.to_string_lossy(),
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
            "--storage-driver",
            "overlay",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let out = Command::new("podman")
            .args(&base)
            .args(["run", "-d"])
            .args([
                "--ulimit",
                "nofile=4096:4096",
                "--ulimit",
                "nproc=4096:4096",
            ])
            .arg("--rootfs")
            .arg(tree)
            .args(["/bin/sh", "-c", script])
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!("podman run: {}", String::from_utf8_lossy(&out.stderr));
        }
        let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let mut pod = Podman {
            base,
            id,
            ip: String::new(),
        };
        pod.ip = pod.inspect("{{.NetworkSettings.IPAddress}}")?;
        Ok(pod)
    }

    /// `podman inspect -f FORMAT` of the container.
    fn inspect(&self, format: &str) -> Result<String> {
        let out = cmd::output(
            Command::new("podman")
                .args(&self.base)
                .args(["inspect", "-f", format, &self.id]),
        )?;
        Ok(out.trim().to_owned())
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(&self.base)
            .args(["rm", "-f", "-t", "0", &self.id])
            .output();
    }
}

/// Removes podman's storage under /var/tmp (after both containers).
fn remove_podman_storage() {
    let dir = Path::new("/var/tmp").join(format!("crx-bench-net-{}", std::process::id()));
    let _ = Command::new("umount").arg("-R").arg(&dir).output();
    let _ = std::fs::remove_dir_all(dir);
}

/// A VM on a tap of its own with a host address, booting the guest kernel with `tree` as its
/// initramfs: QEMU's user-space virtio-net, or crx-vmm's, in the same setup (no CNI path).
struct TapVm {
    child: Child,
    /// A tap in the host's namespace, deleted with the VM.
    tap: Option<&'static str>,
    log: PathBuf,
}

impl TapVm {
    /// QEMU (KVM, microvm), its virtio-net on [`QEMU_TAP`] (`vhost=off`).
    fn qemu(work: &Path, tree: &Path) -> Result<TapVm> {
        let cpio = initramfs(work, tree, &format!("{QEMU_GUEST}/24"), "qemu")?;
        tap(QEMU_TAP, QEMU_HOST)?;
        Self::spawn_qemu(work, &cpio, QEMU_TAP, None, None)
    }

    /// QEMU in `pod`'s network namespace, attached as crx-runc attaches a VM (ADR 0015): a tap
    /// beside the veth `eth0`, an ingress qdisc on each with a match-all u32 filter redirecting
    /// to the other, the guest with the veth's MAC and address. Gone with the namespace.
    fn qemu_cni(work: &Path, tree: &Path, pod: &Podman) -> Result<TapVm> {
        let netns = pod.inspect("{{.NetworkSettings.SandboxKey}}")?;
        let prefix = pod.inspect("{{.NetworkSettings.IPPrefixLen}}")?;
        let in_ns = |script: &str| -> Result<String> {
            cmd::output(
                Command::new("nsenter")
                    .arg(format!("--net={netns}"))
                    .args(["sh", "-c", script]),
            )
        };
        // `ip -o link show eth0`: "2: eth0@if5: <...> mtu 1500 ... link/ether MAC brd ...".
        let link = in_ns("ip -o link show eth0")?;
        let after = |word: &str| {
            let mut it = link.split_whitespace();
            it.find(|w| *w == word).and(it.next()).map(str::to_owned)
        };
        let (Some(mtu), Some(mac)) = (after("mtu"), after("link/ether")) else {
            bail!("eth0 in {netns}: no MTU or MAC in {link:?}");
        };
        in_ns(&format!(
            "ip tuntap add dev {CNI_TAP} mode tap && ip link set {CNI_TAP} mtu {mtu} up && \
             for p in 'eth0 {CNI_TAP}' '{CNI_TAP} eth0'; do set -- $p; \
             tc qdisc add dev $1 ingress && tc filter add dev $1 parent ffff: protocol all \
             u32 match u8 0 0 action mirred egress redirect dev $2 || exit 1; done"
        ))?;
        let cpio = initramfs(work, tree, &format!("{}/{prefix}", pod.ip), "qemu-cni")?;
        Self::spawn_qemu(work, &cpio, CNI_TAP, Some(&netns), Some(&mac))
    }

    /// QEMU (KVM, microvm) booting `cpio`, its virtio-net on the existing tap `tap`
    /// (`vhost=off`), in network namespace `netns` if given (the tap goes with it; otherwise
    /// it is deleted with the VM), with MAC `mac` if given.
    fn spawn_qemu(
        work: &Path,
        cpio: &Path,
        tap: &'static str,
        netns: Option<&str>,
        mac: Option<&str>,
    ) -> Result<TapVm> {
        let boot = std::env::var("CRX_BOOT_DIR").context("CRX_BOOT_DIR")?;
        let log = work.join(format!("qemu-{tap}.log"));
        let mut c = match netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={ns}")).arg("qemu-system-x86_64");
                c
            }
            None => Command::new("qemu-system-x86_64"),
        };
        let device = match mac {
            Some(mac) => format!("virtio-net-device,netdev=n0,mac={mac}"),
            None => "virtio-net-device,netdev=n0".to_owned(),
        };
        let child = c
            .args(["-M", "microvm,acpi=off", "-accel", "kvm", "-cpu", "host"])
            .args(["-m", "256", "-smp", "1", "-nographic", "-no-reboot"])
            .arg("-kernel")
            .arg(Path::new(&boot).join("vmlinux"))
            .arg("-initrd")
            .arg(cpio)
            .args(["-append", "console=ttyS0 quiet reboot=t rdinit=/init"])
            .args([
                "-netdev",
                &format!("tap,id=n0,ifname={tap},script=no,downscript=no,vhost=off"),
                "-device",
                &device,
            ])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(Stdio::null())
            .spawn()
            .context("qemu-system-x86_64")?;
        Ok(TapVm {
            child,
            tap: netns.is_none().then_some(tap),
            log,
        })
    }

    /// crx-vmm `vmm` alone (no jail, its seccomp filters on), its virtio-net on [`VMM_TAP`].
    fn crx_vmm(work: &Path, tree: &Path, vmm: &Path) -> Result<TapVm> {
        let cpio = initramfs(work, tree, &format!("{VMM_GUEST}/24"), "crx-vmm")?;
        tap(VMM_TAP, VMM_HOST)?;
        let boot = std::env::var("CRX_BOOT_DIR").context("CRX_BOOT_DIR")?;
        let log = work.join("crx-vmm.log");
        let out = std::fs::File::create(&log)?;
        let child = Command::new(vmm)
            .args(["--memory-mib", "256", "--vcpus", "1"])
            .arg("--kernel")
            .arg(Path::new(&boot).join("vmlinux"))
            .arg("--initrd")
            .arg(&cpio)
            .args(["--init-args", "quiet rdinit=/init"])
            .args(["--net", &format!("tap={VMM_TAP}")])
            .stdin(Stdio::null())
            .stderr(out.try_clone()?)
            .stdout(out)
            .spawn()
            .context("crx-vmm")?;
        Ok(TapVm {
            child,
            tap: Some(VMM_TAP),
            log,
        })
    }

    /// The last lines of the VM's console, newest first, on stderr.
    fn print_log_tail(&self) {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        eprintln!("{} (last lines, newest first):", self.log.display());
        for l in log.lines().rev().take(30) {
            eprintln!("  {l}");
        }
    }
}

impl Drop for TapVm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(tap) = self.tap {
            let _ = Command::new("ip").args(["link", "del", tap]).output();
        }
    }
}

/// `tree` with an `/init` that puts `guest_cidr` (address/prefix) on eth0 and serves, as a
/// newc cpio.
fn initramfs(work: &Path, tree: &Path, guest_cidr: &str, name: &str) -> Result<PathBuf> {
    let init = format!(
        "#!/bin/sh\nmount -t proc p /proc; mount -t sysfs s /sys; mount -t devtmpfs d /dev\n\
         ip link set lo up\n\
         ip addr add {guest_cidr} dev eth0; ip link set eth0 up\n{SERVE}\n"
    );
    std::fs::write(tree.join("init"), init)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(tree.join("init"), std::fs::Permissions::from_mode(0o755))?;
    let cpio = work.join(format!("{name}.cpio"));
    cmd::run(Command::new("sh").arg("-c").arg(format!(
        "cd {} && find . | cpio -o -H newc > {} 2>/dev/null",
        tree.display(),
        cpio.display()
    )))?;
    Ok(cpio)
}

/// A tap `name` (recreated), up, with `host_ip`/24.
fn tap(name: &str, host_ip: &str) -> Result<()> {
    let _ = Command::new("ip").args(["link", "del", name]).output();
    for args in [
        vec!["tuntap", "add", "dev", name, "mode", "tap"],
        vec!["addr", "add", &format!("{host_ip}/24"), "dev", name],
        vec!["link", "set", name, "up"],
    ] {
        cmd::run(Command::new("ip").args(&args))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rounds(to_guest: &[f64]) -> Vec<Figures> {
        to_guest
            .iter()
            .map(|&g| Figures {
                to_guest: g,
                ..Figures::default()
            })
            .collect()
    }

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        let m = |v: &[f64]| median(&rounds(v), |f| f.to_guest);
        assert_eq!(m(&[]), 0.0);
        assert_eq!(m(&[3.0]), 3.0);
        assert_eq!(m(&[5.0, 1.0, 3.0]), 3.0);
        assert_eq!(m(&[4.0, 1.0, 2.0, 10.0]), 3.0);
    }
}
