//! Initial vCPU state: CPUID, MSRs, FPU, LAPIC LINT pins, and the BSP's registers for the
//! chosen entry protocol.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, CpuId, Msrs};
use kvm_ioctls::{Kvm, VcpuFd};

use crate::boot::gdt::{segment_from_gdt, GDT_32, GDT_64};
use crate::boot::EntryPoint;
use crate::layout::{BOOT_STACK_TOP, GDT_ADDR, IDT_ADDR, PML4_ADDR};

/// vCPU setup errors (each names the KVM call that failed).
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// KVM_GET_SUPPORTED_CPUID.
    #[error("KVM_GET_SUPPORTED_CPUID failed")]
    GetSupportedCpuid(#[source] kvm_ioctls::Error),
    /// KVM_SET_CPUID2.
    #[error("KVM_SET_CPUID2 failed")]
    SetCpuid(#[source] kvm_ioctls::Error),
    /// KVM_SET_MSRS.
    #[error("KVM_SET_MSRS failed (set {set} of {wanted})")]
    SetMsrs {
        /// How many were accepted.
        set: usize,
        /// How many were given.
        wanted: usize,
    },
    /// KVM_SET_MSRS ioctl.
    #[error("KVM_SET_MSRS failed")]
    SetMsrsIoctl(#[source] kvm_ioctls::Error),
    /// Building the MSR list.
    #[error("cannot build the MSR list")]
    BuildMsrs,
    /// KVM_SET_FPU.
    #[error("KVM_SET_FPU failed")]
    SetFpu(#[source] kvm_ioctls::Error),
    /// KVM_GET_LAPIC / KVM_SET_LAPIC.
    #[error("KVM_GET_LAPIC/KVM_SET_LAPIC failed")]
    Lapic(#[source] kvm_ioctls::Error),
    /// KVM_GET_SREGS / KVM_SET_SREGS.
    #[error("KVM_GET_SREGS/KVM_SET_SREGS failed")]
    Sregs(#[source] kvm_ioctls::Error),
    /// KVM_SET_REGS.
    #[error("KVM_SET_REGS failed")]
    Regs(#[source] kvm_ioctls::Error),
}

/// KVM's supported CPUID, fetched once per VM, plus the TSC-deadline timer where KVM's
/// in-kernel local APIC emulates it (KVM reports that as a capability, not in the CPUID).
pub fn supported_cpuid(kvm: &Kvm) -> Result<CpuId, RegsError> {
    let mut cpuid = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(RegsError::GetSupportedCpuid)?;
    if kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer) {
        crate::cpuid::enable_tsc_deadline(cpuid.as_mut_slice());
    }
    Ok(cpuid)
}

/// Sets CPUID for vCPU `id`. Must precede [`set_boot_registers`]: KVM refuses long-mode
/// SREGS until CPUID advertises PAE/LM.
pub fn set_cpuid(vcpu: &VcpuFd, base: &CpuId, id: u8, vcpus: u8) -> Result<(), RegsError> {
    let mut entries = base.as_slice().to_vec();
    crate::cpuid::filter(&mut entries, id, vcpus);
    let cpuid = CpuId::from_entries(&entries).map_err(|_| RegsError::BuildMsrs)?;
    vcpu.set_cpuid2(&cpuid).map_err(RegsError::SetCpuid)
}

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MISC_ENABLE_FAST_STRING: u64 = 1;
const MTRR_ENABLE_WRITEBACK: u64 = (1 << 11) | 6;

/// Sets the boot MSRs (syscall MSRs cleared, fast strings, MTRRs default write-back).
pub fn set_msrs(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let list = [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WRITEBACK),
    ];
    let entries: Vec<kvm_msr_entry> = list
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&entries).map_err(|_| RegsError::BuildMsrs)?;
    let set = vcpu.set_msrs(&msrs).map_err(RegsError::SetMsrsIoctl)?;
    if set != entries.len() {
        return Err(RegsError::SetMsrs {
            set,
            wanted: entries.len(),
        });
    }
    Ok(())
}

/// x87 control word and MXCSR at their reset values.
pub fn set_fpu(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(RegsError::SetFpu)
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// LINT0 = ExtINT (legacy PIC), LINT1 = NMI, as a PC's firmware leaves them.
pub fn set_lint(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let mut lapic = vcpu.get_lapic().map_err(RegsError::Lapic)?;
    for (reg, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
        let bytes: Vec<u8> = lapic.regs[reg..reg + 4].iter().map(|&b| b as u8).collect();
        let v = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let v = (v & !0x700) | (mode << 8);
        for (i, b) in v.to_le_bytes().iter().enumerate() {
            lapic.regs[reg + i] = *b as _;
        }
    }
    vcpu.set_lapic(&lapic).map_err(RegsError::Lapic)
}

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// Sets the BSP's segment, control and general registers for `entry`.
pub fn set_boot_registers(vcpu: &VcpuFd, entry: EntryPoint) -> Result<(), RegsError> {
    let mut sregs = vcpu.get_sregs().map_err(RegsError::Sregs)?;
    let gdt = match entry {
        EntryPoint::Pvh { .. } => GDT_32,
        EntryPoint::Linux64 { .. } => GDT_64,
    };
    let code = segment_from_gdt(gdt[1], 1);
    let data = segment_from_gdt(gdt[2], 2);
    let tss = segment_from_gdt(gdt[3], 3);
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (std::mem::size_of_val(&gdt) - 1) as u16;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    let mut regs = kvm_regs {
        rflags: 0x2,
        ..Default::default()
    };
    match entry {
        EntryPoint::Pvh { entry, start_info } => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
            regs.rip = entry;
            regs.rbx = start_info;
        }
        EntryPoint::Linux64 { entry, boot_params } => {
            sregs.cr3 = PML4_ADDR;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.cr0 |= X86_CR0_PE | X86_CR0_PG | X86_CR0_ET;
            sregs.efer |= EFER_LME | EFER_LMA;
            regs.rip = entry;
            regs.rsp = BOOT_STACK_TOP;
            regs.rbp = BOOT_STACK_TOP;
            regs.rsi = boot_params;
        }
    }
    vcpu.set_sregs(&sregs).map_err(RegsError::Sregs)?;
    vcpu.set_regs(&regs).map_err(RegsError::Regs)
}
