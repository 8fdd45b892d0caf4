use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};
use xtask::kernel::{self, Flavor};
use xtask::{kvm, lab, rootfs};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "CRX project tooling")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build (or find in the cache) the guest and lab kernels; prints their directories.
    Kernel {
        /// Only this flavor (default: both).
        #[arg(long, value_enum)]
        flavor: Option<Flavor>,
    },
    /// Build the guest kernel, a static crx-init and the base initrd into $CRX_CACHE/boot,
    /// where `crx` finds them.
    Boot,
    /// Run `crx ARGS...` with the offline busybox image loaded: directly where this host's KVM
    /// boots Linux, else in the nested lab. E.g. `cargo xtask crx run --rm busybox echo hi`.
    Crx {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build (or find in the cache) the lab's root filesystem image; prints its path.
    Rootfs,
    /// Boot the nested KVM lab, run CMD as root inside, exit with its status.
    Lab {
        /// Give up (and stop the lab) after this many seconds.
        #[arg(long, default_value_t = 1800)]
        timeout: u64,
        /// Stop the lab (as stuck) after this many seconds without console output once the
        /// command runs: the lab prints a heartbeat six times as often. Its boot may be quiet
        /// for 60 s whatever this says.
        #[arg(long, default_value_t = 180)]
        silence: u64,
        #[arg(long, default_value_t = 4096)]
        memory_mib: u32,
        #[arg(long, default_value_t = 2)]
        cpus: u32,
        /// Also share this host directory (at the same path); repeatable.
        #[arg(long)]
        share: Vec<PathBuf>,
        /// Set K=V for the command; repeatable.
        #[arg(long, value_parser = parse_env)]
        env: Vec<(String, String)>,
        /// Do not check the lab host's /dev/kvm first.
        #[arg(long)]
        no_kvm_probe: bool,
        /// Show the lab host's boot log.
        #[arg(long, short)]
        verbose: bool,
        #[arg(required = true, trailing_var_arg = true)]
        command: Vec<String>,
    },
    /// Install the Debian packages the build and the tests need (.ci/apt-packages), and
    /// build virtiofsd into the cache.
    Deps,
    /// Build (or find in the cache) virtiofsd from crates.io; prints the binary's path.
    Virtiofsd,
    /// Check that /dev/kvm opens and creates a VM (used inside the lab).
    KvmProbe,
    /// Print benchmark figures (median and p90), baselines run in the same invocation.
    Bench {
        #[arg(value_enum)]
        what: Bench,
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// Run only the part that runs inside the lab (used by the bench itself).
        #[arg(long, hide = true)]
        inner: bool,
    },
    /// Run every test tier: unit, host KVM (tiny guests), nested lab.
    Test(xtask::tiers::TestArgs),
    /// Run one test binary with a time limit, dumping its processes' state if it hangs (tier
    /// 3 runs each lab test binary so).
    #[command(hide = true)]
    Timed(xtask::timed::TimedArgs),
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Bench {
    /// Guest kernel to init under QEMU microvm: TCG on this host, then KVM inside the lab.
    Boot,
    /// Phases of a cold `crx run --rm busybox true` next to `runc run`, in the lab.
    Run,
    /// crx-vmm: start to first vCPU entry and idle memory here, boot vs QEMU in the lab.
    Vmm,
    /// crx-runc create+start+delete vs runc and crun, and an idle container's host memory.
    Oci,
    /// Kubernetes pods through containerd's CRI: the crx handler (shim) vs runc, in the lab.
    Pod,
    /// Warm start: crx-vmm restoring a snapshot vs a cold start (tiny guest, this host).
    Warm,
    /// `crx run` with and without seccomp and the jail (the cost of each layer), in the lab.
    Confine,
    /// TCP throughput and latency: crx-runc vs runc (podman's CNI) vs QEMU's tap, in the lab.
    Net,
}

/// `bench pod` with the CRI harness compiled in.
#[cfg(feature = "pod-bench")]
fn pod(runs: usize, inner: bool) -> Result<i32> {
    if inner {
        xtask::bench_pod::inner(runs).map(|_| 0)
    } else {
        xtask::bench_pod::outer(runs)
    }
}

/// `bench pod` needs the CRI harness (feature `pod-bench`), left out of a plain xtask because
/// k8s-cri's build needs protoc, which a fresh machine only has once xtask installed the
/// Debian packages: xtask builds itself with the feature (the packages are there by now) and
/// runs that.
#[cfg(not(feature = "pod-bench"))]
fn pod(runs: usize, inner: bool) -> Result<i32> {
    use anyhow::Context as _;
    let mut c =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(xtask::workspace_root())
        .args([
            "run",
            "--quiet",
            "--package",
            "xtask",
            "--features",
            "pod-bench",
            "--",
        ])
        .args(["bench", "pod", &format!("--runs={runs}")]);
    if inner {
        c.arg("--inner");
    }
    let status = c.status().context("cargo run --features pod-bench")?;
    Ok(status.code().unwrap_or(1))
}

fn bench(what: Bench, runs: usize, inner: bool) -> Result<i32> {
    match what {
        Bench::Run if inner => xtask::bench_run::inner(runs).map(|_| 0),
        Bench::Run => xtask::bench_run::outer(runs),
        Bench::Vmm => xtask::bench_vmm::run(runs),
        Bench::Warm if inner => xtask::bench_warm::inner(runs).map(|_| 0),
        Bench::Warm => xtask::bench_warm::run(runs),
        Bench::Oci if inner => xtask::bench_oci::inner(runs).map(|_| 0),
        Bench::Oci => xtask::bench_oci::outer(runs),
        Bench::Pod => pod(runs, inner),
        Bench::Confine if inner => xtask::bench_confine::inner(runs).map(|_| 0),
        Bench::Confine => xtask::bench_confine::outer(runs),
        Bench::Net if inner => xtask::bench_net::inner(runs).map(|_| 0),
        Bench::Net => xtask::bench_net::outer(runs),
        Bench::Boot if inner => xtask::guest_boot::bench(runs, "kvm").map(|_| 0),
        Bench::Boot => {
            xtask::guest_boot::bench(runs, "tcg")?;
            let exe = std::env::current_exe()?.to_string_lossy().into_owned();
            let cmd = [
                exe,
                "bench".into(),
                "boot".into(),
                "--inner".into(),
                format!("--runs={runs}"),
            ];
            lab::run(&cmd, &lab::Options::default())
        }
    }
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected K=V, got {s:?}"))
}

/// Whether `cmd` runs on this host and may build something: then the Debian packages of
/// `.ci/apt-packages` are installed first (a fresh machine has none of them: crx-init links
/// libseccomp statically). Not for the commands that run inside the lab (the lab's root
/// filesystem has what they need and no package archive).
fn needs_host_packages(cmd: &Cmd) -> bool {
    !matches!(
        cmd,
        Cmd::KvmProbe | Cmd::Timed(_) | Cmd::Bench { inner: true, .. }
    )
}

fn main() {
    let cli = Cli::parse();
    if needs_host_packages(&cli.command) {
        if let Err(e) = xtask::apt::ensure_project_packages() {
            eprintln!("xtask: error: {e:#}");
            std::process::exit(1);
        }
    }
    let result: Result<i32> = match cli.command {
        Cmd::Kernel { flavor } => {
            let flavors = flavor.map_or(vec![Flavor::Guest, Flavor::Lab], |f| vec![f]);
            flavors
                .into_iter()
                .try_for_each(|f| {
                    let k = kernel::ensure(f)?;
                    println!("{} {}", f.name(), k.dir.display());
                    Ok(())
                })
                .map(|()| 0)
        }
        Cmd::Boot => xtask::boot::ensure().map(|p| {
            println!("{}", p.display());
            0
        }),
        Cmd::Crx { args } => xtask::crx::run(&args),
        Cmd::Rootfs => rootfs::ensure().map(|p| {
            println!("{}", p.display());
            0
        }),
        Cmd::Lab {
            timeout,
            silence,
            memory_mib,
            cpus,
            share,
            env,
            no_kvm_probe,
            verbose,
            command,
        } => {
            let opts = lab::Options {
                memory_mib,
                cpus,
                timeout: Duration::from_secs(timeout),
                silence: Duration::from_secs(silence),
                shares: share,
                env,
                cwd: None,
                kvm_probe: !no_kvm_probe,
                verbose,
            };
            lab::run(&command, &opts)
        }
        // The packages were installed above, as for every host command.
        Cmd::Deps => xtask::virtiofsd::ensure().map(|_| 0),
        Cmd::Virtiofsd => xtask::virtiofsd::ensure().map(|p| {
            println!("{}", p.display());
            0
        }),
        Cmd::KvmProbe => kvm::probe().map(|()| {
            println!("crx-lab: /dev/kvm is usable");
            0
        }),
        Cmd::Bench { what, runs, inner } => bench(what, runs, inner),
        Cmd::Test(args) => xtask::tiers::run(&args),
        Cmd::Timed(args) => xtask::timed::run(&args),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cmd {
        Cli::try_parse_from(std::iter::once("xtask").chain(args.iter().copied()))
            .unwrap()
            .command
    }

    #[test]
    fn every_host_command_installs_the_project_packages_first() {
        for args in [
            &["crx", "run", "--rm", "busybox", "echo", "hi"][..],
            &["test"],
            &["test", "--tier", "1"],
            &["kernel"],
            &["boot"],
            &["rootfs"],
            &["lab", "--", "true"],
            &["deps"],
            &["virtiofsd"],
            &["bench", "boot"],
            &["bench", "run"],
            &["bench", "vmm"],
            &["bench", "warm"],
            &["bench", "oci"],
            &["bench", "confine"],
            &["bench", "pod"],
            &["bench", "net"],
        ] {
            assert!(needs_host_packages(&parse(args)), "{args:?}");
        }
    }

    #[test]
    fn commands_run_inside_the_nested_vm_install_nothing() {
        for args in [
            &["kvm-probe"][..],
            &["bench", "oci", "--inner"],
            &["bench", "confine", "--inner"],
            &["bench", "pod", "--inner"],
            &["bench", "net", "--inner"],
            &["timed", "--limit", "9", "--", "t", "lab_"],
        ] {
            assert!(!needs_host_packages(&parse(args)), "{args:?}");
        }
    }
}
