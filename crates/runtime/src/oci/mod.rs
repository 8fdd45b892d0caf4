//! The runc-compatible OCI runtime (`crx-runc`): every container in its own microVM.
//!
//! - [`bundle`]: `config.json` loaded and checked; the spec the guest gets; the VM's size.
//! - [`namespace`]: namespaces given by `path`: checked on the host, then fresh or the VM's.
//! - [`cpus`]: CPU lists against the VM's vCPUs.
//! - [`container`]: a container's directory under the root, its lock, listing.
//! - [`state`]: `state.json` (written atomically) and the OCI state.
//! - [`rootfs`]: how the bundle's rootfs reaches the guest (one function).
//! - [`hooks`]: OCI hooks, run on the host.
//! - [`cgroup`]: the host cgroup (`cgroupsPath`) the container's host processes join.
//! - [`monitor`]: the host process that stands for a container (the OCI pid).
//! - [`prepare`]: what the monitor readies at `create`, then the VM's boot.
//! - [`prestart`]: a container whose VM boots at `start` (a `network` entry without a path).
//! - [`lifecycle`]: create, start, kill, delete, pause, resume, processes, stats.
//! - [`exec`]: extra processes in a running container.

pub mod bundle;
pub mod cgroup;
pub mod container;
pub mod cpus;
pub mod error;
pub mod exec;
pub mod hooks;
pub mod lifecycle;
pub mod monitor;
pub mod namespace;
mod prepare;
mod prestart;
pub mod rootfs;
pub mod state;

pub use container::ContainerDir;
pub use error::OciError;
pub use state::{Record, Status};
