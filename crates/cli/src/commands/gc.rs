//! `crx gc`: remove the homes of instances whose VMM is gone and stale VM templates (ADR 0017);
//! `--images`: unused images too.

use std::path::Path;

use anyhow::Result;
use crx_runtime::{home, instance};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Also remove unnamed images and blobs no instance uses.
    #[arg(long)]
    images: bool,
}

pub fn run(root: &Path, a: Args) -> Result<i32> {
    for id in home::gc(root)? {
        println!("removed instance {id}");
    }
    // The cgroups of VMs whose home is gone (ADR 0011), also after a kill -9.
    for cg in crx_runtime::jail::cgroup::sweep() {
        println!("removed cgroup {}", cg.display());
    }
    // Templates of other boot files or crx-vmm, and over the size limit (ADR 0017).
    let t = crx_runtime::template::gc()?;
    for name in &t.removed {
        println!("removed template {name}");
    }
    if a.images {
        let in_use: Vec<crx_image::Digest> = home::list(root)?
            .iter()
            .filter_map(|h| h.manifest_digest().parse().ok())
            .collect();
        let r = instance::open_store(root)?.gc(&in_use)?;
        println!(
            "removed {} blobs, {} disks, {} temporary entries ({} bytes)",
            r.blobs_removed, r.disks_removed, r.tmp_entries_removed, r.bytes_freed
        );
    }
    Ok(0)
}
