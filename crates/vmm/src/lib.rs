//! crx-vmm library: one microVM per process on KVM and the rust-vmm crates.
//!
//! `config` (what to run) -> `boot` (guest memory contents) -> `vm` (KVM objects, devices,
//! vCPU threads, event loop) -> `exit` (why it ended). Devices come from `crx-devices`, which
//! never calls KVM: eventfd/irqfd registration happens here.

pub mod boot;
pub mod bus;
pub mod config;
pub mod console;
pub mod cpuid;
pub mod event_loop;
pub mod exit;
pub mod inherited;
pub mod layout;
pub mod logger;
pub mod memory;
pub mod regs;
pub mod seccomp;
pub mod snapshot;
pub mod vcpu;
pub mod virtio;
pub mod vm;

pub use config::{ConfigError, VmConfig};
pub use exit::VmExit;
pub use vm::{run_vm, RunReport, Vm, VmError, VmOptions};
