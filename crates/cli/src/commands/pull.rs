//! `crx pull`: pull an image from a registry (linux/amd64).

use std::path::Path;

use anyhow::Result;
use crx_image::PullOptions;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The image reference (e.g. busybox:latest, localhost:5000/app:1).
    reference: String,
}

pub fn run(root: &Path, a: Args) -> Result<i32> {
    let store = crx_runtime::instance::open_store(root)?;
    let image = store.pull(&a.reference, &PullOptions::default())?;
    println!("pulled {} {}", a.reference, image.manifest_digest);
    Ok(0)
}
