//! `crx-runc resume ID`: thaws a paused container.

use std::path::Path;

use anyhow::Result;

pub fn run(root: &Path, a: liboci_cli::Resume) -> Result<i32> {
    crx_runtime::oci::lifecycle::resume(root, &a.container_id)?;
    Ok(0)
}
