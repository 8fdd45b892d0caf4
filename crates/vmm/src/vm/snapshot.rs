//! The snapshot steps of [`super::Vm`]: loading one to build the VM from, restoring it into the
//! fresh KVM objects and devices, and writing one when the guest asks.

use std::path::PathBuf;
use std::sync::Arc;

use kvm_ioctls::{Kvm, VmFd};
use vm_memory::GuestMemoryMmap;

use super::attach::{self, VcpuShared};
use super::{Vm, VmError};
use crate::config::VmConfig;
use crate::snapshot::devices::Devices;
use crate::snapshot::state::VmState;
use crate::snapshot::vcpu::{VcpuCaps, VcpuSync};
use crate::snapshot::{self as snap, Loaded, SnapshotError, SnapshotTarget};
use crate::vcpu::Vcpu;

/// Reads and checks the snapshot in `dir` (if given) against this host and `cfg`.
pub(super) fn load(cfg: &VmConfig, dir: Option<PathBuf>) -> Result<Option<Loaded>, VmError> {
    let Some(dir) = dir else {
        return Ok(None);
    };
    let l = snap::load(&dir, &snap::expect_for(cfg))?;
    let want = cfg.memory_mib << 20;
    if l.state.memory_bytes != want || l.state.vcpus.len() != usize::from(cfg.vcpus) {
        return Err(SnapshotError::Mismatch(format!(
            "{} bytes of RAM and {} vCPUs saved, {want} and {} configured",
            l.state.memory_bytes,
            l.state.vcpus.len(),
            cfg.vcpus
        ))
        .into());
    }
    Ok(Some(l))
}

/// Guest RAM: the memory file mapped copy-on-write, or copied into a shared memfd when a
/// vhost-user backend (virtio-fs) must map the RAM too, or when the file lives where another
/// client may change its page cache (9p, NFS, FUSE: a private mapping would not keep the
/// guest's view stable, as for boot files).
pub(super) fn memory(cfg: &VmConfig, l: &Loaded) -> Result<GuestMemoryMmap, VmError> {
    let bytes = l.state.memory_bytes;
    let mem = match cfg.fs.is_empty() && crate::memory::is_mappable(&l.memory) {
        true => snap::memory::map(&l.memory, bytes),
        false => snap::memory::copy_shared(&l.memory, bytes),
    };
    Ok(mem.map_err(SnapshotError::from)?)
}

/// With a snapshot target, what the vCPUs share to save themselves (KVM asked now: the
/// threads cannot ask /dev/kvm once the filters are on).
pub(super) fn sync(
    kvm: &Kvm,
    cfg: &VmConfig,
    target: Option<SnapshotTarget>,
) -> Result<Option<(SnapshotTarget, Arc<VcpuSync>)>, VmError> {
    let Some(t) = target else {
        return Ok(None);
    };
    let caps = VcpuCaps::probe(kvm).map_err(|e| VmError::Kvm("KVM_GET_MSR_INDEX_LIST", e))?;
    let sync = Arc::new(VcpuSync::new(t.port, caps, cfg.vcpus));
    Ok(Some((t, sync)))
}

/// With a snapshot target in a process that handles signals (the binary), SIGUSR1 asks for
/// the snapshot: the eventfd its handler writes, and the request the event loop makes first
/// (so every vCPU saves itself as it stops).
#[allow(clippy::type_complexity)]
pub(super) fn signal_request(
    snapshot: &Option<(SnapshotTarget, Arc<VcpuSync>)>,
    handle_signals: bool,
) -> Result<Option<(vmm_sys_util::eventfd::EventFd, Box<dyn Fn() + Send>)>, VmError> {
    let Some((_, sync)) = snapshot else {
        return Ok(None);
    };
    if !handle_signals {
        return Ok(None);
    }
    let io = |e| VmError::Io("cannot set up the snapshot signal", e);
    let evt = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).map_err(io)?;
    crate::event_loop::install_snapshot_signal(&evt).map_err(io)?;
    let sync = sync.clone();
    Ok(Some((evt, Box::new(move || sync.request()))))
}

/// Loads the saved devices, vCPUs and KVM VM state (in that order: the LAPICs before the
/// IOAPIC and PICs that route to them).
pub(super) fn restore(
    vm: &VmFd,
    l: &Loaded,
    devices: &Devices,
    shared: &VcpuShared,
) -> Result<Vec<Vcpu>, VmError> {
    devices.restore(&l.state.devices)?;
    let vcpus = attach::restored_vcpus(vm, &l.state.vcpus, shared)?;
    snap::kvm_vm::restore(vm, &l.state.kvm)?;
    // A disk's size change and vsock's transport reset were signalled before the interrupt
    // controllers had their state, which dropped them.
    devices.reassert_interrupts();
    Ok(vcpus)
}

impl Vm {
    /// Writes the snapshot the guest asked for (the vCPUs have stopped and saved themselves).
    pub(super) fn write_snapshot(&self) -> Result<(), SnapshotError> {
        let Some((target, sync)) = &self.snapshot else {
            return Err(SnapshotError::Mismatch("no snapshot target".into()));
        };
        // Devices first: one that cannot be snapshotted fails it before anything is written.
        let devices = self.devices.save()?;
        let state = VmState {
            memory_bytes: target.memory_bytes,
            kvm: snap::kvm_vm::save(&self.vm_fd)?,
            vcpus: sync.take()?,
            devices,
        };
        target.write(&state, &self.mem)
    }
}
