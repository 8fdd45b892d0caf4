//! `crx rm`: remove instances (`-f`: also running ones, killing their VM).

use std::path::Path;

use anyhow::Result;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Kill a running instance's VM first.
    #[arg(short = 'f', long)]
    force: bool,
    /// Instance ids, id prefixes or names.
    #[arg(required = true)]
    ids: Vec<String>,
}

pub fn run(root: &Path, a: Args) -> Result<i32> {
    let code = super::each_instance(&a.ids, |id| {
        crx_runtime::instance::remove(root, id, a.force)
    });
    // The removed VMs' cgroups (ADR 0011), with whatever a killed jailer left in them.
    crx_runtime::jail::cgroup::sweep();
    code
}
