//! `crx-runc state ID`: the OCI state as JSON (ociVersion, id, status, pid, bundle,
//! annotations, and runc's rootfs, created, owner), and `boot`: the boot files and their verified
//! sha256 digests once the VM was started (ADR 0008).

use std::path::Path;

use anyhow::Result;

pub fn run(root: &Path, a: liboci_cli::State) -> Result<i32> {
    let state = crx_runtime::oci::lifecycle::state(root, &a.container_id)?;
    println!("{}", serde_json::to_string_pretty(&state)?);
    Ok(0)
}
