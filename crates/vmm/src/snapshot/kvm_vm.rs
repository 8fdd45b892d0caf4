//! The KVM VM's own state: the in-kernel 8259 pair and IOAPIC, the PIT, and kvmclock.

use kvm_bindings::{
    kvm_irqchip, KVM_CLOCK_REALTIME, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::VmFd;

use super::state::KvmVmState;
use super::SnapshotError;

fn chip(vm: &VmFd, id: u32) -> Result<kvm_irqchip, SnapshotError> {
    let mut c = kvm_irqchip {
        chip_id: id,
        ..Default::default()
    };
    vm.get_irqchip(&mut c)
        .map_err(|e| SnapshotError::Kvm("KVM_GET_IRQCHIP", e))?;
    Ok(c)
}

/// Reads the VM's state (the vCPUs have stopped).
pub fn save(vm: &VmFd) -> Result<KvmVmState, SnapshotError> {
    Ok(KvmVmState {
        pic_master: chip(vm, KVM_IRQCHIP_PIC_MASTER)?,
        pic_slave: chip(vm, KVM_IRQCHIP_PIC_SLAVE)?,
        ioapic: chip(vm, KVM_IRQCHIP_IOAPIC)?,
        pit: vm
            .get_pit2()
            .map_err(|e| SnapshotError::Kvm("KVM_GET_PIT2", e))?,
        clock: vm
            .get_clock()
            .map_err(|e| SnapshotError::Kvm("KVM_GET_CLOCK", e))?,
    })
}

/// Writes `state` into a fresh VM (irqchip and PIT created, no vCPU run yet). kvmclock is set
/// with KVM_CLOCK_REALTIME when the snapshot recorded the host's real time, so that the guest's
/// clock moves on by the time the snapshot spent on disk.
pub fn restore(vm: &VmFd, state: &KvmVmState) -> Result<(), SnapshotError> {
    vm.set_pit2(&state.pit)
        .map_err(|e| SnapshotError::Kvm("KVM_SET_PIT2", e))?;
    let mut clock = state.clock;
    clock.flags &= KVM_CLOCK_REALTIME;
    clock.pad0 = 0;
    clock.pad = [0; 4];
    vm.set_clock(&clock)
        .map_err(|e| SnapshotError::Kvm("KVM_SET_CLOCK", e))?;
    for (c, id) in [
        (&state.pic_master, KVM_IRQCHIP_PIC_MASTER),
        (&state.pic_slave, KVM_IRQCHIP_PIC_SLAVE),
        (&state.ioapic, KVM_IRQCHIP_IOAPIC),
    ] {
        let mut c = *c;
        // The chip id is taken from the slot, never from the file.
        c.chip_id = id;
        vm.set_irqchip(&c)
            .map_err(|e| SnapshotError::Kvm("KVM_SET_IRQCHIP", e))?;
    }
    Ok(())
}
