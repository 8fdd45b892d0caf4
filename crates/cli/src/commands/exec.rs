//! `crx exec`: a command in a running (detached) container.

use std::path::Path;

use anyhow::Result;
use crx_runtime::agent::Agent;

use crate::signals::{Forwarder, Target};

#[derive(Debug, clap::Args)]
#[command(trailing_var_arg = true)]
pub struct Args {
    /// Copy our stdin to the command.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Allocate a terminal in the guest (with -i and a terminal as stdin, ours goes raw).
    #[arg(short = 't', long)]
    tty: bool,
    /// Instance id, id prefix or name.
    id: String,
    /// The command and its arguments.
    #[arg(required = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

pub fn run(root: &Path, a: Args) -> Result<i32> {
    let signals = Forwarder::start()?;
    let on_started = |agent: &Agent, id: &str, exec_id: &str| {
        signals.set(Target::Process {
            agent: agent.clone(),
            id: id.to_owned(),
            exec_id: Some(exec_id.to_owned()),
        });
    };
    let code =
        crx_runtime::instance::exec(root, &a.id, a.command, a.interactive, a.tty, on_started)?;
    Ok(code)
}
