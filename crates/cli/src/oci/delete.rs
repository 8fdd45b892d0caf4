//! `crx-runc delete [--force] ID`: tears the VM down, runs the poststop hooks and removes every
//! trace. A running container only with `--force`; `--force` on a missing one succeeds.

use std::path::Path;

use anyhow::Result;
use crx_runtime::chain;
use crx_runtime::oci::lifecycle;

pub fn run(root: &Path, a: liboci_cli::Delete) -> Result<i32> {
    if let Some(w) = lifecycle::delete(root, &a.container_id, a.force)? {
        super::log::warn(&chain(&w));
    }
    // The deleted VM's cgroup (ADR 0011), with whatever a killed jailer left in it.
    crx_runtime::jail::cgroup::sweep();
    Ok(0)
}
