//! `crx-vmm`: run one microVM in this process.
//!
//! Exit status: 0 the guest reset/powered off or the VMM got SIGTERM/SIGINT; 1 setup error
//! (config, KVM, kernel); 2 usage error; 3 triple fault; 4 KVM internal error (emulation
//! failure); 5 another vCPU failure; 6 a snapshot the guest asked for could not be written
//! (`--snapshot-on-port`; a written one exits 0).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use crx_vmm::config::{ConfigError, DiskConfig, FsConfig, NetConfig, SerialOutput};
use crx_vmm::{VmConfig, VmOptions};

/// Run one KVM microVM: direct kernel boot, serial console, i8042 reset, boot timer.
///
/// The VM is described by a TOML file (`--config`, the `crx-vmconfig` schema); the other
/// flags are for quick runs by hand and tests: each one given replaces the file's value.
#[derive(Debug, Parser)]
#[command(name = "crx-vmm", version)]
struct Cli {
    /// TOML VM config file; flags below override its values.
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Guest RAM in MiB.
    #[arg(long)]
    memory_mib: Option<u64>,
    /// Number of vCPUs.
    #[arg(long)]
    vcpus: Option<u8>,
    /// Kernel: ELF vmlinux (PVH entry used when present) or bzImage.
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initrd (repeatable; concatenated in order). Replaces the file's list.
    #[arg(long = "initrd")]
    initrds: Vec<PathBuf>,
    /// Arguments appended to the command line for init, e.g. `crxrun=/bin/x`.
    #[arg(long)]
    init_args: Option<String>,
    /// Disk image `PATH` or `PATH:ro` (repeatable). Replaces the file's list.
    #[arg(long = "disk")]
    disks: Vec<String>,
    /// vsock guest CID (3 or more); needs --vsock-uds.
    #[arg(long, requires = "vsock_uds")]
    vsock_cid: Option<u32>,
    /// vsock host Unix socket path; needs --vsock-cid.
    #[arg(long, requires = "vsock_cid")]
    vsock_uds: Option<PathBuf>,
    /// virtio-fs device `TAG=SOCKET` served by a vhost-user backend (e.g. virtiofsd) listening
    /// on SOCKET (repeatable). Replaces the file's list.
    #[arg(long = "fs")]
    fs: Vec<String>,
    /// virtio-net device over a tap: `tap=NAME` or `fd=N` (an inherited tap), then optionally
    /// `,mac=MAC` and `,mtu=N` (repeatable). Replaces the file's list.
    #[arg(long = "net")]
    net: Vec<String>,
    /// Serial console: stdout, off or file:PATH.
    #[arg(long)]
    serial: Option<String>,
    /// Log guest writes to the boot-timer port (0x440) on stderr.
    #[arg(long)]
    boot_timer: bool,
    /// Copy the kernel and initrds into guest RAM instead of mapping them copy-on-write.
    #[arg(long)]
    copy_boot_files: bool,
    /// Run no VM: print the nanoseconds per iteration of a calibrated tiny guest loop (~1 on a
    /// KVM running guest code natively, ~1000 where it emulates) and exit (`crx check` uses it).
    #[arg(long, exclusive = true)]
    kvm_speed: bool,
    /// Run without the seccomp filters: for debugging only (the VMM log says so).
    #[arg(long)]
    no_seccomp: bool,
    /// Snapshot the VM into DIR when the guest writes to I/O port PORT (e.g. `0x4f0`), then
    /// exit 0 (DIR/state and DIR/memory are recreated at start-up; docs/snapshot-format.md).
    #[arg(long, num_args = 2, value_names = ["PORT", "DIR"], conflicts_with = "snapshot_on_signal")]
    snapshot_on_port: Vec<String>,
    /// Snapshot the VM into DIR when crx-vmm gets SIGUSR1 (the host asks), then exit 0.
    #[arg(long, value_name = "DIR")]
    snapshot_on_signal: Option<PathBuf>,
    /// Restore the VM from the snapshot in DIR instead of booting; the configuration must
    /// describe the same VM shape (RAM, vCPUs, devices).
    #[arg(long, value_name = "DIR")]
    restore: Option<PathBuf>,
}

/// Parses a port number, decimal or `0x` hexadecimal.
fn parse_port(s: &str) -> anyhow::Result<u16> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u16::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.with_context(|| format!("--snapshot-on-port: `{s}` is not a port number (0..=0xffff)"))
}

impl Cli {
    /// The configuration: the file's (if any) with the flags' values put over it, validated.
    fn vm_config(self) -> anyhow::Result<VmConfig> {
        let mut cfg = match &self.config {
            Some(p) => VmConfig::read(p)?,
            None => VmConfig::new(
                self.memory_mib.ok_or(ConfigError::Missing {
                    field: "memory_mib",
                })?,
                "",
            ),
        };
        self.apply(&mut cfg)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Puts each flag given over `cfg`'s value.
    fn apply(self, cfg: &mut VmConfig) -> Result<(), ConfigError> {
        fn set<T>(field: &mut T, flag: Option<T>) {
            if let Some(v) = flag {
                *field = v;
            }
        }
        set(&mut cfg.memory_mib, self.memory_mib);
        set(&mut cfg.vcpus, self.vcpus);
        set(&mut cfg.kernel, self.kernel);
        if !self.initrds.is_empty() {
            cfg.initrds = self.initrds;
        }
        if self.init_args.is_some() {
            cfg.init_args = self.init_args;
        }
        if !self.disks.is_empty() {
            cfg.disks = self
                .disks
                .iter()
                .map(|d| DiskConfig::parse_flag(d))
                .collect();
        }
        if let (Some(guest_cid), Some(uds_path)) = (self.vsock_cid, self.vsock_uds) {
            cfg.vsock = Some(crx_vmm::config::VsockConfig {
                guest_cid,
                uds_path,
            });
        }
        if !self.fs.is_empty() {
            cfg.fs = self
                .fs
                .iter()
                .map(|f| FsConfig::parse_flag(f))
                .collect::<Result<_, _>>()?;
        }
        if !self.net.is_empty() {
            cfg.net = self
                .net
                .iter()
                .map(|n| NetConfig::parse_flag(n))
                .collect::<Result<_, _>>()?;
        }
        set(
            &mut cfg.serial,
            self.serial
                .as_deref()
                .map(SerialOutput::parse_flag)
                .transpose()?,
        );
        cfg.boot_timer |= self.boot_timer;
        cfg.copy_boot_files |= self.copy_boot_files;
        Ok(())
    }
}

fn run(cli: Cli, start: Instant) -> anyhow::Result<ExitCode> {
    if cli.kvm_speed {
        let ns = crx_kvmspeed::loop_speed_ns().context("the KVM speed probe")?;
        println!("{ns:.3}");
        return Ok(ExitCode::SUCCESS);
    }
    let no_seccomp = cli.no_seccomp;
    let snapshot = match (cli.snapshot_on_port.as_slice(), &cli.snapshot_on_signal) {
        ([port, dir], _) => Some((Some(parse_port(port)?), PathBuf::from(dir))),
        (_, Some(dir)) => Some((None, dir.clone())),
        _ => None,
    };
    let restore = cli.restore.clone();
    if let (Some((_, snap)), Some(from)) = (&snapshot, &restore) {
        let same = snap == from
            || matches!((snap.canonicalize(), from.canonicalize()), (Ok(a), Ok(b)) if a == b);
        if same {
            anyhow::bail!(
                "--snapshot-on-port and --restore name the same directory {}: snapshot to another one",
                snap.display()
            );
        }
    }
    let cfg = cli.vm_config().context("invalid VM configuration")?;
    let mut opts = VmOptions {
        start,
        handle_signals: true,
        serial_input: true,
        restore,
        ..Default::default()
    };
    if let Some((port, dir)) = &snapshot {
        opts.snapshot = Some(
            crx_vmm::snapshot::SnapshotTarget::prepare(dir, *port, &cfg)
                .context("cannot prepare the snapshot directory")?,
        );
    }
    seccomp_setup(no_seccomp, &mut opts)?;
    let report = crx_vmm::run_vm(&cfg, opts).context("cannot run the VM")?;
    let code = report.exit.exit_code();
    if !report.exit.is_clean() || std::env::var_os("CRX_VMM_DEBUG").is_some() {
        log(&format!("crx-vmm: {}", report.exit));
    }
    if let (crx_vmm::VmExit::Snapshot, Some((_, dir))) = (&report.exit, &snapshot) {
        log(&format!("crx-vmm: snapshot written to {}", dir.display()));
    }
    Ok(ExitCode::from(code as u8))
}

/// Turns the per-thread seccomp filters on (ADR 0010), or says in the log that they are off;
/// adds the test-only probe device when a debug build is asked for it.
fn seccomp_setup(no_seccomp: bool, opts: &mut VmOptions) -> anyhow::Result<()> {
    use crx_vmm::seccomp::probe;
    if no_seccomp {
        log("crx-vmm: seccomp: off (--no-seccomp, for debugging only)");
    } else {
        crx_vmm::seccomp::enable().context("cannot enable seccomp")?;
    }
    if probe::requested() {
        let (dev, sub) = probe::create().context("seccomp probe")?;
        opts.extra_mmio
            .push((probe::PROBE_MMIO_BASE, probe::PROBE_MMIO_LEN, dev));
        opts.subscribers.push(sub);
    }
    Ok(())
}

/// Writes a line to stderr; a closed stderr must not turn a clean exit into a panic.
fn log(msg: &str) {
    let _ = writeln!(std::io::stderr(), "{msg}");
}

/// Makes sure fds 0-2 are open (on /dev/null if the parent closed them), so that no file the
/// VMM opens later (a disk, /dev/kvm) lands on a standard fd and gets console traffic.
fn ensure_std_fds() {
    for fd in 0..3 {
        // SAFETY: F_GETFD only queries the descriptor flags of `fd`.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
            // The lowest free descriptor is `fd` itself; keep it open for the process's life.
            if let Ok(f) = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
            {
                std::mem::forget(f);
            }
        }
    }
}

/// The file mode creation mask crx-vmm runs with: everything it creates (the vsock socket,
/// the console file) is readable and writable by its owner only (0600), whatever the
/// caller's umask; the socket is created private, with no window to connect to it.
pub const PRIVATE_UMASK: libc::mode_t = 0o177;

fn main() -> ExitCode {
    let start = Instant::now();
    // SAFETY: umask only sets this process's file mode creation mask; it cannot fail.
    unsafe { libc::umask(PRIVATE_UMASK) };
    ensure_std_fds();
    // A signal mask is inherited through exec: whatever the parent blocked, the VMM must see
    // SIGTERM (a clean stop) and SIGUSR1 (the snapshot request of a template build).
    // SAFETY: sigemptyset fills a local set; pthread_sigmask only changes this thread's mask
    // (no other thread exists yet, so every later thread inherits it).
    unsafe {
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
    }
    crx_vmm::logger::init();
    let cli = Cli::parse();
    match run(cli, start) {
        Ok(code) => code,
        Err(e) => {
            log(&format!("crx-vmm: error: {e:#}"));
            ExitCode::from(1)
        }
    }
}
