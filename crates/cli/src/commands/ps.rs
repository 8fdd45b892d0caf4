//! `crx ps`: list instances.

use std::path::Path;

use anyhow::Result;
use crx_runtime::{home, Status};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Show every instance, not only running ones.
    #[arg(short = 'a', long)]
    all: bool,
    /// Print ids only.
    #[arg(short = 'q', long)]
    quiet: bool,
}

pub fn run(root: &Path, a: Args) -> Result<i32> {
    let homes = home::list(root)?;
    if !a.quiet {
        println!(
            "{:<12}  {:<16}  {:<24}  {:<12}  COMMAND",
            "ID", "NAME", "IMAGE", "STATUS"
        );
    }
    for h in homes {
        let status = h.status();
        if !a.all && !matches!(status, Status::Running | Status::Created) {
            continue;
        }
        if a.quiet {
            println!("{}", h.state.id);
            continue;
        }
        println!(
            "{:<12}  {:<16}  {:<24}  {:<12}  {}",
            h.state.id,
            h.name(),
            h.image(),
            status.to_string(),
            h.command().join(" ")
        );
    }
    Ok(0)
}
