//! `cargo xtask bench warm`: warm start from a VM snapshot, median and p90, cold and warm in one
//! invocation.
//! 1. This host's /dev/kvm, a tiny guest: `crx-vmm --restore` against a cold start of the same
//!    guest, process start to the first guest instruction (`crx-vmm-bench --warm`).
//! 2. The nested lab, a Linux guest: spawn to the booted guest ready (cold) against spawn to
//!    the guest restored from a snapshot answering on its console (`crx-vmm-bench --lab-warm`).
//!
//! The runtime's part (`crx run` from a template, PSS of restored sandboxes) is not built yet
//! (issue 17).

use std::process::Command;

use anyhow::Result;

use crate::kernel::{self, Flavor};
use crate::{bench_lab, cmd, lab, workspace_root};

/// Builds crx-vmm and crx-initrd in release; runs the host part `runs * 5` times and the lab
/// part `runs` times.
pub fn run(runs: usize) -> Result<i32> {
    bench_lab::build_release(&["crx-vmm", "crx-initrd"])?;
    kernel::ensure(Flavor::Guest)?;
    let bench = workspace_root().join("target/release/crx-vmm-bench");
    println!("== on this host's /dev/kvm (tiny guest): restore vs cold start");
    cmd::run(Command::new(&bench).args(["--warm", "--runs", &(runs.max(1) * 5).to_string()]))?;
    println!("== in the nested lab (Linux guest): restore vs cold boot");
    let cmd = [
        bench.to_string_lossy().into_owned(),
        "--lab-warm".into(),
        runs.max(1).to_string(),
    ];
    lab::run(&cmd, &lab::Options::default())
}
