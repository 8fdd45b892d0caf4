//! `crx-runc create --bundle DIR [--pid-file F] [--console-socket S] ID`: boots the
//! container's VM and creates the container in it, not started. Returns once it is created;
//! the pid (file) is the monitor's, which holds our stdio for the container (with
//! `process.terminal`: a host pty whose master it has sent to the console socket).

use std::path::Path;

use anyhow::{bail, Result};
use crx_runtime::oci::lifecycle::{self, Created};

use super::write_pid_file;

pub fn run(root: &Path, a: liboci_cli::Create) -> Result<i32> {
    let opts = Options {
        pid_file: a.pid_file.as_deref(),
        console_socket: a.console_socket.as_deref(),
        preserve_fds: a.preserve_fds,
    };
    create(root, &a.container_id, &a.bundle, &opts)?;
    Ok(0)
}

/// The flags `create` and `run` share.
pub struct Options<'a> {
    pub pid_file: Option<&'a Path>,
    pub console_socket: Option<&'a Path>,
    pub preserve_fds: i32,
}

/// `create`, shared with `run`.
pub fn create(root: &Path, id: &str, bundle: &Path, o: &Options<'_>) -> Result<Created> {
    if o.preserve_fds > 0 {
        bail!("--preserve-fds: passing extra file descriptors into a microVM is not supported");
    }
    let console = o.console_socket.map(std::path::absolute).transpose()?;
    let created = lifecycle::create(root, id, bundle, console.as_deref())?;
    for w in &created.warnings {
        super::log::warn(w);
    }
    if let Some(p) = o.pid_file {
        let pid = created.monitor.id();
        if let Err(e) = write_pid_file(p, pid) {
            let _ = lifecycle::delete(root, id, true);
            return Err(e);
        }
    }
    Ok(created)
}
