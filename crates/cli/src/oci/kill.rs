//! `crx-runc kill ID [SIGNAL] [--all]`: a signal (default SIGTERM, as runc) to the container's
//! process in the guest (`--all`: to every process of the container).

use std::path::Path;

use anyhow::Result;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Send the signal to every process of the container.
    #[arg(short, long)]
    all: bool,
    /// Container id.
    container_id: String,
    /// A name (TERM, SIGKILL) or a number.
    #[arg(default_value = "SIGTERM", value_parser = crate::parse_signal)]
    signal: i32,
}

pub fn run(root: &Path, a: Args) -> Result<i32> {
    crx_runtime::oci::lifecycle::signal(root, &a.container_id, a.signal, a.all)?;
    Ok(0)
}
