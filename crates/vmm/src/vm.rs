//! One microVM: KVM objects, guest memory, devices, vCPU threads and the event loop.

use std::io::Write;
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crx_devices::legacy::Serial;
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::GuestMemoryMmap;

use crate::boot::{self, BootError, BootPlan};
use crate::bus::{Bus, BusError, SharedDevice};
use crate::config::{SerialOutput, VmConfig};
use crate::event_loop::{install_signal_handlers, EventLoop, EventLoopError, Subscriber};
use crate::exit::{ExitLatch, VmExit};
use crate::memory::MemoryError;
use crate::regs::RegsError;
use crate::snapshot::devices::Devices;
use crate::snapshot::vcpu::VcpuSync;
use crate::snapshot::{SnapshotError, SnapshotTarget};
use crate::vcpu::Vcpu;

mod attach;
mod snapshot;

/// Errors while building or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// /dev/kvm could not be opened.
    #[error("/dev/kvm: cannot open (does it exist? add the user to the kvm group or run as root)")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// A KVM VM-level call failed.
    #[error("{0} failed")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Loading the kernel, initrds, boot structures.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// vCPU register setup.
    #[error("vCPU {0} setup")]
    Regs(u8, #[source] RegsError),
    /// A device could not be placed on a bus.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// Creating an eventfd or opening an output.
    #[error("{0}")]
    Io(&'static str, #[source] std::io::Error),
    /// The event loop.
    #[error(transparent)]
    EventLoop(#[from] EventLoopError),
    /// virtio devices.
    #[error(transparent)]
    Virtio(#[from] crate::virtio::VirtioError),
    /// A thread's seccomp filter could not be installed.
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    /// A vCPU thread could not be spawned.
    #[error("cannot spawn vCPU thread {0}")]
    SpawnVcpu(u8, #[source] std::io::Error),
    /// Taking or restoring a snapshot.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
}

/// Knobs for embedding the VMM (tests, benchmarks) that are not part of the VM config.
pub struct VmOptions {
    /// The VMM process start: boot-timer times are relative to it.
    pub start: Instant,
    /// Route SIGTERM/SIGINT to a clean stop (the binary does; in-process tests do not).
    pub handle_signals: bool,
    /// Replaces the configured serial output.
    pub serial_out: Option<Box<dyn Write + Send>>,
    /// Where boot-timer lines go (default: stderr).
    pub boot_timer_out: Option<Box<dyn Write + Send>>,
    /// Extra MMIO devices: `(base, len, device)`.
    pub extra_mmio: Vec<(u64, u64, SharedDevice)>,
    /// Extra event-loop subscribers (device queue handlers).
    pub subscribers: Vec<Subscriber>,
    /// Feed stdin to the serial console (the binary does when the console is stdout).
    pub serial_input: bool,
    /// Run at shutdown, after vCPUs stopped (flush disks).
    pub shutdown_hooks: Vec<Box<dyn FnOnce() + Send>>,
    /// Where a guest-requested snapshot goes (`--snapshot-on-port`), prepared before the guest
    /// runs.
    pub snapshot: Option<SnapshotTarget>,
    /// Build the VM from the snapshot in this directory instead of booting (`--restore`).
    pub restore: Option<std::path::PathBuf>,
}

impl Default for VmOptions {
    fn default() -> Self {
        VmOptions {
            start: Instant::now(),
            handle_signals: false,
            serial_out: None,
            boot_timer_out: None,
            extra_mmio: Vec::new(),
            subscribers: Vec::new(),
            serial_input: false,
            shutdown_hooks: Vec::new(),
            snapshot: None,
            restore: None,
        }
    }
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// Why the VM stopped.
    pub exit: VmExit,
    /// Time from `VmOptions::start` to vCPU 0's first KVM_RUN.
    pub first_entry: Option<Duration>,
    /// How the guest was booted (`None`: restored from a snapshot).
    pub boot: Option<BootPlan>,
}

/// A configured VM, ready to run.
pub struct Vm {
    _kvm: Kvm,
    vm_fd: VmFd,
    mem: GuestMemoryMmap,
    devices: Devices,
    snapshot: Option<(SnapshotTarget, Arc<VcpuSync>)>,
    vcpus: Vec<Vcpu>,
    event_loop: EventLoop,
    serial: Arc<Mutex<Serial>>,
    latch: Arc<ExitLatch>,
    stop: Arc<AtomicBool>,
    boot: Option<BootPlan>,
    first_entry: Arc<Mutex<Option<Instant>>>,
    start: Instant,
    shutdown_hooks: Vec<Box<dyn FnOnce() + Send>>,
}

impl Vm {
    /// Creates the VM, loads the kernel (or the snapshot in `opts.restore`), sets up devices
    /// and vCPUs: one attach step each.
    pub fn new(cfg: &VmConfig, mut opts: VmOptions) -> Result<Self, VmError> {
        let loaded = snapshot::load(cfg, opts.restore.take())?;
        let (kvm, vm) = attach::create_vm()?;
        let mem = match &loaded {
            Some(l) => snapshot::memory(cfg, l)?,
            None => attach::guest_memory(cfg)?,
        };
        let mut mmio = Bus::new();
        let mut virtio = crate::virtio::attach(&vm, &mem, cfg, &mut mmio)?;
        let boot = match loaded {
            None => Some(boot::load(&mem, cfg, &virtio.cmdline)?),
            Some(_) => None,
        };
        attach::register_memory(&vm, &mem)?;

        let latch = Arc::new(ExitLatch::new().map_err(|e| VmError::Io("eventfd", e))?);
        let mut pio = Bus::new();
        let serial = attach::serial(&vm, cfg, opts.serial_out.take(), &mut pio)?;
        let (reset_evt, i8042) = attach::i8042(&vm, &mut pio)?;
        let boot_timer = match cfg.boot_timer {
            true => Some(attach::boot_timer(
                opts.start,
                opts.boot_timer_out.take(),
                &mut pio,
            )?),
            false => None,
        };
        for (base, len, dev) in opts.extra_mmio.drain(..) {
            mmio.insert(base, len, dev)?;
        }
        let devices = Devices {
            serial: serial.clone(),
            i8042,
            boot_timer,
            virtio: std::mem::take(&mut virtio.transports),
        };

        let signal = match opts.handle_signals {
            true => Some(
                install_signal_handlers()
                    .map_err(|e| VmError::Io("cannot install signal handlers", e))?,
            ),
            false => None,
        };
        let reset_for_vcpus = reset_evt
            .try_clone()
            .map_err(|e| VmError::Io("eventfd", e))?;
        let snapshot = snapshot::sync(&kvm, cfg, opts.snapshot.take())?;
        let on_signal = snapshot::signal_request(&snapshot, opts.handle_signals)?;
        let mut event_loop = EventLoop::new(reset_evt, signal, latch.clone(), on_signal)?;
        for s in virtio.subscribers.into_iter().chain(opts.subscribers) {
            event_loop.add_subscriber(s);
        }
        if opts.serial_input && cfg.serial == SerialOutput::Stdout {
            event_loop.add_subscriber(Arc::new(Mutex::new(crate::console::StdinToSerial::new(
                serial.clone(),
            ))));
        }
        let mut shutdown_hooks = opts.shutdown_hooks;
        for f in virtio.flush_files {
            // Guest writes were done with pwrite on the event-loop thread, which has stopped:
            // make them durable before the process exits.
            shutdown_hooks.push(Box::new(move || {
                let _ = f.sync_data();
            }));
        }

        let shared = attach::VcpuShared {
            pio: Arc::new(pio),
            mmio: Arc::new(mmio),
            mem: mem.clone(),
            stop: Arc::new(AtomicBool::new(false)),
            latch: latch.clone(),
            reset_evt: reset_for_vcpus,
            first_entry: Arc::new(Mutex::new(None)),
            snapshot: snapshot.as_ref().map(|(_, s)| s.clone()),
        };
        let vcpus = match (&loaded, boot) {
            (Some(l), _) => snapshot::restore(&vm, l, &devices, &shared)?,
            (None, Some(b)) => attach::vcpus(&kvm, &vm, cfg.vcpus, b.entry, &shared)?,
            (None, None) => Vec::new(),
        };
        Ok(Vm {
            _kvm: kvm,
            vm_fd: vm,
            mem,
            devices,
            snapshot,
            vcpus,
            event_loop,
            serial,
            latch,
            stop: shared.stop,
            boot,
            first_entry: shared.first_entry,
            start: opts.start,
            shutdown_hooks,
        })
    }

    /// Guest memory (for embedding callers that inspect it).
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Starts the vCPUs, runs the event loop until an exit reason, stops everything.
    pub fn run(mut self) -> Result<RunReport, VmError> {
        install_kick_handler();
        let mut threads: Vec<JoinHandle<()>> = Vec::new();
        for v in std::mem::take(&mut self.vcpus) {
            let id = v.id;
            let h = std::thread::Builder::new()
                .name(format!("vcpu{id}"))
                .spawn(move || v.run());
            match h {
                Ok(h) => threads.push(h),
                Err(e) => {
                    self.stop_vcpus(threads);
                    return Err(VmError::SpawnVcpu(id, e));
                }
            }
        }
        // Both threads' filters are in force before vCPU 0 enters the guest (ADR 0010).
        if let Err(e) = crate::seccomp::enter_main() {
            self.stop_vcpus(threads);
            return Err(e.into());
        }
        let mut result = self.event_loop.run_until_exit();
        self.stop_vcpus(threads);
        if let Ok(VmExit::Snapshot) = result {
            if let Err(e) = self.write_snapshot() {
                result = Ok(VmExit::SnapshotFailed(crx_proto::chain(&e)));
            }
        }
        let _ = self
            .serial
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .flush();
        for hook in self.shutdown_hooks.drain(..) {
            hook();
        }
        let exit = match result {
            Ok(e) => e,
            Err(e) => {
                self.latch.set(VmExit::VcpuFailed {
                    vcpu: 0,
                    detail: e.to_string(),
                });
                return Err(e.into());
            }
        };
        let first_entry = self
            .first_entry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|t| t.saturating_duration_since(self.start));
        Ok(RunReport {
            exit,
            first_entry,
            boot: self.boot,
        })
    }

    fn stop_vcpus(&self, threads: Vec<JoinHandle<()>>) {
        self.stop.store(true, Ordering::Release);
        let sig = kick_signal();
        // A kick can land between a vCPU's stop check and its KVM_RUN; repeat until all left.
        let deadline = Instant::now() + Duration::from_secs(5);
        while threads.iter().any(|t| !t.is_finished()) && Instant::now() < deadline {
            for t in threads.iter().filter(|t| !t.is_finished()) {
                // SAFETY: the thread has not been joined, so its pthread_t is valid; the kick
                // signal has a no-op handler installed by `install_kick_handler`.
                unsafe { libc::pthread_kill(t.as_pthread_t(), sig) };
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        for t in threads {
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

fn install_kick_handler() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        if let Err(e) = vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick) {
            let _ = writeln!(
                std::io::stderr(),
                "crx-vmm: cannot install the vCPU kick handler: {e}"
            );
        }
    });
}

/// Builds and runs a VM to completion.
pub fn run_vm(cfg: &VmConfig, opts: VmOptions) -> Result<RunReport, VmError> {
    Vm::new(cfg, opts)?.run()
}
