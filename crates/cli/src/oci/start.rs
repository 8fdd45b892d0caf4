//! `crx-runc start ID`: starts a created container's process, then runs the poststart hooks.

use std::path::Path;

use anyhow::Result;
use crx_runtime::chain;
use crx_runtime::oci::lifecycle;

pub fn run(root: &Path, a: liboci_cli::Start) -> Result<i32> {
    if let Some(w) = lifecycle::start(root, &a.container_id)? {
        super::log::warn(&chain(&w));
    }
    Ok(0)
}
