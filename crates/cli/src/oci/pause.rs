//! `crx-runc pause ID`: freezes the container's processes (the cgroup freezer in the guest).

use std::path::Path;

use anyhow::Result;

pub fn run(root: &Path, a: liboci_cli::Pause) -> Result<i32> {
    crx_runtime::oci::lifecycle::pause(root, &a.container_id)?;
    Ok(0)
}
