//! Why a VM stopped, and the process exit code for it.

use std::sync::Mutex;

use vmm_sys_util::eventfd::EventFd;

/// The reason a VM run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest reset the machine (i8042 0xFE, or a KVM reset system event): clean.
    GuestReset,
    /// The guest powered off (KVM shutdown system event): clean.
    GuestPowerOff,
    /// The VMM received a termination signal: clean.
    Signal(i32),
    /// The guest asked for a snapshot (`--snapshot-on-port`): the VMM writes it and ends,
    /// clean once written.
    Snapshot,
    /// A vCPU triple-faulted (KVM_EXIT_SHUTDOWN).
    TripleFault {
        /// The vCPU.
        vcpu: u8,
    },
    /// KVM_EXIT_INTERNAL_ERROR.
    InternalError {
        /// The vCPU.
        vcpu: u8,
        /// KVM's suberror (1 = emulation failure).
        suberror: u32,
        /// Human-readable detail (instruction bytes, RIP).
        detail: String,
    },
    /// The guest asked for a snapshot and it could not be written (the one-line reason).
    SnapshotFailed(String),
    /// Any other vCPU failure (failed entry, unexpected exit, KVM_RUN error).
    VcpuFailed {
        /// The vCPU.
        vcpu: u8,
        /// What happened.
        detail: String,
    },
}

impl VmExit {
    /// True for the exits that end a VM as intended.
    pub fn is_clean(&self) -> bool {
        matches!(
            self,
            VmExit::GuestReset | VmExit::GuestPowerOff | VmExit::Signal(_) | VmExit::Snapshot
        )
    }

    /// The `crx-vmm` exit status: 0 clean, 3 triple fault, 4 KVM internal error, 5 other vCPU
    /// failure, 6 snapshot failed (1 is a setup error and 2 a usage error, both decided in
    /// `main`).
    pub fn exit_code(&self) -> i32 {
        match self {
            VmExit::GuestReset | VmExit::GuestPowerOff | VmExit::Signal(_) | VmExit::Snapshot => 0,
            VmExit::TripleFault { .. } => 3,
            VmExit::InternalError { .. } => 4,
            VmExit::VcpuFailed { .. } => 5,
            VmExit::SnapshotFailed(_) => 6,
        }
    }
}

impl std::fmt::Display for VmExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VmExit::GuestReset => write!(f, "guest reset the machine"),
            VmExit::GuestPowerOff => write!(f, "guest powered off"),
            VmExit::Signal(s) => write!(f, "stopped by signal {s}"),
            VmExit::Snapshot => write!(f, "stopped for a snapshot"),
            VmExit::TripleFault { vcpu } => write!(
                f,
                "vCPU {vcpu}: triple fault (KVM_EXIT_SHUTDOWN): the guest hit an exception it \
                 could not handle"
            ),
            VmExit::InternalError {
                vcpu,
                suberror,
                detail,
            } => {
                write!(
                    f,
                    "vCPU {vcpu}: KVM_EXIT_INTERNAL_ERROR suberror {suberror}: {detail}"
                )
            }
            VmExit::VcpuFailed { vcpu, detail } => write!(f, "vCPU {vcpu}: {detail}"),
            VmExit::SnapshotFailed(detail) => write!(f, "snapshot failed: {detail}"),
        }
    }
}

/// The first reported exit reason, and an eventfd that wakes the event loop when one is set.
#[derive(Debug)]
pub struct ExitLatch {
    reason: Mutex<Option<VmExit>>,
    evt: EventFd,
}

impl ExitLatch {
    /// A latch with no reason yet.
    pub fn new() -> std::io::Result<Self> {
        Ok(ExitLatch {
            reason: Mutex::new(None),
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// Records `r` unless a reason is already set, and wakes the event loop.
    pub fn set(&self, r: VmExit) {
        let mut g = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if g.is_none() {
            *g = Some(r);
        }
        // Fails only on counter overflow, when a wake-up is already pending.
        let _ = self.evt.write(1);
    }

    /// The recorded reason.
    pub fn get(&self) -> Option<VmExit> {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The wake-up eventfd.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins_and_codes() {
        let l = ExitLatch::new().unwrap();
        l.set(VmExit::TripleFault { vcpu: 1 });
        l.set(VmExit::GuestReset);
        assert_eq!(l.get(), Some(VmExit::TripleFault { vcpu: 1 }));
        assert_eq!(l.eventfd().read().unwrap(), 2);
        assert_eq!(VmExit::GuestReset.exit_code(), 0);
        assert_eq!(VmExit::TripleFault { vcpu: 0 }.exit_code(), 3);
        assert!(VmExit::TripleFault { vcpu: 0 }
            .to_string()
            .contains("triple fault"));
    }
}
