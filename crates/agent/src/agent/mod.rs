//! Agent mode: serve crx-proto requests from the host.
//!
//! The transport is a [`listener::Listener`]: vsock (in the guest) or a Unix socket (host-tier
//! tests run crx-init as an ordinary process). Each connection gets a thread running a
//! [`session::Session`]; a `Shutdown` request ends [`serve`].

pub mod listener;
pub mod port;
#[allow(unsafe_code)]
pub mod pty;
pub mod relay;
pub mod session;
pub mod streams;

use std::sync::{mpsc, Arc};

use anyhow::{Context, Result};

use crate::boot_timer;
use crate::containers::forward::Forwarder;
use crate::reaper::Reaper;
use listener::{ListenAddr, Listener};
use pty::Ptys;
use session::{Outcome, Session};
use streams::Streams;

/// Listens on `addr` and serves connections until one asks for `Shutdown`; `mark` gets
/// [`boot_timer::READY`] once the socket listens, then [`boot_timer::HELPER_STARTED`] from
/// the thread that starts the container helper, to which container requests go. A
/// `template` boot starts the helper first and says when it may be snapshotted
/// ([`crate::identity::snapshot_point`]).
pub fn serve(
    addr: &ListenAddr,
    reaper: &Reaper,
    mark: impl Fn(u8) + Send + Copy + 'static,
    template: bool,
) -> Result<()> {
    let forwarder = Arc::new(Forwarder::new(reaper));
    let helper = Some(forwarder.clone());
    let streams = Arc::new(Streams::default());
    let ptys = Arc::new(Ptys::default());
    let listener = Listener::bind(addr).with_context(|| format!("listening on {addr}"))?;
    mark(boot_timer::READY);
    eprintln!("crx-init: agent listening on {addr}");
    if template {
        forwarder.warm_up();
    }
    // The helper starts while the host connects; a request that needs it first waits.
    let warming = std::thread::Builder::new()
        .name("helper-start".into())
        .spawn(move || {
            forwarder.warm_up();
            mark(boot_timer::HELPER_STARTED);
        });
    if let Err(e) = warming {
        eprintln!("crx-init: cannot start the helper-start thread: {e}");
    }
    let (tx, rx) = mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("accept".into())
        .spawn(move || loop {
            match listener.accept() {
                Ok(conn) => {
                    let tx = tx.clone();
                    let helper = helper.clone();
                    let streams = streams.clone();
                    let ptys = ptys.clone();
                    let spawned =
                        std::thread::Builder::new()
                            .name("session".into())
                            .spawn(move || {
                                if Session::new(conn, helper, streams, ptys).run()
                                    == Outcome::Shutdown
                                {
                                    let _ = tx.send(());
                                }
                            });
                    if let Err(e) = spawned {
                        eprintln!("crx-init: cannot start a session thread: {e}");
                    }
                }
                Err(e) => {
                    eprintln!("crx-init: accept: {e}");
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            }
        })
        .context("starting the accept thread")?;
    // A template is snapshotted from here on, this thread in recv, the other in accept.
    crate::identity::snapshot_point(template);
    // The accept thread holds a sender forever, so this returns only on Shutdown.
    rx.recv().context("agent accept loop ended")
}
