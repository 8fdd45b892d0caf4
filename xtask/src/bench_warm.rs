//! `cargo xtask bench warm`: warm start from a VM snapshot, median and p90, cold and warm in one
//! invocation.
//! 1. This host's /dev/kvm, a tiny guest: `crx-vmm --restore` against a cold start of the same
//!    guest, process start to the first guest instruction (`crx-vmm-bench --warm`).
//! 2. The nested lab, a Linux guest: spawn to the booted guest ready (cold) against spawn to
//!    the guest restored from a snapshot answering on its console (`crx-vmm-bench --lab-warm`).
//! 3. The nested lab, the runtime (same lab session, [`crate::bench_template`]): `crx run`
//!    cold vs restored from its template vs `runc run`, and the PSS of 10 idle sandboxes
//!    restored from one template vs 10 booted cold.

use std::process::Command;

use anyhow::Result;

use crate::kernel::{self, Flavor};
use crate::{bench_lab, cmd, workspace_root};

/// Builds crx-vmm and crx-initrd in release; runs the host part `runs * 5` times and the lab
/// part `runs` times.
pub fn run(runs: usize) -> Result<i32> {
    bench_lab::build_release(&["crx-vmm", "crx-initrd"])?;
    kernel::ensure(Flavor::Guest)?;
    let bench = workspace_root().join("target/release/crx-vmm-bench");
    println!("== on this host's /dev/kvm (tiny guest): restore vs cold start");
    cmd::run(Command::new(&bench).args(["--warm", "--runs", &(runs.max(1) * 5).to_string()]))?;
    println!("== in the nested lab: crx-vmm restore vs cold boot, then crx run from templates");
    bench_lab::outer("warm", runs.max(1), Vec::new())
}

/// Inside the lab: the crx-vmm part, then the runtime part.
pub fn inner(runs: usize) -> Result<()> {
    let bench = workspace_root().join("target/release/crx-vmm-bench");
    println!("-- crx-vmm (Linux guest): restore vs cold boot");
    cmd::run(Command::new(&bench).args(["--lab-warm", &runs.to_string()]))?;
    println!("-- crx run: cold vs from a template vs runc");
    crate::bench_template::inner(runs)
}
