//! `crx __monitor ID` (internal): started by `crx run -d`; waits for the container, records
//! its exit code and shuts the VM down.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use crx_runtime::agent::Agent;
use crx_runtime::{home, instance};

#[derive(Debug, clap::Args)]
pub struct Args {
    id: String,
    /// Remove the home afterwards.
    #[arg(long)]
    rm: bool,
}

pub fn run(root: &Path, a: Args) -> Result<i32> {
    let mut h = home::find(root, &a.id)?;
    let agent = Agent::new(h.vsock_path());
    let vmm = h.state.vmm_pid;
    let waited = agent.control().and_then(|mut c| {
        instance::wait_status(&mut c, &h.state.id, None, || {
            vmm.is_some_and(home::pid_alive)
        })
    });
    if let Ok(s) = waited {
        h.set_exit(s.code)?;
    }
    if let Some(pid) = h.state.vmm_pid {
        instance::shutdown(&agent, pid, Duration::from_secs(30));
    }
    if a.rm {
        h.remove()?;
    }
    Ok(0)
}
