//! `cargo xtask bench warm`: warm start from a VM snapshot. The host part (this host's
//! /dev/kvm, a tiny guest): `crx-vmm --restore` against a cold start of the same guest, process
//! start to the first guest instruction, median and p90, in one invocation (`crx-vmm-bench
//! --warm`, crates/vmm). The lab part (templates in the runtime: `crx run` cold vs warm, PSS of
//! restored sandboxes) is not built yet: issue 17.

use std::process::Command;

use anyhow::Result;

use crate::{bench_lab, cmd, workspace_root};

/// Builds crx-vmm in release and runs the host part `runs * 5` times.
pub fn run(runs: usize) -> Result<i32> {
    bench_lab::build_release(&["crx-vmm"])?;
    let bench = workspace_root().join("target/release/crx-vmm-bench");
    println!("== on this host's /dev/kvm (tiny guest): restore vs cold start");
    cmd::run(Command::new(&bench).args(["--warm", "--runs", &(runs.max(1) * 5).to_string()]))?;
    println!("== in the nested lab: not built yet (runtime templates, issue 17)");
    Ok(0)
}
