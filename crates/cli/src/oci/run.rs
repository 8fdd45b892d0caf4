//! `crx-runc run [--bundle DIR] [--pid-file F] [-d] [--keep] ID`: create, start, and (without
//! `-d`) wait for the container, forwarding our signals to it; then delete it (unless
//! `--keep`) and exit with its code (`128 + N` for signal N). With `process.terminal` and no
//! `--console-socket`, our terminal is the container's (`console`).

use std::path::Path;

use anyhow::Result;
use crx_runtime::chain;
use crx_runtime::oci::bundle::Bundle;
use crx_runtime::oci::lifecycle;

use anyhow::Context;
use crx_runtime::signals;

use super::{console, create, exit_code, log};

pub fn run(root: &Path, a: liboci_cli::Run) -> Result<i32> {
    let id = a.container_id;
    // A terminal without a console socket, in the foreground: ours (as runc).
    let terminal = Bundle::load(&a.bundle).is_ok_and(|b| b.terminal());
    let own = if terminal && a.console_socket.is_none() && !a.detach {
        Some(console::listen()?)
    } else {
        None
    };
    let opts = create::Options {
        pid_file: a.pid_file.as_deref(),
        console_socket: a
            .console_socket
            .as_deref()
            .or(own.as_ref().map(|o| o.path())),
        preserve_fds: a.preserve_fds,
    };
    let created = create::create(root, &id, &a.bundle, &opts);
    if let (Err(_), Some(o)) = (&created, &own) {
        let _ = std::fs::remove_file(o.path());
    }
    let mut created = created?;
    let attached = match own.map(console::OwnConsole::attach).transpose() {
        Ok(a) => a,
        Err(e) => {
            let _ = lifecycle::delete(root, &id, true);
            return Err(e);
        }
    };
    match lifecycle::start(root, &id) {
        Ok(Some(w)) => log::warn(&chain(&w)),
        Ok(None) => {}
        Err(e) => {
            let _ = lifecycle::delete(root, &id, true);
            return Err(e.into());
        }
    }
    if a.detach {
        return Ok(0);
    }
    let (r, i) = (root.to_owned(), id.clone());
    signals::forward(move |sig| {
        let _ = lifecycle::signal(&r, &i, sig, false);
    })
    .context("catching signals")?;
    let status = created.monitor.wait()?;
    if let Some(a) = &attached {
        a.drain();
    }
    drop(attached); // our terminal restored
    if !a.keep {
        if let Some(w) = lifecycle::delete(root, &id, true)? {
            log::warn(&chain(&w));
        }
    }
    Ok(exit_code(status))
}
