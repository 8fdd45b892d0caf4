//! `crx-runc __monitor ID` (internal): started by `create` with the container's stdio as its
//! own; boots the VM, creates the container, serves start/pause/resume, forwards the signals
//! it gets to the container, and exits with the container's status (dying by its signal).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::Result;
use crx_runtime::chain;
use crx_runtime::oci::monitor::Monitor;
use crx_runtime::oci::ContainerDir;

use super::{log, signals};

#[derive(Debug, clap::Args)]
pub struct Args {
    id: String,
    /// Where the pty master goes (process.terminal).
    #[arg(long)]
    console_socket: Option<PathBuf>,
}

/// Starts the monitor of `c`, its stdio ours, in its own process group.
pub fn spawn(root: &Path, c: &ContainerDir, console: Option<&Path>) -> std::io::Result<Child> {
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.arg("--root").arg(root);
    if let Some(g) = log::global_args() {
        cmd.args(g);
    }
    cmd.arg("__monitor").arg(&c.id);
    if let Some(s) = console {
        cmd.arg("--console-socket").arg(std::path::absolute(s)?);
    }
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd.stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
}

pub fn run(root: &Path, a: Args) -> Result<i32> {
    // Our stderr is the container's: errors go to the record and the log only.
    let c = ContainerDir::open(root, &a.id)?;
    let m = match Monitor::boot(c, a.console_socket.as_deref()) {
        Ok(m) => m,
        Err(e) => {
            log::error_quiet(&chain(&e));
            return Ok(1);
        }
    };
    if !m.left_out().is_empty() {
        log::warn_quiet(&format!(
            "container {}: bind mounts of single files are not shared with the VM yet, left out: {}",
            m.id(),
            m.left_out().join(", ")
        ));
    }
    let (agent, id) = (m.agent().clone(), m.id().to_owned());
    signals::forward(move |sig| {
        let _ = agent.signal(&id, sig);
    })?;
    if let Err(e) = m.serve() {
        log::error_quiet(&chain(&e));
        return Ok(1);
    }
    match m.wait() {
        // Validated again: only a signal that ends a process is re-raised here (a reported
        // SIGSTOP would stop the monitor, and everyone waiting on it).
        Ok(st) => Ok(match st.validated().signal {
            Some(sig) => signals::die_by(sig),
            None => st.code,
        }),
        Err(e) => {
            log::error_quiet(&chain(&e));
            Ok(1)
        }
    }
}
