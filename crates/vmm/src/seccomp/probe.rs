//! A test-only device that makes the VMM issue a forbidden system call, proving that the
//! filters are on (tiny_guests' `kvm_seccomp_*` tests). Present only in debug builds (the
//! ones tests run) and only when `CRX_VMM_SECCOMP_PROBE=1`; a release binary never has it.
//!
//! A guest write to [`PROBE_MMIO_BASE`] of [`ON_VCPU`] makes the writing vCPU thread call
//! `socket(AF_INET, SOCK_STREAM, 0)`; [`ON_EVENT_LOOP`] hands the same call to the event-loop
//! (main) thread. Both lists allow `socket` for AF_UNIX only, so this also exercises an argument
//! filter. Without filters the socket is created and closed and the guest carries on.

use std::io::Write;
use std::sync::{Arc, Mutex};

use crx_devices::bus::BusDevice;
use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::bus::SharedDevice;
use crate::event_loop::Subscriber;

/// Guest-physical address of the probe (in the MMIO hole, clear of the virtio slots).
pub const PROBE_MMIO_BASE: u64 = 0xdf00_0000;
/// Size of the probe's MMIO window.
pub const PROBE_MMIO_LEN: u64 = 0x1000;
/// Written value: the forbidden call on the writing vCPU thread.
pub const ON_VCPU: u8 = 1;
/// Written value: the forbidden call on the event-loop thread.
pub const ON_EVENT_LOOP: u8 = 2;

/// Whether this binary honours the probe (debug build and `CRX_VMM_SECCOMP_PROBE=1`).
pub fn requested() -> bool {
    cfg!(debug_assertions) && std::env::var_os("CRX_VMM_SECCOMP_PROBE").is_some_and(|v| v == "1")
}

/// The forbidden call: an AF_INET socket, closed again if the call is allowed.
fn forbidden_call(thread: &str) {
    // SAFETY: socket(2) with constant arguments; the descriptor is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    if fd >= 0 {
        // SAFETY: `fd` was just created here and is owned by nobody else.
        unsafe { libc::close(fd) };
    }
    let _ = writeln!(
        std::io::stderr(),
        "crx-vmm: seccomp probe: socket(AF_INET) on the {thread} thread returned {fd}"
    );
}

struct ProbeDevice {
    evt: EventFd,
}

impl BusDevice for ProbeDevice {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        match data.first() {
            Some(&ON_VCPU) => forbidden_call("vcpu"),
            Some(&ON_EVENT_LOOP) => {
                let _ = self.evt.write(1);
            }
            _ => {}
        }
    }
}

struct ProbeEvents {
    evt: EventFd,
}

impl MutEventSubscriber for ProbeEvents {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.evt, EventSet::IN)) {
            let _ = writeln!(std::io::stderr(), "crx-vmm: seccomp probe: {e}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        if self.evt.read().is_ok() {
            forbidden_call("main");
        }
    }
}

/// The probe's MMIO device and its event-loop half.
pub fn create() -> std::io::Result<(SharedDevice, Subscriber)> {
    let evt = EventFd::new(libc::EFD_NONBLOCK)?;
    let dev = ProbeDevice {
        evt: evt.try_clone()?,
    };
    Ok((
        Arc::new(Mutex::new(dev)),
        Arc::new(Mutex::new(ProbeEvents { evt })),
    ))
}
