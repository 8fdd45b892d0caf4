//! `crx images`: list images.

use std::path::Path;

use anyhow::Result;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(root: &Path, _a: Args) -> Result<i32> {
    let store = crx_runtime::instance::open_store(root)?;
    println!("{:<40}  {:<12}  {:>10}", "REFERENCE", "DIGEST", "SIZE");
    for s in store.list()? {
        let digest = s.manifest_digest.to_string();
        let short = digest.strip_prefix("sha256:").unwrap_or(&digest);
        println!(
            "{:<40}  {:<12}  {:>10}",
            s.reference.familiar(),
            &short[..12.min(short.len())],
            s.size
        );
    }
    Ok(0)
}
