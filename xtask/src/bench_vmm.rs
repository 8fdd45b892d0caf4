//! `cargo xtask bench vmm`: crx-vmm's own figures, from `crx-vmm-bench` (crates/vmm): start to
//! first vCPU entry and idle memory on this host's KVM (tiny guests: host-side work, real
//! here), then guest time to init under crx-vmm versus QEMU microvm inside the lab.

use std::process::Command;

use anyhow::Result;

use crate::kernel::{self, Flavor};
use crate::{bench_lab, cmd, lab, workspace_root};

pub fn run(runs: usize) -> Result<i32> {
    bench_lab::build_release(&["crx-vmm", "crx-initrd"])?;
    kernel::ensure(Flavor::Guest)?;
    let bench = workspace_root().join("target/release/crx-vmm-bench");
    println!("== on this host's /dev/kvm (tiny guests)");
    cmd::run(Command::new(&bench).args(["--runs", &(runs.max(1) * 5).to_string()]))?;
    println!("== in the nested lab: guest kernel to init, crx-vmm vs QEMU microvm");
    let cmd = [
        bench.to_string_lossy().into_owned(),
        "--lab-boot".into(),
        runs.to_string(),
    ];
    lab::run(&cmd, &lab::Options::default())
}
