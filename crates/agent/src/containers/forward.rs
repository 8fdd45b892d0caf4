//! The agent's side of the container helper: starts it and forwards requests to it.
//!
//! The helper starts on first use, or earlier from [`Forwarder::warm_up`] (the agent calls it
//! on a thread once it listens, so starting the helper is not on the way to agent ready).
//!
//! Requests from all sessions share the helper's socket; each gets a fresh id and a channel, and
//! a demux thread routes the helper's responses back by id. If the helper dies every pending
//! request gets an `internal` error, and the next request starts a new helper (started with
//! `--restarted`: it kills what is left of the old helper's containers, which it cannot
//! manage, so their ids can be used again).

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use crx_proto::{
    encode, read_message, AgentError, ErrorKind, Request, Response, ResponseFrame, StreamKind,
};
use serde::{Deserialize, Serialize};

use super::fdpass::write_with_fds;

use crate::reaper::Reaper;

/// A request as the agent sends it to the helper: with the stdio streams whose descriptors
/// travel with it (SCM_RIGHTS, in this order), and for a process with a terminal the console
/// socket libcontainer sends its pty master to.
#[derive(Debug, Serialize, Deserialize)]
pub struct HelperFrame {
    pub id: u64,
    pub request: Request,
    #[serde(default)]
    pub stdio: Vec<StreamKind>,
    #[serde(default)]
    pub console_socket: Option<PathBuf>,
}

type Pending = Arc<Mutex<HashMap<u64, Sender<Response>>>>;

/// Handle to the container helper, started on first use and restarted when it has died.
pub struct Forwarder {
    reaper: Reaper,
    /// `None` until the first helper starts.
    link: Mutex<Option<Arc<Link>>>,
    next: AtomicU64,
}

/// One running helper: its socket, its pending calls, and whether it still runs.
struct Link {
    writer: Mutex<UnixStream>,
    pending: Pending,
    alive: Arc<AtomicBool>,
}

fn internal(msg: &str) -> Response {
    Response::Error(AgentError::new(ErrorKind::Internal, msg))
}

impl Forwarder {
    /// A forwarder whose helper (`/proc/self/exe --container-helper`, with its demux thread)
    /// starts on first use.
    pub fn new(reaper: &Reaper) -> Forwarder {
        Forwarder {
            reaper: reaper.clone(),
            link: Mutex::new(None),
            next: AtomicU64::new(1),
        }
    }

    /// Starts the helper now if it is not running (a failure is reported and retried on use).
    pub fn warm_up(&self) {
        if let Err(Response::Error(e)) = self.link() {
            eprintln!("crx-init: {e}");
        }
    }

    /// Whether a helper was started (it may have died since).
    pub fn started(&self) -> bool {
        self.link
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// The running helper: started if none was, started anew if the last one died.
    fn link(&self) -> Result<Arc<Link>, Response> {
        let mut link = self.link.lock().unwrap_or_else(|e| e.into_inner());
        match link.as_ref() {
            Some(l) if l.alive.load(Ordering::SeqCst) => return Ok(l.clone()),
            Some(_) => eprintln!("crx-init: restarting the container helper"),
            None => {}
        }
        let restarted = link.is_some();
        let fresh = Arc::new(
            Link::spawn(&self.reaper, restarted)
                .map_err(|e| internal(&format!("starting the container helper: {e:#}")))?,
        );
        *link = Some(fresh.clone());
        Ok(fresh)
    }

    /// Forwards one request (with the stdio stream descriptors of the process it starts) and
    /// waits for its response.
    pub fn call(&self, request: Request, stdio: Vec<(StreamKind, OwnedFd)>) -> Response {
        self.call_with_console(request, stdio, None)
    }

    /// [`Forwarder::call`] for a process with a terminal: libcontainer sends its pty master to
    /// the Unix socket at `console_socket`.
    pub fn call_with_console(
        &self,
        request: Request,
        stdio: Vec<(StreamKind, OwnedFd)>,
        console_socket: Option<PathBuf>,
    ) -> Response {
        let link = match self.link() {
            Ok(l) => l,
            Err(r) => return r,
        };
        let id = self.next.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = channel();
        link.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        let (kinds, fds): (Vec<StreamKind>, Vec<OwnedFd>) = stdio.into_iter().unzip();
        let frame = HelperFrame {
            id,
            request,
            stdio: kinds,
            console_socket,
        };
        let sent = encode(&frame)
            .map_err(|e| e.to_string())
            .and_then(|payload| {
                let mut buf = (payload.len() as u32).to_be_bytes().to_vec();
                buf.extend(payload);
                let mut w = link.writer.lock().unwrap_or_else(|e| e.into_inner());
                write_with_fds(&mut w, &buf, &fds).map_err(|e| e.to_string())
            });
        // Our copies of the stream descriptors are no longer needed (the helper has its own).
        drop(fds);
        if let Err(e) = sent {
            link.pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            return internal(&format!("writing to the container helper: {e}"));
        }
        rx.recv()
            .unwrap_or_else(|_| internal("the container helper exited"))
    }
}

impl Link {
    fn spawn(reaper: &Reaper, restarted: bool) -> Result<Link> {
        let (ours, theirs) = UnixStream::pair().context("socketpair")?;
        let mut cmd = Command::new("/proc/self/exe");
        cmd.arg("--container-helper")
            .stdin(Stdio::from(OwnedFd::from(theirs)));
        if restarted {
            cmd.arg("--restarted");
        }
        let pid = reaper
            .spawn(&mut cmd)
            .context("starting the container helper")?;
        let pending: Pending = Arc::default();
        let alive = Arc::new(AtomicBool::new(true));
        let mut reader = ours.try_clone().context("socket")?;
        // Its exit, not the socket's end (which a descendant could still hold), marks it dead.
        let (watch, socket) = (reaper.clone(), ours.try_clone().context("socket")?);
        let (p3, a3) = (pending.clone(), alive.clone());
        std::thread::Builder::new()
            .name("helper-watch".into())
            .spawn(move || {
                let st = watch.wait(pid);
                eprintln!("crx-init: the container helper exited ({st:?})");
                a3.store(false, Ordering::SeqCst);
                let _ = socket.shutdown(std::net::Shutdown::Both);
                p3.lock().unwrap_or_else(|e| e.into_inner()).clear();
            })
            .context("starting the helper watch thread")?;
        let (p2, a2) = (pending.clone(), alive.clone());
        std::thread::Builder::new()
            .name("helper-demux".into())
            .spawn(move || {
                while let Ok(Some(f)) = read_message::<ResponseFrame, _>(&mut reader) {
                    let tx = p2.lock().unwrap_or_else(|e| e.into_inner()).remove(&f.id);
                    if let Some(tx) = tx {
                        let _ = tx.send(f.response);
                    }
                }
                a2.store(false, Ordering::SeqCst);
                // Dropping the senders fails every pending call.
                p2.lock().unwrap_or_else(|e| e.into_inner()).clear();
            })
            .context("starting the helper demux thread")?;
        Ok(Link {
            writer: Mutex::new(ours),
            pending,
            alive,
        })
    }
}
