//! The vCPU thread: KVM_RUN, then [`handle::handle_exit`] (a pure function of the exit)
//! decides: resume, or stop and report why.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::Bus;
use crate::exit::{ExitLatch, VmExit};

pub mod handle;

use handle::{handle_exit, Buses, ExitAction};

/// Everything a vCPU thread owns.
pub struct Vcpu {
    /// The KVM vCPU.
    pub fd: VcpuFd,
    /// Index and APIC id.
    pub id: u8,
    /// Port-I/O bus.
    pub pio: Arc<Bus>,
    /// MMIO bus.
    pub mmio: Arc<Bus>,
    /// Guest memory (to show the faulting instruction on an emulation failure).
    pub mem: GuestMemoryMmap,
    /// Set by the VMM to stop the vCPU; checked after every exit.
    pub stop: Arc<AtomicBool>,
    /// Where the vCPU reports why the VM should end.
    pub exit: Arc<ExitLatch>,
    /// Reports the time of the first KVM_RUN (vCPU 0 only).
    pub on_first_entry: Option<Box<dyn FnOnce(Instant) + Send>>,
    /// The i8042 reset eventfd: checked right after a guest write to port 0x64, so a reset
    /// ends the VM before the guest's next reboot method (e.g. a deliberate triple fault) can
    /// race the event loop and be reported instead.
    pub reset_evt: Option<EventFd>,
    /// KVM_RUN calls and how many returned EINTR/EAGAIN (shown by the debug stop report).
    pub stats: (u64, u64),
    /// Set when the VM may be snapshotted (`--snapshot-on-port`): the port, and where this
    /// vCPU leaves its state when it stops for a snapshot.
    pub snapshot: Option<Arc<crate::snapshot::vcpu::VcpuSync>>,
}

impl Vcpu {
    /// Runs until the VM stops; the reason (if this vCPU caused it) goes to the exit latch.
    pub fn run(mut self) {
        if let Err(e) = crate::seccomp::enter_vcpu(&self.stop) {
            self.exit.set(VmExit::VcpuFailed {
                vcpu: self.id,
                detail: e.to_string(),
            });
            return;
        }
        loop {
            if self.stop.load(Ordering::Acquire) {
                if std::env::var_os("CRX_VMM_DEBUG").is_some() {
                    self.report_position();
                }
                self.save_if_requested();
                return;
            }
            if let Some(f) = self.on_first_entry.take() {
                f(Instant::now());
            }
            self.stats.0 += 1;
            let buses = Buses {
                pio: &self.pio,
                mmio: &self.mmio,
                reset_evt: self.reset_evt.as_ref(),
                snapshot_port: self.snapshot.as_ref().and_then(|s| s.port),
            };
            let reason = match handle_exit(self.id, self.fd.run(), &buses) {
                ExitAction::Resume => continue,
                ExitAction::Interrupted => {
                    self.stats.1 += 1;
                    continue;
                }
                ExitAction::Stop(reason) => reason,
                ExitAction::InternalError => self.internal_error(),
            };
            if reason == VmExit::Snapshot {
                if let Some(s) = &self.snapshot {
                    // Before the latch wakes the main thread, so every vCPU it then stops
                    // sees the request.
                    s.request();
                }
            }
            self.save_if_requested();
            self.exit.set(reason);
            return;
        }
    }

    /// Leaves this vCPU's state for the snapshot, if one was requested.
    fn save_if_requested(&mut self) {
        if let Some(s) = self.snapshot.clone() {
            s.save_from(self.id, &mut self.fd);
        }
    }

    /// The exit for KVM_EXIT_INTERNAL_ERROR, with the details KVM and the guest give.
    fn internal_error(&mut self) -> VmExit {
        let run = self.fd.get_kvm_run();
        // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so KVM filled the `internal`
        // member of the exit union; it is plain integers.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let ndata = (internal.ndata as usize).min(internal.data.len());
        let (rip, code) = self.code_at_rip();
        handle::internal_error(
            self.id,
            internal.suberror,
            &internal.data[..ndata],
            rip,
            code.as_deref(),
        )
    }

    /// Debug aid (`CRX_VMM_DEBUG=1`): where this vCPU was when the VM was stopped.
    fn report_position(&self) {
        let (rip, bytes) = self.code_at_rip();
        let cr0 = self.fd.get_sregs().map(|s| s.cr0).unwrap_or(0);
        let _ = writeln!(
            std::io::stderr(),
            "vcpu{}: stopped at RIP {rip:#x} (CR0 {cr0:#x}), bytes {:02x?}, {} KVM_RUN calls, {} \
             interrupted",
            self.id,
            bytes.unwrap_or_default(),
            self.stats.0,
            self.stats.1
        );
    }

    /// RIP and up to 15 bytes at CS:RIP (translated through the guest's page tables).
    fn code_at_rip(&self) -> (u64, Option<Vec<u8>>) {
        let Ok(regs) = self.fd.get_regs() else {
            return (0, None);
        };
        let Ok(sregs) = self.fd.get_sregs() else {
            return (regs.rip, None);
        };
        let linear = sregs.cs.base.wrapping_add(regs.rip);
        let phys = if sregs.cr0 & 0x8000_0000 != 0 {
            match self.fd.translate_gva(linear) {
                Ok(t) if t.valid != 0 => t.physical_address,
                _ => return (regs.rip, None),
            }
        } else {
            linear
        };
        let mut out = Vec::new();
        for i in 0..15u64 {
            let mut b = [0u8];
            if self
                .mem
                .read_slice(&mut b, GuestAddress(phys.wrapping_add(i)))
                .is_err()
            {
                break;
            }
            out.push(b[0]);
        }
        (regs.rip, Some(out))
    }
}
