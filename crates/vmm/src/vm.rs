//! One microVM: KVM objects, guest memory, devices, vCPU threads and the event loop.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crx_devices::legacy::{
    BootTimer, Serial, BOOT_TIMER_LEN, BOOT_TIMER_PORT, COM1_GSI, COM1_LEN, COM1_PORT, I8042,
    I8042_KBD_GSI, I8042_LEN, I8042_PORT,
};
use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::boot::{self, BootError, BootPlan};
use crate::bus::{Bus, BusError, SharedDevice};
use crate::config::{SerialOutput, VmConfig};
use crate::event_loop::{install_signal_handlers, EventLoop, EventLoopError, Subscriber};
use crate::exit::{ExitLatch, VmExit};
use crate::memory::{create_guest_memory, create_shared_guest_memory, MemoryError};
use crate::regs::{self, RegsError};
use crate::vcpu::Vcpu;

/// Where KVM puts the TSS (three pages, below the IOAPIC; Intel needs it).
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

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
    /// How the guest was booted.
    pub boot: BootPlan,
}

/// A configured VM, ready to run.
pub struct Vm {
    _kvm: Kvm,
    _vm: VmFd,
    mem: GuestMemoryMmap,
    vcpus: Vec<Vcpu>,
    event_loop: EventLoop,
    serial: Arc<Mutex<Serial>>,
    latch: Arc<ExitLatch>,
    stop: Arc<AtomicBool>,
    boot: BootPlan,
    first_entry: Arc<Mutex<Option<Instant>>>,
    start: Instant,
    shutdown_hooks: Vec<Box<dyn FnOnce() + Send>>,
}

fn evt() -> Result<EventFd, VmError> {
    EventFd::new(libc::EFD_NONBLOCK).map_err(|e| VmError::Io("cannot create an eventfd", e))
}

impl Vm {
    /// Creates the VM, loads the kernel, sets up devices and vCPUs.
    pub fn new(cfg: &VmConfig, mut opts: VmOptions) -> Result<Self, VmError> {
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let vm = kvm
            .create_vm()
            .map_err(|e| VmError::Kvm("KVM_CREATE_VM", e))?;
        vm.set_tss_address(KVM_TSS_ADDRESS)
            .map_err(|e| VmError::Kvm("KVM_SET_TSS_ADDR", e))?;
        vm.create_irq_chip()
            .map_err(|e| VmError::Kvm("KVM_CREATE_IRQCHIP", e))?;
        vm.create_pit2(kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        })
        .map_err(|e| VmError::Kvm("KVM_CREATE_PIT2", e))?;

        let mem = if cfg.fs.is_empty() {
            create_guest_memory(cfg.memory_mib << 20)?
        } else {
            create_shared_guest_memory(cfg.memory_mib << 20)?
        };
        let mut mmio = Bus::new();
        let virtio = crate::virtio::attach(&vm, &mem, cfg, &mut mmio)?;
        let boot = boot::load(&mem, cfg, &virtio.cmdline)?;
        for (slot, region) in mem.iter().enumerate() {
            let host = mem.get_host_address(region.start_addr()).map_err(|_| {
                VmError::Io(
                    "guest RAM region without host address",
                    std::io::Error::other("vm-memory"),
                )
            })?;
            let r = kvm_userspace_memory_region {
                slot: slot as u32,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
                flags: 0,
            };
            if std::env::var_os("CRX_VMM_DEBUG").is_some() {
                let _ = writeln!(
                    std::io::stderr(),
                    "guest-ram: host={:#x}-{:#x} guest={:#x}",
                    host as u64,
                    host as u64 + region.len(),
                    region.start_addr().0
                );
            }
            // SAFETY: `host..host+len` is a live mapping owned by `mem`, which the returned
            // Vm keeps alive for as long as the VM fd (both dropped together); slots are unique.
            unsafe { vm.set_user_memory_region(r) }
                .map_err(|e| VmError::Kvm("KVM_SET_USER_MEMORY_REGION", e))?;
        }

        // Devices.
        let latch = Arc::new(ExitLatch::new().map_err(|e| VmError::Io("eventfd", e))?);
        let mut pio = Bus::new();
        let serial_irq = evt()?;
        vm.register_irqfd(&serial_irq, COM1_GSI)
            .map_err(|e| VmError::Kvm("KVM_IRQFD (serial)", e))?;
        let out: Box<dyn Write + Send> = match opts.serial_out.take() {
            Some(o) => o,
            None => match &cfg.serial {
                SerialOutput::Stdout => Box::new(std::io::stdout()),
                SerialOutput::Off => Box::new(std::io::sink()),
                SerialOutput::File(p) => Box::new(
                    OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(p)
                        .map_err(|e| VmError::Io("cannot open the serial output file", e))?,
                ),
            },
        };
        let serial = Arc::new(Mutex::new(Serial::new(serial_irq, out)));
        pio.insert(COM1_PORT, COM1_LEN, serial.clone())?;
        let reset_evt = evt()?;
        let kbd_irq = evt()?;
        vm.register_irqfd(&kbd_irq, I8042_KBD_GSI)
            .map_err(|e| VmError::Kvm("KVM_IRQFD (i8042)", e))?;
        let reset_clone = reset_evt
            .try_clone()
            .map_err(|e| VmError::Io("eventfd", e))?;
        let reset_for_vcpus = reset_evt
            .try_clone()
            .map_err(|e| VmError::Io("eventfd", e))?;
        pio.insert(
            I8042_PORT,
            I8042_LEN,
            Arc::new(Mutex::new(
                I8042::new(reset_clone).with_kbd_interrupt(kbd_irq),
            )),
        )?;
        if cfg.boot_timer {
            let out = opts
                .boot_timer_out
                .take()
                .unwrap_or_else(|| Box::new(std::io::stderr()));
            pio.insert(
                BOOT_TIMER_PORT,
                BOOT_TIMER_LEN,
                Arc::new(Mutex::new(BootTimer::new(opts.start, out))),
            )?;
        }
        for (base, len, dev) in opts.extra_mmio.drain(..) {
            mmio.insert(base, len, dev)?;
        }

        let signal = if opts.handle_signals {
            Some(
                install_signal_handlers()
                    .map_err(|e| VmError::Io("cannot install signal handlers", e))?,
            )
        } else {
            None
        };
        let mut event_loop = EventLoop::new(reset_evt, signal, latch.clone())?;
        for s in virtio
            .subscribers
            .into_iter()
            .chain(opts.subscribers.drain(..))
        {
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

        // vCPUs: CPUID before SREGS (KVM refuses long-mode SREGS otherwise).
        let base_cpuid = regs::supported_cpuid(&kvm).map_err(|e| VmError::Regs(0, e))?;
        let (pio, mmio) = (Arc::new(pio), Arc::new(mmio));
        let stop = Arc::new(AtomicBool::new(false));
        let first_entry = Arc::new(Mutex::new(None));
        let mut vcpus = Vec::new();
        for id in 0..cfg.vcpus {
            let fd = vm
                .create_vcpu(u64::from(id))
                .map_err(|e| VmError::Kvm("KVM_CREATE_VCPU", e))?;
            let r = |e| VmError::Regs(id, e);
            regs::set_cpuid(&fd, &base_cpuid, id, cfg.vcpus).map_err(r)?;
            regs::set_msrs(&fd).map_err(r)?;
            regs::set_fpu(&fd).map_err(r)?;
            regs::set_lint(&fd).map_err(r)?;
            if id == 0 {
                regs::set_boot_registers(&fd, boot.entry).map_err(r)?;
            }
            let on_first_entry: Option<Box<dyn FnOnce(Instant) + Send>> = if id == 0 {
                let slot = first_entry.clone();
                Some(Box::new(move |t| {
                    *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(t);
                }))
            } else {
                None
            };
            vcpus.push(Vcpu {
                fd,
                id,
                pio: pio.clone(),
                mmio: mmio.clone(),
                mem: mem.clone(),
                stop: stop.clone(),
                exit: latch.clone(),
                on_first_entry,
                reset_evt: Some(
                    reset_for_vcpus
                        .try_clone()
                        .map_err(|e| VmError::Io("eventfd", e))?,
                ),
                stats: (0, 0),
            });
        }

        Ok(Vm {
            _kvm: kvm,
            _vm: vm,
            mem,
            vcpus,
            event_loop,
            serial,
            latch,
            stop,
            boot,
            first_entry,
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
        let result = self.event_loop.run_until_exit();
        self.stop_vcpus(threads);
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
