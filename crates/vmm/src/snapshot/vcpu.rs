//! One vCPU's state: read on its own thread once it has left the guest (so the KVM calls are in
//! the vCPU thread's seccomp list), written on a fresh vCPU before its first KVM_RUN, in the
//! order KVM needs (as Firecracker does: CPUID first, MSRs after the LAPIC, events last).

use std::sync::{Condvar, Mutex};
use std::time::Duration;

use kvm_bindings::{kvm_msr_entry, CpuId, Msrs};
use kvm_ioctls::VcpuFd;

use super::msrs;
use super::state::{FpuState, VcpuState};

/// What this KVM can save, asked once at setup (the vCPU thread cannot ask /dev/kvm later).
#[derive(Debug, Clone, Default)]
pub struct VcpuCaps {
    /// KVM_CAP_XSAVE.
    pub xsave: bool,
    /// KVM_CAP_XCRS.
    pub xcrs: bool,
    /// The MSRs to save (KVM_GET_MSR_INDEX_LIST, filtered).
    pub msrs: Vec<u32>,
}

impl VcpuCaps {
    /// Asks KVM.
    pub fn probe(kvm: &kvm_ioctls::Kvm) -> Result<Self, kvm_ioctls::Error> {
        Ok(VcpuCaps {
            xsave: kvm.check_extension(kvm_ioctls::Cap::Xsave),
            xcrs: kvm.check_extension(kvm_ioctls::Cap::Xcrs),
            msrs: msrs::to_save(kvm)?,
        })
    }
}

/// A vCPU state call that failed.
#[derive(Debug, thiserror::Error)]
pub enum VcpuStateError {
    /// A KVM vCPU ioctl.
    #[error("{0} failed")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    /// KVM_SET_MSRS stopped early.
    #[error("KVM_SET_MSRS refused MSR {0:#x}")]
    Msr(u32),
    /// A list over KVM's limit.
    #[error("{0}: too many entries")]
    TooMany(&'static str),
}

fn kvm(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> VcpuStateError {
    move |e| VcpuStateError::Kvm(what, e)
}

/// Reads the state of `fd`, which has left KVM_RUN with its pending I/O completed.
pub fn save(fd: &VcpuFd, caps: &VcpuCaps) -> Result<VcpuState, VcpuStateError> {
    let mp_state = fd.get_mp_state().map_err(kvm("KVM_GET_MP_STATE"))?;
    let regs = fd.get_regs().map_err(kvm("KVM_GET_REGS"))?;
    let sregs = fd.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
    let fpu = FpuState::from(&fd.get_fpu().map_err(kvm("KVM_GET_FPU"))?);
    let xsave = match caps.xsave {
        true => Some(fd.get_xsave().map_err(kvm("KVM_GET_XSAVE"))?),
        false => None,
    };
    let xcrs = match caps.xcrs {
        true => Some(fd.get_xcrs().map_err(kvm("KVM_GET_XCRS"))?),
        false => None,
    };
    let debug_regs = fd.get_debug_regs().map_err(kvm("KVM_GET_DEBUGREGS"))?;
    let lapic = fd.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?;
    let tsc_khz = fd.get_tsc_khz().ok();
    let msrs = read_msrs(fd, &caps.msrs)?;
    let events = fd.get_vcpu_events().map_err(kvm("KVM_GET_VCPU_EVENTS"))?;
    let cpuid = fd
        .get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm("KVM_GET_CPUID2"))?
        .as_slice()
        .to_vec();
    Ok(VcpuState {
        cpuid,
        msrs,
        regs,
        sregs,
        fpu,
        xsave,
        xcrs,
        lapic,
        events,
        mp_state,
        debug_regs,
        tsc_khz,
    })
}

/// Reads `indices`; an MSR KVM lists but cannot read (KVM_GET_MSRS stops there) is left out.
fn read_msrs(fd: &VcpuFd, indices: &[u32]) -> Result<Vec<kvm_msr_entry>, VcpuStateError> {
    let mut out = Vec::with_capacity(indices.len());
    let mut rest = indices;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(kvm_bindings::KVM_MAX_MSR_ENTRIES)];
        let entries: Vec<kvm_msr_entry> = chunk
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| VcpuStateError::TooMany("MSRs"))?;
        let n = fd.get_msrs(&mut msrs).map_err(kvm("KVM_GET_MSRS"))?;
        out.extend_from_slice(&msrs.as_slice()[..n.min(chunk.len())]);
        // Entry `n` failed: skip it, carry on after it.
        rest = &rest[(n + 1).min(rest.len())..];
    }
    Ok(out)
}

/// Writes `state` to a fresh vCPU `fd`.
pub fn restore(fd: &VcpuFd, state: &VcpuState) -> Result<(), VcpuStateError> {
    let cpuid = CpuId::from_entries(&state.cpuid).map_err(|_| VcpuStateError::TooMany("CPUID"))?;
    fd.set_cpuid2(&cpuid).map_err(kvm("KVM_SET_CPUID2"))?;
    fd.set_mp_state(state.mp_state)
        .map_err(kvm("KVM_SET_MP_STATE"))?;
    fd.set_regs(&state.regs).map_err(kvm("KVM_SET_REGS"))?;
    fd.set_sregs(&state.sregs).map_err(kvm("KVM_SET_SREGS"))?;
    fd.set_fpu(&(&state.fpu).into())
        .map_err(kvm("KVM_SET_FPU"))?;
    if let Some(x) = &state.xsave {
        // SAFETY: `x` is a whole kvm_xsave (4 KiB, the legacy layout KVM_GET_XSAVE returned);
        // KVM reads only that much and validates its contents.
        unsafe { fd.set_xsave(x) }.map_err(kvm("KVM_SET_XSAVE"))?;
    }
    if let Some(x) = &state.xcrs {
        fd.set_xcrs(x).map_err(kvm("KVM_SET_XCRS"))?;
    }
    fd.set_debug_regs(&state.debug_regs)
        .map_err(kvm("KVM_SET_DEBUGREGS"))?;
    fd.set_lapic(&state.lapic).map_err(kvm("KVM_SET_LAPIC"))?;
    let ordered = msrs::restore_order(&state.msrs);
    let msrs = Msrs::from_entries(&ordered).map_err(|_| VcpuStateError::TooMany("MSRs"))?;
    let n = fd.set_msrs(&msrs).map_err(kvm("KVM_SET_MSRS"))?;
    if n < ordered.len() {
        return Err(VcpuStateError::Msr(ordered[n].index));
    }
    fd.set_vcpu_events(&state.events)
        .map_err(kvm("KVM_SET_VCPU_EVENTS"))?;
    Ok(())
}

/// How long a stopped vCPU waits for the others to leave the guest before it saves its state
/// anyway (they are kicked together; a missing one fails the snapshot as `VcpuMissing`).
const ALL_STOPPED_WAIT: Duration = Duration::from_secs(10);

/// What the vCPU threads and the main thread share for a snapshot: the request, what KVM can
/// save, how many vCPUs have left the guest, and each vCPU's saved state.
pub struct VcpuSync {
    /// The port whose write asks for the snapshot, if the guest may ask.
    pub port: Option<u16>,
    caps: VcpuCaps,
    requested: std::sync::atomic::AtomicBool,
    stopped: (Mutex<u8>, Condvar),
    states: Mutex<Vec<Option<Result<VcpuState, VcpuStateError>>>>,
}

impl VcpuSync {
    /// For `vcpus` vCPUs, a snapshot on `port` (or SIGUSR1 only).
    pub fn new(port: Option<u16>, caps: VcpuCaps, vcpus: u8) -> Self {
        VcpuSync {
            port,
            caps,
            requested: Default::default(),
            stopped: Default::default(),
            states: Mutex::new((0..vcpus).map(|_| None).collect()),
        }
    }

    /// Marks the snapshot requested: every vCPU saves its state as it stops.
    pub fn request(&self) {
        self.requested
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// On vCPU `id`'s thread as it stops (once, out of KVM_RUN): if a snapshot was requested,
    /// waits until every vCPU is out of the guest, completes the I/O of its last exit
    /// (KVM_RUN with immediate_exit: KVM finishes the instruction, enters no guest code and
    /// returns EINTR) and saves its state.
    ///
    /// The wait matters with several vCPUs: one still running could send an IPI to one that
    /// has saved its local APIC, and the restored guest would never get it (a CPU then waits
    /// for an answer that does not come).
    pub fn save_from(&self, id: u8, fd: &mut VcpuFd) {
        if !self.all_stopped() {
            return;
        }
        fd.set_kvm_immediate_exit(1);
        let _ = fd.run();
        fd.set_kvm_immediate_exit(0);
        let r = save(fd, &self.caps);
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = states.get_mut(usize::from(id)) {
            *slot = Some(r);
        }
    }

    /// Counts the calling vCPU out of the guest; when a snapshot was requested, waits until
    /// every vCPU is out (at most [`ALL_STOPPED_WAIT`]) and says so.
    fn all_stopped(&self) -> bool {
        let all = self.states.lock().unwrap_or_else(|p| p.into_inner()).len();
        let (count, cv) = &self.stopped;
        let mut n = count.lock().unwrap_or_else(|p| p.into_inner());
        *n = n.saturating_add(1);
        cv.notify_all();
        if !self.requested.load(std::sync::atomic::Ordering::Acquire) {
            return false;
        }
        let (_n, _timeout) = cv
            .wait_timeout_while(n, ALL_STOPPED_WAIT, |n| usize::from(*n) < all)
            .unwrap_or_else(|p| p.into_inner());
        true
    }

    /// Every vCPU's state, once all have stopped.
    pub fn take(&self) -> Result<Vec<VcpuState>, super::SnapshotError> {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::with_capacity(states.len());
        for (id, s) in states.iter_mut().enumerate() {
            let id = id as u8;
            match s.take() {
                Some(Ok(v)) => out.push(v),
                Some(Err(e)) => return Err(super::SnapshotError::Vcpu(id, e)),
                None => return Err(super::SnapshotError::VcpuMissing(id)),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[test]
    fn a_stopped_vcpu_saves_only_once_every_vcpu_is_out_of_the_guest() {
        let sync = Arc::new(VcpuSync::new(None, VcpuCaps::default(), 2));
        sync.request();
        let done = Arc::new(AtomicBool::new(false));
        let first = {
            let (sync, done) = (sync.clone(), done.clone());
            std::thread::spawn(move || {
                let r = sync.all_stopped();
                done.store(true, Ordering::SeqCst);
                r
            })
        };
        std::thread::sleep(Duration::from_millis(200));
        assert!(!done.load(Ordering::SeqCst), "saved while vCPU 1 still ran");
        assert!(sync.all_stopped());
        assert!(first.join().unwrap());
    }

    #[test]
    fn without_a_request_a_stopping_vcpu_does_not_wait() {
        let sync = VcpuSync::new(None, VcpuCaps::default(), 2);
        assert!(!sync.all_stopped());
    }
}
