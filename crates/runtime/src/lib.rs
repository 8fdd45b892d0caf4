//! Instances and containers: drives crx-vmm and the guest agent.
//!
//! - [`paths`]: the state root, the boot artefacts (kernel, base initrd), the VMM binary.
//! - [`boot_files`]: the boot artefacts verified against their sha256 manifest (ADR 0008).
//! - [`record`]: the one on-disk record of a sandbox and its container (`state.json`, versioned,
//!   written atomically), the files of its directory, process liveness.
//! - [`home`]: crx's instance homes (their record, crx's data in its annotations); listing,
//!   lookup, gc of dead VMMs.
//! - [`spec`]: the OCI runtime spec from an image config and the `run` flags.
//! - [`vm`]: the VM description crx-vmm reads (`vm.toml`, `crx-vmconfig`) and its process;
//!   [`vmlog`]: why a VM stopped, from its logs.
//! - [`agent`]: control and stdio connections to the guest agent over the hybrid vsock.
//! - [`instance`]: run, exec, signal, remove.
//! - [`monitor`]: the runtime's own monitor processes (this program again), started and
//!   entered here; [`sync`]: their start-up report over an inherited pipe.
//! - [`pod`]: one microVM per pod, every container of the pod in it (the containerd shim).
//! - [`sandbox`]: one microVM (its VMM, its agent) holding containers: the one boot path.
//! - [`relay`]: the one stdio/pty relay of a process, and the wait for its exit.
//! - [`signals`]: signals forwarded to a container's process; dying by its signal.
//! - [`check`]: host readiness (`crx check`), with a calibrated tiny KVM guest.
//! - [`template`]: VMs booted once to agent ready, snapshotted, restored copy-on-write.
//! - [`trace`]: boot-phase timestamps with `CRX_TRACE=1`.
//! - [`trim`]: a monitor's startup pages handed back once it waits (`MADV_PAGEOUT`).
//! - [`virtiofs`]: host directories shared live with a VM (one virtiofsd each).
//! - [`net`]: a container's network namespace joined by its VM (a tap, tc redirects).
//! - [`tty`]: host terminals: raw mode, the pty pump and window sizes, console-socket fd passing.
#![deny(unsafe_code)] // allowed in `tty`, `oci::namespace`, `net::tap` (ioctls), `child` (pre_exec), `sync` (an inherited fd) and `trim` (madvise) alone

pub mod agent;
pub mod boot_files;
pub mod check;
pub mod child;
pub mod error;
pub mod home;
pub mod instance;
pub mod jail;
pub mod monitor;
pub mod net;
pub mod oci;
pub mod paths;
pub mod pod;
pub mod record;
pub mod relay;
pub mod sandbox;
pub mod signals;
pub mod spec;
pub mod sync;
pub mod template;
pub mod trace;
pub mod trim;
pub mod tty;
pub mod virtiofs;
pub mod vm;
pub mod vmlog;

pub use crx_proto::chain;
pub use error::{RuntimeError, SpecError};
pub use home::{Home, Status};
pub use instance::{RunConfig, Started};
pub use record::{Record, SandboxFiles};
pub use spec::ProcessOptions;
