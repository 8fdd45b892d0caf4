//! Signals to `crx run` / `crx exec`: forwarded to the container's process once it runs;
//! before that they end crx (killing a VMM that is still booting and removing its home, which
//! the VMM's own process group would otherwise keep from seeing a terminal's Ctrl-C).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use crx_runtime::agent::Agent;
use crx_runtime::instance;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Where a signal goes now.
#[derive(Debug, Default)]
pub enum Target {
    /// Nothing started: crx exits.
    #[default]
    Nothing,
    /// The VMM (pid) runs, the container not yet: kill it, remove the home, exit.
    Booting(u32, PathBuf),
    /// Forward to the container `id`'s init, or its exec.
    Process {
        agent: Agent,
        id: String,
        exec_id: Option<String>,
    },
}

/// The signal-forwarding thread's target.
#[derive(Debug, Clone)]
pub struct Forwarder(Arc<Mutex<Target>>);

impl Forwarder {
    /// Catches the forwarded signals and starts the thread that forwards them.
    pub fn start() -> Result<Forwarder> {
        let f = Forwarder(Arc::default());
        let target = f.0.clone();
        crx_runtime::signals::forward(move |sig| {
            if let Ok(sig) = Signal::try_from(sig) {
                forward(&target.lock().unwrap_or_else(|e| e.into_inner()), sig);
            }
        })
        .context("catching signals")?;
        Ok(f)
    }

    pub fn set(&self, target: Target) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = target;
    }
}

fn forward(target: &Target, sig: Signal) {
    match target {
        Target::Process { agent, id, exec_id } => {
            let _ = agent.signal_process(id, exec_id.as_deref(), sig as i32);
        }
        Target::Booting(pid, home) => {
            let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
            instance::wait_gone(*pid, Duration::from_secs(5));
            // As `rm` does: its binds, network (CNI DEL, the namespace) and directory.
            let _ = crx_runtime::Home::load(home).map(|h| h.remove());
            std::process::exit(128 + sig as i32);
        }
        Target::Nothing => std::process::exit(128 + sig as i32),
    }
}
