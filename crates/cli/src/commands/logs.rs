//! `crx logs`: an instance's console log (a detached container's output, boot messages).

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use crx_runtime::SandboxFiles;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Instance id, id prefix or name.
    id: String,
}

pub fn run(root: &Path, a: Args) -> Result<i32> {
    let home = crx_runtime::home::find(root, &a.id)?;
    let path = home.console_path();
    let log = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    std::io::stdout().write_all(&log)?;
    Ok(0)
}
