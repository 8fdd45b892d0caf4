//! The nested KVM lab: a Linux host with KVM, booted under QEMU's software CPU (TCG, which
//! emulates AMD SVM), whose own /dev/kvm boots Linux guests in seconds. See
//! docs/adr/0001-nested-lab.md.
//!
//! Exit paths: QEMU is started with PR_SET_PDEATHSIG(SIGKILL), so it dies with this process
//! whatever kills it; a timeout kills it explicitly. The lab creates no temp files or sockets
//! on the host: the command travels on the kernel command line, output and exit status come
//! back on the serial console, and the root image is opened with `snapshot=on`.
//!
//! A wedged lab host (seen now and then: no output for many minutes, QEMU busy) costs
//! minutes, not the whole time limit: the command's script prints a heartbeat line six times
//! per [`Options::silence`] (every 30 s by default; the host swallows it), so a console silent
//! that long means the lab host may be stuck: its vCPUs are reported, it is woken once (an NMI
//! through the monitor), and if no heartbeat follows within the same limit QEMU is killed and
//! the run fails with [`LAB_FAILED`], which tier 3 retries. The heartbeat starts with the
//! command: until then the boot (kernel, 9p mounts, the KVM probe) may be quiet for
//! [`BOOT_SILENCE`].

use std::io::{BufRead, BufReader, Write};
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cmd::shell_quote;
use crate::kernel::{self, Flavor};
use crate::monitor::{self, Monitor};
use crate::{apt, cache, rootfs, workspace_root};

const BEGIN: &str = "CRX-LAB-BEGIN";
const EXIT: &str = "CRX-LAB-EXIT ";
/// The heartbeat line; the host removes it from the output, wherever it lands in a line.
const HEARTBEAT: &str = "CRX-LAB-ALIVE";
/// Where the lab keeps the heartbeat's pid (a test stops it to play a wedged lab host).
pub const HEARTBEAT_PID_FILE: &str = "/run/crx-lab-heartbeat.pid";
/// x86 Linux's limit on the kernel command line, the terminating NUL included.
const COMMAND_LINE_SIZE: usize = 2048;

/// The lab host's KVM runs its guests with shadow paging, not nested paging (NPT). With NPT,
/// QEMU's TCG emulation of SVM (QEMU 10.0) now and then lets the lab host take an exception
/// while its GS base still holds the nested guest's value, between KVM's VMLOAD of the guest
/// state and the VMLOAD of the host state: the lab kernel then faults on every per-CPU access
/// ("BUG: TASK stack guard page was hit ... Comm: vcpu0", sometimes a panic) and the guest
/// hangs. Measured: with NPT, 1 to 2 such oopses per run of the 8 `lab_linux` tests (8 VMs at
/// once); with `kvm_amd.npt=0`, none in 3 runs, at the same speed, but still now and then in
/// a full tier 3 (which then retries, see tiers.rs). See docs/adr/0001.
const LAB_KVM_PARAMS: &str = "kvm_amd.npt=0";

/// QEMU's microvm without defaults, its console on stdio, exiting on reboot (ACPI off: QEMU
/// then names its virtio-mmio devices on the kernel command line).
pub const MICROVM: [&str; 9] = [
    "-M",
    "microvm,acpi=off",
    "-nodefaults",
    "-no-user-config",
    "-display",
    "none",
    "-no-reboot",
    "-serial",
    "stdio",
];

/// How long the lab host's boot may be silent before the command starts (and its heartbeat
/// with it), whatever [`Options::silence`] says: a boot has quiet stretches of several seconds
/// (reading the probe's binary over 9p on a busy machine).
pub const BOOT_SILENCE: Duration = Duration::from_secs(60);

/// How many times one run wakes a silent lab host (an NMI) before it is taken for stuck.
const MAX_WAKES: u32 = 3;

/// Exit status when the lab itself failed (did not boot, timed out, no KVM).
pub const LAB_FAILED: i32 = 125;

#[derive(Debug, Clone)]
pub struct Options {
    pub memory_mib: u32,
    pub cpus: u32,
    pub timeout: Duration,
    /// A console silent this long (no output, no heartbeat) means the lab host is stuck: it is
    /// stopped and the run fails with [`LAB_FAILED`]. Six heartbeats long.
    pub silence: Duration,
    /// Host directories mounted at the same path inside (the workspace and cache always are).
    pub shares: Vec<PathBuf>,
    /// Environment for the command.
    pub env: Vec<(String, String)>,
    /// Working directory of the command (default: the caller's).
    pub cwd: Option<PathBuf>,
    /// Check the lab host's /dev/kvm before running the command.
    pub kvm_probe: bool,
    /// Print the lab host's boot log too.
    pub verbose: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            memory_mib: 4096,
            cpus: 2,
            timeout: Duration::from_secs(1800),
            silence: Duration::from_secs(180),
            shares: Vec::new(),
            env: Vec::new(),
            cwd: None,
            kvm_probe: true,
            verbose: false,
        }
    }
}

/// Boots the lab, runs `command` (argv) as root inside, streams its output to stdout, and
/// returns its exit status (or [`LAB_FAILED`]).
pub fn run(command: &[String], opts: &Options) -> Result<i32> {
    if command.is_empty() {
        bail!("no command given to run in the lab");
    }
    apt::ensure(&["qemu-system-x86"])?;
    let kernel = kernel::ensure(Flavor::Lab)?;
    let root = rootfs::ensure()?;
    let mut opts = opts.clone();
    opts.env.splice(0..0, lab_env()?);
    let mut qemu = qemu_command(&kernel.bzimage, &root, &script(command, &opts)?, &opts)?;
    let (monitor, qemu_end) = monitor::pair()?;
    qemu.args(qemu_end.qemu_args());
    let started = Instant::now();
    let child = spawn(&mut qemu, qemu_end.fd())?;
    drop(qemu_end);
    let stuck = Stuck {
        monitor,
        vmlinux: kernel.vmlinux,
    };
    supervise(child, started, &opts, Some(stuck), &mut std::io::stdout())
}

/// What tells where a stuck lab host is: its QEMU monitor and its kernel's symbols.
struct Stuck {
    monitor: Monitor,
    vmlinux: PathBuf,
}

/// What every command in the lab finds in its environment: where the cache and the guest
/// kernel are (tests of other crates boot it), and that it runs in the lab.
fn lab_env() -> Result<Vec<(String, String)>> {
    let guest = kernel::locate(Flavor::Guest)?;
    Ok(vec![
        ("CRX_IN_LAB".into(), "1".into()),
        // VM templates on the lab host's own disk (its root, a snapshot dropped after the
        // run), not on the 9p share of the cache: every clone maps a template's memory file.
        ("CRX_TEMPLATE_DIR".into(), "/var/tmp/crx-templates".into()),
        (
            "CRX_CACHE".into(),
            cache::root().to_string_lossy().into_owned(),
        ),
        ("CRX_LINUX_SOURCE_VERSION".into(), kernel::source_version()?),
        (
            "CRX_GUEST_KERNEL_DIR".into(),
            guest.dir.to_string_lossy().into_owned(),
        ),
    ])
}

/// The shell script run inside: environment, working directory, then the command.
fn script(command: &[String], opts: &Options) -> Result<String> {
    let cwd = match &opts.cwd {
        Some(d) => d.clone(),
        None => std::env::current_dir()?,
    };
    // The heartbeat, in the background (on the console, as the command's output is).
    let mut s = heartbeat(opts.silence);
    for (k, v) in &opts.env {
        s.push_str(&format!("export {k}={}\n", shell_quote(v)));
    }
    s.push_str(&format!(
        "cd {} || exit 125\n",
        shell_quote(&cwd.to_string_lossy())
    ));
    let argv: Vec<String> = command.iter().map(|a| shell_quote(a)).collect();
    s.push_str(&argv.join(" "));
    s.push('\n');
    Ok(s)
}

/// The shell lines that start the heartbeat: six per `silence`, at least one a second.
fn heartbeat(silence: Duration) -> String {
    let every = (silence.as_secs() / 6).max(1);
    format!(
        "(while sleep {every}; do echo {HEARTBEAT}; done) </dev/null &\necho $! > {HEARTBEAT_PID_FILE}\n"
    )
}

fn shares(opts: &Options) -> Vec<PathBuf> {
    let mut dirs = vec![workspace_root(), cache::root()];
    for d in &opts.shares {
        if !dirs.contains(d) {
            dirs.push(d.clone());
        }
    }
    dirs
}

fn qemu_command(bzimage: &Path, root: &Path, script: &str, opts: &Options) -> Result<Command> {
    let encoded = base64(script.as_bytes());
    let probe = if opts.kvm_probe {
        std::env::current_exe()?.to_string_lossy().into_owned()
    } else {
        "-".into()
    };
    let mut share_args = Vec::new();
    let mut share_param = Vec::new();
    for (i, dir) in shares(opts).iter().enumerate() {
        let dir = dir.to_string_lossy();
        if dir.contains([',', ' ', ':']) {
            bail!("cannot share {dir} with the lab: its path contains ',', ':' or a space");
        }
        share_args.push(format!(
            "-fsdev local,id=fs{i},path={dir},security_model=none"
        ));
        share_args.push(format!(
            "-device virtio-9p-device,fsdev=fs{i},mount_tag=share{i}"
        ));
        share_param.push(format!("share{i}:{dir}"));
    }
    let quiet = if opts.verbose {
        ""
    } else {
        " quiet loglevel=1"
    };
    let append = format!(
        "console=ttyS0 reboot=t panic=-1 root=/dev/vda rw rootfstype=ext4 init=/sbin/crx-lab-init{quiet}{} \
         {LAB_KVM_PARAMS} crxlab.shares={} crxlab.local={} crxlab.probe={probe} crxlab.cmd={encoded}",
        tsc_params(),
        share_param.join(","),
        cache::root().join("templates").to_string_lossy(),
    );
    // QEMU's microvm appends one `virtio_mmio.device=...` (under 48 bytes) per device; what
    // passes x86's 2048-byte limit is cut off, and the devices at the end silently vanish.
    let devices = 1 + shares(opts).len();
    let room = COMMAND_LINE_SIZE - 1 - 48 * devices;
    if append.len() > room {
        bail!(
            "the command is too long for the lab's kernel command line ({} bytes, room for {room}); \
             put it in a script under the workspace and run that",
            append.len()
        );
    }
    let mut c = Command::new("qemu-system-x86_64");
    c.args(MICROVM)
        .args(["-accel", "tcg,thread=multi", "-cpu", "max"])
        .args([
            "-smp",
            &opts.cpus.to_string(),
            "-m",
            &format!("{}M", opts.memory_mib),
        ])
        .arg("-kernel")
        .arg(bzimage)
        .args(["-append", &append])
        .arg("-drive")
        .arg(format!(
            "id=root,file={},format=raw,if=none,snapshot=on",
            root.display()
        ))
        .args(["-device", "virtio-blk-device,drive=root"]);
    for a in share_args {
        let (flag, value) = a.split_once(' ').unwrap_or((&a, ""));
        c.args([flag, value]);
    }
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    Ok(c)
}

/// Under TCG the lab's TSC ticks at the host's TSC rate. Telling the lab kernel that rate
/// matters: on a loaded host its own TSC calibration against the (emulated) PIT fails, it
/// marks the TSC unstable, and then its KVM never runs a nested guest's first instruction.
fn tsc_params() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let mhz = cpuinfo.lines().find_map(|l| {
        l.strip_prefix("cpu MHz")?
            .split(':')
            .nth(1)?
            .trim()
            .parse::<f64>()
            .ok()
    });
    match mhz {
        Some(mhz) if mhz > 0.0 => format!(" tsc_early_khz={} tsc=reliable", (mhz * 1000.0) as u64),
        _ => String::new(),
    }
}

/// Starts QEMU, which inherits `monitor_fd` (its end of the monitor) and dies with this
/// process.
fn spawn(qemu: &mut Command, monitor_fd: RawFd) -> Result<Child> {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the child between fork and exec and only makes the
    // async-signal-safe fcntl(2), prctl(2) and getppid(2) calls, on its own fd and process.
    unsafe {
        qemu.pre_exec(move || {
            if libc::fcntl(monitor_fd, libc::F_SETFD, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl: then nobody would stop QEMU.
            if libc::getppid() != parent {
                return Err(std::io::Error::other("parent exited"));
            }
            Ok(())
        });
    }
    qemu.spawn().context("starting qemu-system-x86_64")
}

enum Event {
    Line(Vec<u8>),
    Eof,
}

/// Removes the heartbeat from the console's lines. A heartbeat written while the command was
/// in the middle of a line ends that line early: the line's start is kept in `pending` and
/// joined to the next line, so the output reads as if no heartbeat had come. `None`: nothing
/// to print yet.
fn without_heartbeat(pending: &mut String, line: &str) -> Option<String> {
    match line.strip_suffix(HEARTBEAT) {
        Some(start) => {
            pending.push_str(start);
            None
        }
        None => Some(std::mem::take(pending) + line),
    }
}

/// Streams QEMU's console (the command's output) to `out` until the command's exit marker,
/// the time limit or a silent console.
fn supervise(
    mut child: Child,
    started: Instant,
    opts: &Options,
    mut stuck: Option<Stuck>,
    out: &mut dyn Write,
) -> Result<i32> {
    let stdout = child.stdout.take().context("qemu has no stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        loop {
            let mut line = Vec::new();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if tx.send(Event::Line(line)).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = tx.send(Event::Eof);
    });

    let deadline = started + opts.timeout;
    let mut boot_log = Vec::new();
    let mut begun = false;
    let mut status = None;
    let mut pending = String::new();
    // When the monitor last woke a silent lab host, until its heartbeat comes back; how often.
    let mut woken: Option<Instant> = None;
    let mut wakes = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let silence = if begun {
            opts.silence
        } else {
            opts.silence.max(BOOT_SILENCE)
        };
        match rx.recv_timeout(left.min(silence)) {
            Ok(Event::Line(raw)) => {
                let line = String::from_utf8_lossy(&raw);
                let Some(line) =
                    without_heartbeat(&mut pending, line.trim_end_matches(['\n', '\r']))
                else {
                    // A heartbeat.
                    if let Some(at) = woken.take() {
                        eprintln!(
                            "crx-lab: the lab host's heartbeat came back {:.1}s after the wake-up",
                            at.elapsed().as_secs_f64()
                        );
                    }
                    continue;
                };
                let line = line.as_str();
                if !begun {
                    if line.contains(BEGIN) {
                        begun = true;
                        eprintln!(
                            "crx-lab: lab host up in {:.1}s",
                            started.elapsed().as_secs_f64()
                        );
                    } else if opts.verbose {
                        eprintln!("{line}");
                    } else {
                        boot_log.push(line.to_string());
                    }
                    if line.starts_with("crx-lab:") {
                        eprintln!("{line}");
                    }
                    continue;
                }
                if status.is_some() {
                    // The lab host shutting down after the command.
                    if opts.verbose {
                        eprintln!("{line}");
                    }
                    continue;
                }
                if let Some(pos) = line.find(EXIT) {
                    if pos > 0 {
                        let _ = writeln!(out, "{}", &line[..pos]);
                    }
                    status = line[pos + EXIT.len()..].trim().parse::<i32>().ok();
                    continue;
                }
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
            Ok(Event::Eof) => break,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let (None, Some(stuck)) = (status, stuck.as_mut()) {
                    eprintln!(
                        "crx-lab: no output for a while: where the lab host's vCPUs are \
                         (its kernel: {})",
                        stuck.vmlinux.display()
                    );
                    eprint!("{}", stuck.monitor.vcpu_report(opts.cpus, &stuck.vmlinux));
                    // A lab host idle for good may have lost a wake-up (a timer or an
                    // interrupt): an NMI, and the monitor's traffic itself, wake QEMU's vCPUs
                    // and main loop. One more silence without a heartbeat: stuck.
                    if begun && woken.is_none() && wakes < MAX_WAKES && Instant::now() < deadline {
                        stuck.monitor.nmi();
                        wakes += 1;
                        woken = Some(Instant::now());
                        eprintln!(
                            "crx-lab: sent the lab host an NMI (wake-up {wakes} of {MAX_WAKES}); \
                             {}s more for its heartbeat",
                            silence.as_secs()
                        );
                        continue;
                    }
                }
                let _ = child.kill();
                let _ = child.wait();
                if let Some(code) = status {
                    eprintln!("crx-lab: command exited with {code}; the lab host did not shut down, it was stopped");
                    return Ok(code);
                }
                if Instant::now() < deadline {
                    eprintln!(
                        "crx-lab: THE LAB HOST IS STUCK: no output (not even its heartbeat) for \
                         {}s after {:.0}s{}; the lab was stopped",
                        silence.as_secs(),
                        started.elapsed().as_secs_f64(),
                        if begun { "" } else { ", while booting" }
                    );
                } else {
                    eprintln!(
                        "crx-lab: timed out after {}s; the lab was stopped",
                        opts.timeout.as_secs()
                    );
                }
                return Ok(LAB_FAILED);
            }
        }
    }
    let qemu_status = child.wait().context("waiting for qemu")?;
    match status {
        Some(code) => {
            eprintln!(
                "crx-lab: command exited with {code} ({:.1}s in all)",
                started.elapsed().as_secs_f64()
            );
            Ok(code)
        }
        None => {
            for line in &boot_log {
                eprintln!("{line}");
            }
            eprintln!("crx-lab: the lab ended without running the command to completion (qemu: {qemu_status})");
            Ok(LAB_FAILED)
        }
    }
}

/// Standard base64 (the lab decodes it with coreutils' `base64 -d`).
fn base64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_coreutils() {
        for input in [
            "",
            "a",
            "ab",
            "abc",
            "abcd",
            "cd '/x y' && echo \"$HOME\"\n",
        ] {
            let out = Command::new("base64")
                .arg("-w0")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            out.stdin
                .as_ref()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
            let out = out.wait_with_output().unwrap();
            assert_eq!(
                base64(input.as_bytes()),
                String::from_utf8(out.stdout).unwrap(),
                "{input:?}"
            );
        }
    }

    #[test]
    fn a_command_longer_than_the_kernel_command_line_is_refused() {
        let opts = Options::default();
        let long = "x".repeat(1500);
        let err = qemu_command(Path::new("bz"), Path::new("root"), &long, &opts).unwrap_err();
        assert!(err.to_string().contains("too long"), "{err}");
        assert!(qemu_command(Path::new("bz"), Path::new("root"), "true", &opts).is_ok());
    }

    #[test]
    fn script_quotes_arguments_and_sets_env() {
        let opts = Options {
            env: vec![("K".into(), "a b".into())],
            cwd: Some("/w".into()),
            ..Options::default()
        };
        let s = script(&["echo".into(), "x y".into()], &opts).unwrap();
        assert_eq!(
            s,
            format!(
                "{}export K='a b'\ncd /w || exit 125\necho 'x y'\n",
                heartbeat(opts.silence)
            )
        );
    }

    #[test]
    fn the_heartbeat_beats_six_times_per_silence() {
        let every = |s| {
            let h = heartbeat(Duration::from_secs(s));
            h.strip_prefix("(while sleep ")
                .and_then(|r| r.split_once(';'))
                .map(|(n, _)| n.to_string())
                .unwrap()
        };
        assert_eq!(every(180), "30");
        assert_eq!(every(12), "2");
        assert_eq!(every(3), "1");
    }

    #[test]
    fn heartbeats_vanish_from_the_output_even_mid_line() {
        let mut pending = String::new();
        let lines = [
            "test a ... ok",
            HEARTBEAT,
            &format!("test b ... {HEARTBEAT}"),
            "ok",
            &format!("x{HEARTBEAT}"),
            HEARTBEAT,
            "y",
        ];
        let out: Vec<String> = lines
            .iter()
            .filter_map(|l| without_heartbeat(&mut pending, l))
            .collect();
        assert_eq!(out, ["test a ... ok", "test b ... ok", "xy"]);
    }

    /// A stand-in for QEMU: `sh -c SCRIPT` with its stdout piped, as `spawn` makes it.
    fn fake_lab(script: &str) -> Child {
        Command::new("sh")
            .args(["-c", script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Supervises a [`fake_lab`] running `script` with a silence limit of `silence` seconds:
    /// its pid, the status `supervise` returned and the output it passed on.
    fn supervise_fake(script: &str, silence: u64) -> (u32, i32, String) {
        let opts = Options {
            silence: Duration::from_secs(silence),
            ..Options::default()
        };
        let child = fake_lab(script);
        let pid = child.id();
        let mut out = Vec::new();
        let code = supervise(child, Instant::now(), &opts, None, &mut out).unwrap();
        (pid, code, String::from_utf8(out).unwrap())
    }

    #[test]
    fn silence_stops_a_stuck_lab() {
        // Output, then silence; `exec` so that the kill reaches the sleeping process.
        let (pid, code, out) =
            supervise_fake(&format!("echo {BEGIN}; echo working; exec sleep 600"), 1);
        assert_eq!(code, LAB_FAILED);
        assert_eq!(out, "working\n");
        assert!(
            std::fs::metadata(format!("/proc/{pid}")).is_err(),
            "the stuck lab was not stopped"
        );
    }

    #[test]
    fn a_boot_quieter_than_the_silence_limit_is_not_stuck() {
        // Three quiet seconds before the command starts (the heartbeat starts with it).
        let (_, code, out) = supervise_fake(
            &format!("echo booting; sleep 3; echo {BEGIN}; echo ran; echo '{EXIT}0'"),
            1,
        );
        assert_eq!(code, 0);
        assert_eq!(out, "ran\n");
    }

    #[test]
    fn heartbeats_keep_alive_past_the_silence_limit() {
        // Five seconds without command output, heartbeats every 0.1 s, one mid-line.
        let (_, code, out) = supervise_fake(
            &format!(
                "echo {BEGIN}; printf 'test x ... '; i=0; while [ $i -lt 50 ]; do \
                 echo {HEARTBEAT}; sleep 0.1; i=$((i+1)); done; echo ok; echo '{EXIT}3'"
            ),
            2,
        );
        assert_eq!(code, 3);
        assert_eq!(out, "test x ... ok\n");
    }
}
