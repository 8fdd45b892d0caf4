//! What one KVM_RUN exit means for the vCPU loop: a pure function of the exit (and the
//! devices it reaches through [`ExitIo`]), so each kind of exit is unit-tested on fabricated
//! exits, without KVM (as Firecracker's `handle_kvm_exit`).

use kvm_ioctls::VcpuExit;

use crate::bus::Bus;
use crate::exit::VmExit;

/// The i8042 command port: a write there may be the guest's reset request.
pub const I8042_COMMAND_PORT: u16 = 0x64;
const KVM_SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const KVM_SYSTEM_EVENT_RESET: u32 = 2;
/// KVM_EXIT_INTERNAL_ERROR's suberror for an instruction KVM could not emulate.
pub const KVM_INTERNAL_ERROR_EMULATION: u32 = 1;

/// Where a vCPU's port I/O and MMIO exits go.
pub trait ExitIo {
    /// A guest `in`: fill `data`.
    fn pio_read(&self, port: u16, data: &mut [u8]);
    /// A guest `out`.
    fn pio_write(&self, port: u16, data: &[u8]);
    /// A guest load from an MMIO address: fill `data`.
    fn mmio_read(&self, addr: u64, data: &mut [u8]);
    /// A guest store to an MMIO address.
    fn mmio_write(&self, addr: u64, data: &[u8]);
    /// Whether the i8042 has just been asked to reset the machine (consumes the request).
    fn reset_requested(&self) -> bool;
    /// Whether a write to `port` asks for a snapshot (`--snapshot-on-port`).
    fn is_snapshot_port(&self, _port: u16) -> bool {
        false
    }
}

/// What the vCPU loop does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitAction {
    /// The exit was handled: enter the guest again.
    Resume,
    /// KVM_RUN was interrupted (a kick or another signal): check for a stop, then resume.
    Interrupted,
    /// The VM ends, for this reason.
    Stop(VmExit),
    /// KVM_EXIT_INTERNAL_ERROR: the caller reads the details (the run structure, registers,
    /// the code at RIP) and ends the VM with [`internal_error`].
    InternalError,
}

/// Handles one KVM_RUN result of vCPU `vcpu`.
pub fn handle_exit(
    vcpu: u8,
    run: Result<VcpuExit<'_>, kvm_ioctls::Error>,
    io: &dyn ExitIo,
) -> ExitAction {
    let failed = |detail: String| ExitAction::Stop(VmExit::VcpuFailed { vcpu, detail });
    let exit = match run {
        Ok(exit) => exit,
        Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
            return ExitAction::Interrupted
        }
        Err(e) => return failed(format!("KVM_RUN failed: {e}")),
    };
    match exit {
        VcpuExit::IoOut(port, _) if io.is_snapshot_port(port) => ExitAction::Stop(VmExit::Snapshot),
        VcpuExit::IoOut(port, data) => {
            io.pio_write(port, data);
            // Checked at once, so a reset ends the VM before the guest's next reboot method
            // (e.g. a deliberate triple fault) can race the event loop and be reported instead.
            if port == I8042_COMMAND_PORT && io.reset_requested() {
                ExitAction::Stop(VmExit::GuestReset)
            } else {
                ExitAction::Resume
            }
        }
        VcpuExit::IoIn(port, data) => {
            io.pio_read(port, data);
            ExitAction::Resume
        }
        VcpuExit::MmioRead(addr, data) => {
            io.mmio_read(addr, data);
            ExitAction::Resume
        }
        VcpuExit::MmioWrite(addr, data) => {
            io.mmio_write(addr, data);
            ExitAction::Resume
        }
        VcpuExit::Intr => ExitAction::Interrupted,
        VcpuExit::Shutdown => ExitAction::Stop(VmExit::TripleFault { vcpu }),
        VcpuExit::Hlt => ExitAction::Stop(VmExit::GuestPowerOff),
        VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_RESET, _) => ExitAction::Stop(VmExit::GuestReset),
        VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN, _) => {
            ExitAction::Stop(VmExit::GuestPowerOff)
        }
        VcpuExit::SystemEvent(other, _) => failed(format!("unexpected KVM system event {other}")),
        VcpuExit::InternalError => ExitAction::InternalError,
        VcpuExit::FailEntry(reason, cpu) => failed(format!(
            "KVM_EXIT_FAIL_ENTRY: hardware entry failure reason {reason:#x} on host CPU {cpu}"
        )),
        other => failed(format!("unexpected KVM exit {other:?}")),
    }
}

/// The exit for a KVM internal error: `suberror` and `data` from the run structure, `rip`
/// and the instruction bytes there (`None`: unreadable).
pub fn internal_error(
    vcpu: u8,
    suberror: u32,
    data: &[u64],
    rip: u64,
    code: Option<&[u8]>,
) -> VmExit {
    let insn = match code {
        Some(b) if !b.is_empty() => b
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect::<Vec<_>>()
            .join(" "),
        _ => "unreadable".to_owned(),
    };
    let detail = if suberror == KVM_INTERNAL_ERROR_EMULATION {
        format!(
            "emulation failure at RIP {rip:#x}, instruction bytes [{insn}]. This host's KVM is \
             emulating guest instructions and does not implement this one: it cannot run this \
             guest (use the nested lab, `cargo xtask lab`)"
        )
    } else {
        let data: Vec<String> = data.iter().map(|d| format!("{d:#x}")).collect();
        format!(
            "RIP {rip:#x}, instruction bytes [{insn}], data [{}]",
            data.join(", ")
        )
    };
    VmExit::InternalError {
        vcpu,
        suberror,
        detail,
    }
}

/// The VMM's buses as seen from a vCPU, with the i8042's reset eventfd.
pub struct Buses<'a> {
    /// Port I/O.
    pub pio: &'a Bus,
    /// MMIO.
    pub mmio: &'a Bus,
    /// The i8042 reset eventfd (readable once the guest asked for a reset).
    pub reset_evt: Option<&'a vmm_sys_util::eventfd::EventFd>,
    /// The port whose write asks for a snapshot, if any.
    pub snapshot_port: Option<u16>,
}

impl ExitIo for Buses<'_> {
    fn pio_read(&self, port: u16, data: &mut [u8]) {
        self.pio.read(u64::from(port), data);
    }
    fn pio_write(&self, port: u16, data: &[u8]) {
        self.pio.write(u64::from(port), data);
    }
    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        self.mmio.read(addr, data);
    }
    fn mmio_write(&self, addr: u64, data: &[u8]) {
        self.mmio.write(addr, data);
    }
    fn reset_requested(&self) -> bool {
        self.reset_evt.is_some_and(|e| e.read().is_ok())
    }
    fn is_snapshot_port(&self, port: u16) -> bool {
        self.snapshot_port == Some(port)
    }
}

#[cfg(test)]
mod tests;
