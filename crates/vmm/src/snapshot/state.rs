//! What a snapshot's state file holds (encoded with postcard after the header, see
//! [`super::format`]): the KVM VM's interrupt controllers, PIT and clock, each vCPU, and each
//! device. The KVM structures are kept as KVM gives them (kvm-bindings' serde: their bytes).

use crx_devices::legacy::{BootTimerState, I8042State, SerialState};
use crx_devices::virtio::TransportState;
use kvm_bindings::{
    kvm_clock_data, kvm_cpuid_entry2, kvm_debugregs, kvm_fpu, kvm_irqchip, kvm_lapic_state,
    kvm_mp_state, kvm_msr_entry, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs,
    kvm_xsave,
};
use serde::{Deserialize, Serialize};

/// Most vCPUs a state file may describe (crx-vmm's own limit, `vcpus` <= 254).
pub const MAX_VCPUS: usize = 254;
/// Most CPUID entries per vCPU (KVM's `KVM_MAX_CPUID_ENTRIES`).
pub const MAX_CPUID_ENTRIES: usize = kvm_bindings::KVM_MAX_CPUID_ENTRIES;
/// Most MSRs per vCPU (KVM's `KVM_MAX_MSR_ENTRIES`).
pub const MAX_MSRS: usize = kvm_bindings::KVM_MAX_MSR_ENTRIES;
/// Most virtio devices (one per interrupt line crx-vmm hands out).
pub const MAX_VIRTIO: usize = 64;

/// The whole machine but its memory.
#[derive(Debug, Serialize, Deserialize)]
pub struct VmState {
    /// Guest RAM in bytes (the memory file's length).
    pub memory_bytes: u64,
    /// The KVM VM's own state.
    pub kvm: KvmVmState,
    /// Each vCPU, by index.
    pub vcpus: Vec<VcpuState>,
    /// The devices.
    pub devices: DevicesState,
}

/// The in-kernel devices of the KVM VM and its clock.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KvmVmState {
    /// KVM_GET_IRQCHIP, chip 0 (master 8259).
    pub pic_master: kvm_irqchip,
    /// Chip 1 (slave 8259).
    pub pic_slave: kvm_irqchip,
    /// Chip 2 (IOAPIC).
    pub ioapic: kvm_irqchip,
    /// KVM_GET_PIT2.
    pub pit: kvm_pit_state2,
    /// KVM_GET_CLOCK (kvmclock).
    pub clock: kvm_clock_data,
}

/// One vCPU.
#[derive(Debug, Serialize, Deserialize)]
pub struct VcpuState {
    /// CPUID as configured (KVM_GET_CPUID2).
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// MSRs (KVM's index list, filtered; see `msrs`).
    pub msrs: Vec<kvm_msr_entry>,
    /// General registers.
    pub regs: kvm_regs,
    /// Segment and control registers.
    pub sregs: kvm_sregs,
    /// x87/SSE state (KVM_GET_FPU).
    pub fpu: FpuState,
    /// XSAVE area, where KVM has KVM_CAP_XSAVE (supersedes `fpu` on restore).
    pub xsave: Option<kvm_xsave>,
    /// Extended control registers, where KVM has KVM_CAP_XCRS.
    pub xcrs: Option<kvm_xcrs>,
    /// Local APIC registers.
    pub lapic: kvm_lapic_state,
    /// Pending exceptions, interrupts, NMIs, SMIs.
    pub events: kvm_vcpu_events,
    /// Runnable, halted, waiting for SIPI...
    pub mp_state: kvm_mp_state,
    /// Debug registers.
    pub debug_regs: kvm_debugregs,
    /// The vCPU's TSC frequency, where KVM reports it (recorded, not yet enforced).
    pub tsc_khz: Option<u32>,
}

/// `kvm_fpu`'s fields (kvm-bindings has no serde for it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FpuState {
    /// ST0-ST7.
    pub fpr: [[u8; 16]; 8],
    /// Control word.
    pub fcw: u16,
    /// Status word.
    pub fsw: u16,
    /// Abridged tag word.
    pub ftwx: u8,
    /// Last opcode.
    pub last_opcode: u16,
    /// Last instruction pointer.
    pub last_ip: u64,
    /// Last data pointer.
    pub last_dp: u64,
    /// XMM0-XMM15.
    pub xmm: [[u8; 16]; 16],
    /// MXCSR.
    pub mxcsr: u32,
}

impl From<&kvm_fpu> for FpuState {
    fn from(f: &kvm_fpu) -> Self {
        FpuState {
            fpr: f.fpr,
            fcw: f.fcw,
            fsw: f.fsw,
            ftwx: f.ftwx,
            last_opcode: f.last_opcode,
            last_ip: f.last_ip,
            last_dp: f.last_dp,
            xmm: f.xmm,
            mxcsr: f.mxcsr,
        }
    }
}

impl From<&FpuState> for kvm_fpu {
    fn from(f: &FpuState) -> Self {
        kvm_fpu {
            fpr: f.fpr,
            fcw: f.fcw,
            fsw: f.fsw,
            ftwx: f.ftwx,
            last_opcode: f.last_opcode,
            last_ip: f.last_ip,
            last_dp: f.last_dp,
            xmm: f.xmm,
            mxcsr: f.mxcsr,
            ..Default::default()
        }
    }
}

/// The devices crx-vmm emulates.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DevicesState {
    /// COM1.
    pub serial: SerialState,
    /// The i8042.
    pub i8042: I8042State,
    /// The boot-timer port, if the VM has one.
    pub boot_timer: Option<BootTimerState>,
    /// Each virtio-mmio device, in slot order.
    pub virtio: Vec<TransportState>,
}

impl VmState {
    /// Checks the counts a hostile or damaged file could make unbounded or inconsistent.
    pub fn check_bounds(&self) -> Result<(), String> {
        if self.vcpus.is_empty() || self.vcpus.len() > MAX_VCPUS {
            return Err(format!("{} vCPUs", self.vcpus.len()));
        }
        for (i, v) in self.vcpus.iter().enumerate() {
            if v.cpuid.len() > MAX_CPUID_ENTRIES {
                return Err(format!("vCPU {i}: {} CPUID entries", v.cpuid.len()));
            }
            if v.msrs.len() > MAX_MSRS {
                return Err(format!("vCPU {i}: {} MSRs", v.msrs.len()));
            }
        }
        if self.devices.virtio.len() > MAX_VIRTIO {
            return Err(format!("{} virtio devices", self.devices.virtio.len()));
        }
        Ok(())
    }
}
