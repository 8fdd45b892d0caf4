//! Containers, run with youki's libcontainer by a single-threaded helper process.
//!
//! libcontainer forks and clones; doing that from the multi-threaded agent risks deadlocks in
//! the child on locks other threads held at fork time (youki#3027). So the agent starts
//! `crx-init --container-helper` (a fresh exec, hence single-threaded) with a socketpair as its
//! stdin, and forwards container requests to it as crx-proto frames with ids of its own. The
//! helper is a child subreaper: container processes are its children or are reparented to it,
//! and it reaps them to answer `Wait`. See docs/adr/0004-agent-containers.md.

pub mod bundle;
#[allow(unsafe_code)]
pub mod fdpass;
pub mod forward;
pub mod helper;
pub mod net_sysctl;
pub mod oom;
pub mod resources;
pub mod rootfs;
#[allow(unsafe_code)]
pub mod seccomp;
pub mod spec_fields;

/// Where per-container mounts and bundles live in the guest.
pub const CONTAINERS_DIR: &str = "/run/crx/containers";
/// The cgroup (v2) under which every container gets `ID` (its `cgroupsPath` is `/crx/ID`).
pub const CGROUP_PARENT: &str = "/crx";
/// Where the guest mounts cgroup2; [`CGROUP_PARENT`] lies under it.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Container `id`'s cgroup path, as libcontainer and libcgroups take it.
pub fn cgroup_path(id: &str) -> String {
    format!("{CGROUP_PARENT}/{id}")
}

/// libcontainer's state directory.
pub const STATE_DIR: &str = "/run/crx/state";
