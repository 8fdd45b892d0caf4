//! seccomp filters for crx-vmm's threads (ADR 0009): one allow-list per thread kind (the main
//! thread, which runs the event loop, and the vCPU threads), kept as data in
//! `crates/vmm/seccomp/<arch>.json` and compiled to BPF by build.rs.
//!
//! The binary calls [`enable`] before it builds the VM (unless `--no-seccomp`); embedding
//! callers (tests, benchmarks) never do, and every hook below is then a no-op. With filters
//! enabled, [`Vm::run`](crate::Vm::run) spawns the vCPU threads, each installs the vCPU filter
//! ([`enter_vcpu`]) and waits; the main thread installs its own ([`enter_main`]) and opens the
//! gate: both filters are in force before the guest's first instruction, and neither thread
//! inherits the other's list. A call outside a thread's list raises SIGSYS: the handler names
//! the call on stderr (the VMM log) and the process dies of SIGSYS ([`sigsys`]).

mod names;
pub mod probe;
mod sigsys;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// The BPF programs build.rs compiled from the JSON lists.
mod filters {
    include!(concat!(env!("OUT_DIR"), "/seccomp_filters.rs"));
}

/// A kind of crx-vmm thread, each with its own allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main thread: VM setup, then the device event loop and shutdown.
    Main,
    /// A vCPU thread: KVM_RUN and the port-I/O/MMIO exits it dispatches.
    Vcpu,
}

impl ThreadKind {
    /// The name of the kind's filter in the JSON file.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Main => "main",
            ThreadKind::Vcpu => "vcpu",
        }
    }

    /// The compiled filter.
    pub fn program(self) -> &'static [seccompiler::sock_filter] {
        match self {
            ThreadKind::Main => filters::MAIN,
            ThreadKind::Vcpu => filters::VCPU,
        }
    }
}

/// seccomp errors.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// sigaction(SIGSYS) failed.
    #[error("cannot install the SIGSYS handler")]
    Handler(#[source] std::io::Error),
    /// The kernel refused a filter (no CONFIG_SECCOMP_FILTER?).
    #[error("cannot install the {0} thread's seccomp filter")]
    Install(&'static str, #[source] seccompiler::Error),
    /// The main thread could not install its filter, so the vCPUs must not run the guest.
    #[error("the main thread's seccomp filter is not installed: the vCPUs do not start")]
    MainFailed,
}

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turns the filters on for this process: installs the SIGSYS handler; the threads install
/// their filters when [`Vm::run`](crate::Vm::run) starts them. Only for a process that runs
/// one VM and nothing else (the crx-vmm binary).
pub fn enable() -> Result<(), SeccompError> {
    sigsys::install_handler().map_err(SeccompError::Handler)?;
    ENABLED.store(true, Ordering::SeqCst);
    Ok(())
}

/// Whether [`enable`] was called.
pub fn is_enabled() -> bool {
    ENABLED.load(Ordering::SeqCst)
}

/// Installs `kind`'s filter on the calling thread (with no_new_privs, which seccomp requires
/// of an unprivileged process and which crx-vmm never needs off).
pub fn install(kind: ThreadKind) -> Result<(), SeccompError> {
    sigsys::set_thread_kind(kind);
    seccompiler::apply_filter(kind.program()).map_err(|e| SeccompError::Install(kind.name(), e))
}

/// Whether the main thread has installed its filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    Closed,
    Open,
    Failed,
}

static GATE: Mutex<Gate> = Mutex::new(Gate::Closed);
static GATE_CHANGED: Condvar = Condvar::new();

fn set_gate(g: Gate) {
    *GATE.lock().unwrap_or_else(|p| p.into_inner()) = g;
    GATE_CHANGED.notify_all();
}

/// A vCPU thread's first step: installs the vCPU filter, then waits until the main thread has
/// installed its own (or `stop` is set, when the VM is torn down before it started). Returns
/// `Ok` at once when filters are not enabled.
pub fn enter_vcpu(stop: &AtomicBool) -> Result<(), SeccompError> {
    if !is_enabled() {
        return Ok(());
    }
    install(ThreadKind::Vcpu)?;
    let mut g = GATE.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        match *g {
            Gate::Open => return Ok(()),
            Gate::Failed => return Err(SeccompError::MainFailed),
            Gate::Closed if stop.load(Ordering::Acquire) => return Ok(()),
            Gate::Closed => {
                g = GATE_CHANGED
                    .wait_timeout(g, Duration::from_millis(10))
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        }
    }
}

/// The main thread's step once the vCPU threads exist: installs the main filter and lets the
/// vCPUs run (or tells them not to, if it failed). A no-op when filters are not enabled.
pub fn enter_main() -> Result<(), SeccompError> {
    if !is_enabled() {
        return Ok(());
    }
    let r = install(ThreadKind::Main);
    set_gate(if r.is_ok() { Gate::Open } else { Gate::Failed });
    r
}

/// The name of x86_64 system call `nr`, if it has one.
pub fn syscall_name(nr: i64) -> Option<&'static str> {
    let nr = u16::try_from(nr).ok()?;
    names::X86_64
        .binary_search_by_key(&nr, |&(n, _)| n)
        .ok()
        .map(|i| names::X86_64[i].1)
}

#[cfg(test)]
mod tests;
