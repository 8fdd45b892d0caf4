//! The agent's side of the container helper: starts it and forwards requests to it.
//!
//! Requests from all sessions share the helper's socket; each gets a fresh id and a channel, and
//! a demux thread routes the helper's responses back by id. If the helper dies every pending
//! and later request gets an `internal` error.

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

/// Handle to a running container helper.
pub struct Forwarder {
    writer: Mutex<UnixStream>,
    pending: Pending,
    next: AtomicU64,
    alive: Arc<AtomicBool>,
}

fn internal(msg: &str) -> Response {
    Response::Error(AgentError::new(ErrorKind::Internal, msg))
}

impl Forwarder {
    /// Starts `/proc/self/exe --container-helper` and the demux thread.
    pub fn spawn(reaper: &Reaper) -> Result<Forwarder> {
        let (ours, theirs) = UnixStream::pair().context("socketpair")?;
        let mut cmd = Command::new("/proc/self/exe");
        cmd.arg("--container-helper")
            .stdin(Stdio::from(OwnedFd::from(theirs)));
        reaper
            .spawn(&mut cmd)
            .context("starting the container helper")?;
        let pending: Pending = Arc::default();
        let alive = Arc::new(AtomicBool::new(true));
        let mut reader = ours.try_clone().context("socket")?;
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
                eprintln!("crx-init: the container helper exited");
                a2.store(false, Ordering::SeqCst);
                // Dropping the senders fails every pending call.
                p2.lock().unwrap_or_else(|e| e.into_inner()).clear();
            })
            .context("starting the helper demux thread")?;
        Ok(Forwarder {
            writer: Mutex::new(ours),
            pending,
            next: AtomicU64::new(1),
            alive,
        })
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
        if !self.alive.load(Ordering::SeqCst) {
            return internal("the container helper is not running");
        }
        let id = self.next.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = channel();
        self.pending
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
                let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
                write_with_fds(&mut w, &buf, &fds).map_err(|e| e.to_string())
            });
        // Our copies of the stream descriptors are no longer needed (the helper has its own).
        drop(fds);
        if let Err(e) = sent {
            self.pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            return internal(&format!("writing to the container helper: {e}"));
        }
        rx.recv()
            .unwrap_or_else(|_| internal("the container helper exited"))
    }
}
