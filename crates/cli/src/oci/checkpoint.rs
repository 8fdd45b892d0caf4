//! `crx-runc checkpoint ID` and `crx-runc restore ID` (runc's CRIU commands): refused with a
//! reason. CRIU saves a process tree of the host's kernel; a crx-runc container's processes
//! live in a guest kernel, and the VM itself cannot be snapshotted yet. The container is left
//! as it was.

use std::path::Path;

use anyhow::{bail, Result};

/// runc's `restore` flags are many; they are accepted and ignored, since nothing is restored.
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    args: Vec<String>,
}

const WHY: &str = "not supported: the container's processes run in a microVM's kernel, out of \
                   CRIU's reach, and VM snapshots are not implemented; the container is unchanged";

pub fn checkpoint(root: &Path, a: liboci_cli::Checkpoint) -> Result<i32> {
    crx_runtime::oci::ContainerDir::open(root, &a.container_id)?;
    bail!("checkpoint of {}: {WHY}", a.container_id)
}

pub fn restore(_root: &Path, a: RestoreArgs) -> Result<i32> {
    let id = a.args.last().map_or("?", String::as_str);
    bail!("restore of {id}: {WHY}")
}
