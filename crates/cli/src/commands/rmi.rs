//! `crx rmi`: remove image names (their data goes with `crx gc --images`).

use std::path::Path;

use anyhow::Result;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Image references or digests.
    #[arg(required = true)]
    references: Vec<String>,
}

pub fn run(root: &Path, a: Args) -> Result<i32> {
    let store = crx_runtime::instance::open_store(root)?;
    for r in &a.references {
        for removed in store.remove(r)? {
            println!("untagged {}", removed.familiar());
        }
    }
    Ok(0)
}
