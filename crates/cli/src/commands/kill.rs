//! `crx kill`: send a signal to a running container.

use std::path::Path;

use anyhow::Result;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The signal: a name (KILL, TERM, ...) or a number.
    #[arg(short = 's', long = "signal", default_value = "KILL", value_parser = crate::parse_signal)]
    signal: i32,
    /// Instance id, id prefix or name.
    #[arg(required = true)]
    ids: Vec<String>,
}

pub fn run(root: &Path, a: Args) -> Result<i32> {
    super::each_instance(&a.ids, |id| {
        crx_runtime::instance::signal(root, id, a.signal)
    })
}
