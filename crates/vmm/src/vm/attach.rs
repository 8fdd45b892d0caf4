//! The steps of [`super::Vm::new`], one per part of the machine: the KVM VM with its
//! interrupt controller and timer, guest memory, the legacy devices on the port-I/O bus, and
//! the vCPUs. (The virtio devices attach in `crate::virtio`.)

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crx_devices::legacy::{
    BootTimer, Serial, BOOT_TIMER_LEN, BOOT_TIMER_PORT, COM1_GSI, COM1_LEN, COM1_PORT, I8042,
    I8042_KBD_GSI, I8042_LEN, I8042_PORT,
};
use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::VmError;
use crate::bus::Bus;
use crate::config::{SerialOutput, VmConfig};
use crate::exit::ExitLatch;
use crate::memory::{create_guest_memory, create_shared_guest_memory};
use crate::regs;
use crate::vcpu::Vcpu;

/// Where KVM puts the TSS (three pages, below the IOAPIC; Intel needs it).
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

fn evt() -> Result<EventFd, VmError> {
    EventFd::new(libc::EFD_NONBLOCK).map_err(|e| VmError::Io("cannot create an eventfd", e))
}

/// Opens KVM and creates the VM with its in-kernel interrupt controllers and PIT.
pub(super) fn create_vm() -> Result<(Kvm, VmFd), VmError> {
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
    Ok((kvm, vm))
}

/// Guest RAM: private, or a shared memfd when a vhost-user backend (virtio-fs) maps it too.
pub(super) fn guest_memory(cfg: &VmConfig) -> Result<GuestMemoryMmap, VmError> {
    let bytes = cfg.memory_mib << 20;
    Ok(match cfg.fs.is_empty() {
        true => create_guest_memory(bytes)?,
        false => create_shared_guest_memory(bytes)?,
    })
}

/// Hands each guest RAM region to KVM as a memory slot.
pub(super) fn register_memory(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), VmError> {
    for (slot, region) in mem.iter().enumerate() {
        let start: GuestAddress = region.start_addr();
        let host = mem.get_host_address(start).map_err(|_| {
            VmError::Io(
                "guest RAM region without host address",
                std::io::Error::other("vm-memory"),
            )
        })?;
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: start.0,
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
                start.0
            );
        }
        // SAFETY: `host..host+len` is a live mapping owned by `mem`, which the Vm keeps alive
        // for as long as the VM fd (both dropped together); slots are unique.
        unsafe { vm.set_user_memory_region(r) }
            .map_err(|e| VmError::Kvm("KVM_SET_USER_MEMORY_REGION", e))?;
    }
    Ok(())
}

/// The 8250 console on COM1, writing to `out` (else where the config says).
pub(super) fn serial(
    vm: &VmFd,
    cfg: &VmConfig,
    out: Option<Box<dyn Write + Send>>,
    pio: &mut Bus,
) -> Result<Arc<Mutex<Serial>>, VmError> {
    let irq = evt()?;
    vm.register_irqfd(&irq, COM1_GSI)
        .map_err(|e| VmError::Kvm("KVM_IRQFD (serial)", e))?;
    let out: Box<dyn Write + Send> = match out {
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
    let serial = Arc::new(Mutex::new(Serial::new(irq, out)));
    pio.insert(COM1_PORT, COM1_LEN, serial.clone())?;
    Ok(serial)
}

/// The i8042 (the guest's reset line, a keyboard interrupt); returns the eventfd its reset
/// request signals, and the device.
pub(super) fn i8042(vm: &VmFd, pio: &mut Bus) -> Result<(EventFd, Arc<Mutex<I8042>>), VmError> {
    let reset_evt = evt()?;
    let kbd_irq = evt()?;
    vm.register_irqfd(&kbd_irq, I8042_KBD_GSI)
        .map_err(|e| VmError::Kvm("KVM_IRQFD (i8042)", e))?;
    let device_side = reset_evt
        .try_clone()
        .map_err(|e| VmError::Io("eventfd", e))?;
    let dev = Arc::new(Mutex::new(
        I8042::new(device_side).with_kbd_interrupt(kbd_irq),
    ));
    pio.insert(I8042_PORT, I8042_LEN, dev.clone())?;
    Ok((reset_evt, dev))
}

/// The boot-timer port: guest writes logged with the time since `start` (to stderr by default).
pub(super) fn boot_timer(
    start: Instant,
    out: Option<Box<dyn Write + Send>>,
    pio: &mut Bus,
) -> Result<Arc<Mutex<BootTimer>>, VmError> {
    let out = out.unwrap_or_else(|| Box::new(std::io::stderr()));
    let dev = Arc::new(Mutex::new(BootTimer::new(start, out)));
    pio.insert(BOOT_TIMER_PORT, BOOT_TIMER_LEN, dev.clone())?;
    Ok(dev)
}

/// What every vCPU thread shares with the VM.
pub(super) struct VcpuShared {
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub mem: GuestMemoryMmap,
    pub stop: Arc<AtomicBool>,
    pub latch: Arc<ExitLatch>,
    /// The i8042's reset eventfd (each vCPU gets a clone).
    pub reset_evt: EventFd,
    /// When vCPU 0 first entered the guest.
    pub first_entry: Arc<Mutex<Option<Instant>>>,
    /// Set when the VM may be snapshotted.
    pub snapshot: Option<Arc<crate::snapshot::vcpu::VcpuSync>>,
}

/// Creates `count` vCPUs (CPUID before SREGS: KVM refuses long-mode SREGS otherwise); vCPU 0
/// starts at `entry`, the others wait for the guest's INIT/SIPI.
pub(super) fn vcpus(
    kvm: &Kvm,
    vm: &VmFd,
    count: u8,
    entry: crate::boot::EntryPoint,
    shared: &VcpuShared,
) -> Result<Vec<Vcpu>, VmError> {
    let base_cpuid = regs::supported_cpuid(kvm).map_err(|e| VmError::Regs(0, e))?;
    let mut vcpus = Vec::new();
    for id in 0..count {
        let v = vcpu(vm, id, shared)?;
        let r = |e| VmError::Regs(id, e);
        regs::set_cpuid(&v.fd, &base_cpuid, id, count).map_err(r)?;
        regs::set_msrs(&v.fd).map_err(r)?;
        regs::set_fpu(&v.fd).map_err(r)?;
        regs::set_lint(&v.fd).map_err(r)?;
        if id == 0 {
            regs::set_boot_registers(&v.fd, entry).map_err(r)?;
        }
        vcpus.push(v);
    }
    Ok(vcpus)
}

/// Creates one vCPU per saved state and loads the state into it.
pub(super) fn restored_vcpus(
    vm: &VmFd,
    states: &[crate::snapshot::state::VcpuState],
    shared: &VcpuShared,
) -> Result<Vec<Vcpu>, VmError> {
    let mut vcpus = Vec::new();
    for (id, state) in states.iter().enumerate() {
        let id = id as u8;
        let v = vcpu(vm, id, shared)?;
        crate::snapshot::vcpu::restore(&v.fd, state)
            .map_err(|e| crate::snapshot::SnapshotError::Vcpu(id, e))?;
        vcpus.push(v);
    }
    Ok(vcpus)
}

/// KVM_CREATE_VCPU and the thread's share of the VM; vCPU 0 reports its first entry.
fn vcpu(vm: &VmFd, id: u8, shared: &VcpuShared) -> Result<Vcpu, VmError> {
    let fd = vm
        .create_vcpu(u64::from(id))
        .map_err(|e| VmError::Kvm("KVM_CREATE_VCPU", e))?;
    let on_first_entry: Option<Box<dyn FnOnce(Instant) + Send>> = match id {
        0 => {
            let slot = shared.first_entry.clone();
            Some(Box::new(move |t| {
                *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(t);
            }))
        }
        _ => None,
    };
    Ok(Vcpu {
        fd,
        id,
        pio: shared.pio.clone(),
        mmio: shared.mmio.clone(),
        mem: shared.mem.clone(),
        stop: shared.stop.clone(),
        exit: shared.latch.clone(),
        on_first_entry,
        reset_evt: Some(
            shared
                .reset_evt
                .try_clone()
                .map_err(|e| VmError::Io("eventfd", e))?,
        ),
        stats: (0, 0),
        snapshot: shared.snapshot.clone(),
    })
}
