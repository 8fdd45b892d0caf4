//! The monitor: the host process that stands for a container (its pid is the OCI `pid`). It
//! holds the VMM as its child and the container's stdio (its own fds 0, 1 and 2, given to
//! `create`, copied to and from the agent's streams), serves `start`, `pause` and `resume` on
//! `monitor.sock`, records each change in `state.json` (after `create`'s first record it is the
//! only writer), and exits with the container's status once it has shut the VM down.
//! It boots the VM at `create`, or at `start` for a `network` entry without a path, whose
//! namespace a tool may still configure in between ([`super::prestart`], ADR 0022).
//!
//! It also watches the VM's virtiofsd daemons: one that dies (the container's files are gone,
//! its processes would wait on the share forever) is reaped and recorded, the container is
//! marked `failed` (reported `stopped`) and the VM is killed, which ends every wait on it.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crx_proto::{ExitStatus, Request};

use super::container::ContainerDir;
use super::error::{io, OciError};
use super::prepare::Prepared;
use super::prestart;
use super::rootfs::Shares;
use super::state::{Phase, Record};
use crate::agent::{Agent, Control};
use crate::instance;
use crate::record::{pid_alive, SandboxFiles};
use crate::relay::{self, PtyEnds, Relay, Stdio};
use crate::sandbox::Sandbox;
use crate::signals;
use crate::sync::SyncWriter;
use crate::tty;
use crate::RuntimeError;
use crx_proto::chain;

/// How the container's process is attached: its stdio streams (copied with our fds 0, 1, 2),
/// or its terminal (relayed with the slave of a host pty whose master went to the console
/// socket).
#[derive(Debug)]
pub(super) enum Attach {
    Stdio(Stdio),
    Pty { stream: UnixStream, slave: OwnedFd },
}

/// A monitor whose container is created (not started).
#[derive(Debug)]
pub struct Monitor {
    c: ContainerDir,
    record: Arc<Shared>,
    vmm: Child,
    agent: Agent,
    control: Control,
    attach: Option<Attach>,
    /// The virtiofsd daemons (killed when dropped, after the VM), watched by a thread.
    shares: Arc<Mutex<Shares>>,
    vm: Arc<Mutex<VmWatch>>,
}

/// What the backend watcher and the waiting thread share about the VM.
#[derive(Debug, Default)]
struct VmWatch {
    /// The VM is being shut down on purpose: its daemons' exits are expected.
    stopping: bool,
    /// A backend died and the VM was killed: why.
    backend_died: Option<String>,
}

/// How often the monitor looks at its virtiofsd daemons.
const WATCH_EVERY: Duration = Duration::from_millis(200);

/// The record as the monitor's threads share it: each change is saved, then told to the
/// requests waiting on it (`wait-unpaused`).
#[derive(Debug)]
struct Shared {
    record: Mutex<Record>,
    changed: Condvar,
}

impl Shared {
    fn new(r: Record) -> Arc<Shared> {
        Arc::new(Shared {
            record: Mutex::new(r),
            changed: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Saves `r` (the held record, changed) in `c` and wakes the waiters.
    fn save(&self, c: &ContainerDir, r: &Record) -> Result<(), OciError> {
        let saved = c.save(r);
        self.changed.notify_all();
        saved
    }

    /// Blocks while the container is paused (returns at once when it is not).
    fn wait_unpaused(&self) {
        let held = self.lock();
        let waited = self.changed.wait_while(held, |r| r.phase == Phase::Paused);
        drop(waited.unwrap_or_else(|e| e.into_inner()));
    }
}

impl Monitor {
    /// The monitor of `c` (its record `rec`) over a booted sandbox whose container was
    /// created, attached as `attach`, its shares' daemons `shares`.
    pub(super) fn new(
        c: ContainerDir,
        rec: Record,
        sandbox: Sandbox,
        attach: Attach,
        shares: Shares,
    ) -> Monitor {
        Monitor {
            c,
            record: Shared::new(rec),
            vmm: sandbox.vmm,
            agent: sandbox.agent,
            control: sandbox.control,
            attach: Some(attach),
            shares: Arc::new(Mutex::new(shares)),
            vm: Arc::default(),
        }
    }

    /// Copies the container's stdio, waits for it to exit, records the status, shuts the VM
    /// down and returns the status (validated: it comes from the guest). A backend that died
    /// meanwhile is an [`OciError::Monitor`] error, recorded as `failed`.
    pub fn wait(mut self) -> Result<ExitStatus, OciError> {
        let id = self.c.id.clone();
        let pid = self.vmm.id();
        let vm_alive = move || pid_alive(pid);
        let relay = match self.attach.take() {
            Some(Attach::Stdio(streams)) => Ok(Relay::Stdio {
                streams,
                interactive: true,
            }),
            Some(Attach::Pty { stream, slave }) => {
                PtyEnds::slave(slave).map(|ends| Relay::Pty { stream, ends })
            }
            None => Err(RuntimeError::Agent(crx_proto::ClientError::Closed)),
        };
        let (control, agent) = (&mut self.control, &self.agent);
        let status =
            relay.and_then(|r| relay::relay_and_wait(control, agent, &id, None, r, vm_alive));
        let died = {
            let mut vm = lock_vm(&self.vm);
            vm.stopping = true;
            vm.backend_died.clone()
        };
        if let Some(reason) = died {
            // Recorded `failed` by the watcher, which killed the VM.
            self.stop_vm(Duration::from_secs(2));
            return Err(OciError::Monitor { id, reason });
        }
        {
            let mut r = self.record.lock();
            r.phase = Phase::Stopped;
            if let Ok(s) = &status {
                r.exit_code = Some(s.code);
                r.exit_signal = s.signal;
            }
            let _ = self.record.save(&self.c, &r);
        }
        self.stop_vm(Duration::from_secs(10));
        Ok(status?)
    }

    /// Shuts the VM down (killed after `grace`), reaps it, stops the daemons and removes the
    /// monitor's socket.
    fn stop_vm(&mut self, grace: Duration) {
        instance::shutdown(&self.agent, self.vmm.id(), grace);
        let _ = self.vmm.wait();
        let shares: Shares = lock_shares(&self.shares).drain(..).collect();
        for (_, d) in shares {
            d.stop(Duration::from_secs(2));
        }
        let _ = std::fs::remove_file(self.c.monitor_socket());
    }
}

fn lock_vm(v: &Mutex<VmWatch>) -> MutexGuard<'_, VmWatch> {
    v.lock().unwrap_or_else(|e| e.into_inner())
}

fn lock_shares(s: &Mutex<Shares>) -> MutexGuard<'_, Shares> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// The first daemon of `shares` that has exited (reaped), as a reason.
fn dead_backend(shares: &mut Shares) -> Option<String> {
    shares.iter_mut().find_map(|(tag, d)| {
        let pid = d.pid();
        d.exited().map(|st| {
            format!("virtiofsd of share {tag:?} (pid {pid}) died ({st}): the VM was stopped")
        })
    })
}

/// Watches the daemons until the VM stops on purpose: the first that dies is recorded, the
/// container marked `failed` and the VM (`vmm_pid`, not reaped before `stopping`) killed.
fn watch_backends(
    shares: Arc<Mutex<Shares>>,
    vm: Arc<Mutex<VmWatch>>,
    vmm_pid: u32,
    c: ContainerDir,
    record: Arc<Shared>,
) {
    std::thread::spawn(move || loop {
        std::thread::sleep(WATCH_EVERY);
        let mut v = lock_vm(&vm);
        if v.stopping {
            return;
        }
        let Some(reason) = dead_backend(&mut lock_shares(&shares)) else {
            continue;
        };
        {
            let mut r = record.lock();
            r.phase = Phase::Failed;
            r.error = Some(reason.clone());
            let _ = record.save(&c, &r);
        }
        v.backend_died = Some(reason);
        let _ = kill(Pid::from_raw(vmm_pid as i32), Signal::SIGKILL);
        return;
    });
}

/// Binds the monitor's socket of `c` (private).
pub(super) fn bind(c: &ContainerDir) -> Result<UnixListener, OciError> {
    let path = c.monitor_socket();
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(io(&path))?;
    // In a 0700 directory already; private itself too.
    crate::paths::set_mode(&path, 0o600).map_err(io(&path))?;
    Ok(listener)
}

impl Monitor {
    /// The terminal whose size the process must see from its first instruction.
    fn term(&self) -> Option<OwnedFd> {
        match &self.attach {
            Some(Attach::Pty { slave, .. }) => slave.try_clone().ok(),
            _ => None,
        }
    }

    /// Records the container as created (its VM booted at create).
    fn serve_created(&self) -> Result<(), OciError> {
        let mut r = self.record.lock();
        r.phase = Phase::Created;
        self.record.save(&self.c, &r)
    }

    /// Serves `listener` (the monitor's socket) on a thread and watches the shares' daemons.
    fn serve(&self, listener: UnixListener) {
        let (c, record, agent) = (self.c.clone(), self.record.clone(), self.agent.clone());
        let term = self.term().map(Arc::new);
        let trimmed = self.trimmed();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                // A thread each: a `wait-unpaused` waits for a `resume` served meanwhile.
                let (c, record, agent, term, trimmed) = (
                    c.clone(),
                    record.clone(),
                    agent.clone(),
                    term.clone(),
                    trimmed.clone(),
                );
                std::thread::spawn(move || {
                    let _ = answer(conn, &c, &record, &agent, term.as_deref(), &trimmed);
                });
            }
        });
        watch_backends(
            self.shares.clone(),
            self.vm.clone(),
            self.vmm.id(),
            self.c.clone(),
            self.record.clone(),
        );
    }

    /// The sandbox's processes trimmed once the container runs: the VMM, the virtiofsd
    /// daemons (and this one).
    fn trimmed(&self) -> Arc<[u32]> {
        let mut trimmed = vec![self.vmm.id()];
        trimmed.extend(lock_shares(&self.shares).iter().map(|(_, d)| d.pid()));
        trimmed.into()
    }

    /// Starts the container whose VM was booted at `start` ([`Prepared::boot`]), as a
    /// `start` request does, and trims.
    pub(super) fn start(&self) -> Result<(), String> {
        let term = self.term();
        apply("start", &self.c, &self.record, &self.agent, term.as_ref())?;
        trim_after_start(&self.record, &self.trimmed());
        Ok(())
    }

    /// Gives up on a container whose start failed (`why`): recorded `failed`, its VM shut
    /// down; returns `why`.
    pub(super) fn abandon(mut self, why: String) -> String {
        {
            let mut r = self.record.lock();
            r.phase = Phase::Failed;
            r.error = Some(why.clone());
            let _ = self.record.save(&self.c, &r);
        }
        lock_vm(&self.vm).stopping = true;
        self.stop_vm(Duration::from_secs(2));
        why
    }
}

/// `trimmed`: the sandbox's other processes (the VMM, the virtiofsd daemons), trimmed with
/// this one once the container runs.
fn answer(
    conn: UnixStream,
    c: &ContainerDir,
    record: &Arc<Shared>,
    agent: &Agent,
    term: Option<&OwnedFd>,
    trimmed: &[u32],
) -> std::io::Result<()> {
    let mut line = String::new();
    BufReader::new(&conn).take_line(&mut line)?;
    let done = match line.trim() {
        "wait-unpaused" => {
            record.wait_unpaused();
            Ok(())
        }
        cmd => apply(cmd, c, record, agent, term),
    };
    let started = line.trim() == "start" && done.is_ok();
    reply(&conn, done)?;
    if started {
        trim_after_start(record, trimmed);
    }
    Ok(())
}

/// Answers a request: `ok`, or `error: ` and why (on one line).
pub(super) fn reply(conn: &UnixStream, done: Result<(), String>) -> std::io::Result<()> {
    let reply = match done {
        Ok(()) => "ok\n".to_owned(),
        Err(e) => format!("error: {}\n", e.replace('\n', " ")),
    };
    (&*conn).write_all(reply.as_bytes())
}

/// From here the monitor only relays and waits, and the VM idles or runs its container: the
/// startup pages of all of the sandbox's processes go back. Not once it has stopped: the
/// monitor is then shutting the VM down, and would only fault back what it pages out.
fn trim_after_start(record: &Arc<Shared>, trimmed: &[u32]) {
    let record = record.clone();
    crate::trim::release_later(trimmed.to_vec(), move || {
        matches!(record.lock().phase, Phase::Running | Phase::Paused)
    });
}

/// Carries out one command and records it (under the record's lock, so that an exit seen
/// meanwhile is not overwritten). Before `start`, the guest terminal gets the size of `term`
/// (the caller sets it after receiving the console; the relay's own report may come later).
fn apply(
    cmd: &str,
    c: &ContainerDir,
    record: &Shared,
    agent: &Agent,
    term: Option<&OwnedFd>,
) -> Result<(), String> {
    let mut r = record.lock();
    let id = c.id.clone();
    let (from, to, req) = match cmd {
        "start" => (Phase::Created, Phase::Running, Request::Start { id }),
        "pause" => (Phase::Running, Phase::Paused, Request::Pause { id }),
        "resume" => (Phase::Paused, Phase::Running, Request::Resume { id }),
        other => return Err(format!("unknown command {other:?}")),
    };
    if r.phase != from {
        return Err(format!("container is {:?}, not {from:?}", r.phase).to_lowercase());
    }
    let size = term
        .filter(|_| matches!(req, Request::Start { .. }))
        .and_then(tty::window_size)
        .filter(|s| s.rows != 0 || s.cols != 0);
    agent
        .control()
        .and_then(|mut ctl| {
            if let Some(s) = size {
                ctl.call(Request::ResizePty {
                    id: c.id.clone(),
                    exec_id: None,
                    rows: s.rows,
                    cols: s.cols,
                })?;
            }
            ctl.call(req).map_err(Into::into)
        })
        .map_err(|e| chain(&e))?;
    r.phase = to;
    record.save(c, &r).map_err(|e| chain(&e))
}

pub(super) trait TakeLine {
    fn take_line(self, buf: &mut String) -> std::io::Result<usize>;
}

impl<R: std::io::Read> TakeLine for BufReader<R> {
    fn take_line(self, buf: &mut String) -> std::io::Result<usize> {
        std::io::Read::take(self, 256).read_line(buf)
    }
}

/// Asks the monitor of `c` to carry out `cmd` (`start`, `pause`, `resume`; `wait-unpaused`
/// answers once the container is not paused).
pub fn request(c: &ContainerDir, cmd: &str) -> Result<(), OciError> {
    let err = |reason: String| OciError::Monitor {
        id: c.id.clone(),
        reason,
    };
    let mut s = UnixStream::connect(c.monitor_socket())
        .map_err(|e| err(format!("not reachable ({e}): the container is not running")))?;
    s.write_all(format!("{cmd}\n").as_bytes())
        .map_err(|e| err(e.to_string()))?;
    let mut line = String::new();
    BufReader::new(&s)
        .read_line(&mut line)
        .map_err(|e| err(e.to_string()))?;
    match line.trim() {
        "ok" => Ok(()),
        "" => Err(err(format!("no answer to {cmd} (the monitor exited)"))),
        other => Err(err(other.trim_start_matches("error: ").to_owned())),
    }
}

/// The container monitor's job ([`crate::monitor::Job::Container`]): boots the VM and
/// creates the container, forwards the signals it gets to the container, reports "ready" on
/// `sync` once the container is created (or why not), and exits with the container's status
/// (dying by its signal). Its stdio is the container's: nothing is printed.
pub fn run(root: &Path, id: &str, console: Option<&Path>, sync: SyncWriter) -> i32 {
    let mut p = match ContainerDir::open(root, id).and_then(|c| Prepared::new(c, console)) {
        Ok(p) => p,
        Err(e) => {
            sync.failed(&e);
            return 1;
        }
    };
    let mut warnings = Vec::new();
    if !p.left_out().is_empty() {
        warnings.push(format!(
            "container {id}: bind mounts whose source does not exist were left out: {}",
            p.left_out().join(", ")
        ));
    }
    let c = p.container().clone();
    // Before its VM boots, a signal ends the created container (as it ends runc's init
    // waiting to start); from then on it goes to the container's process.
    let booted = Arc::new(AtomicBool::new(false));
    let forwarded = {
        let (booted, agent, c) = (booted.clone(), Agent::new(c.vsock_path()), c.clone());
        signals::forward(move |sig| {
            if booted.load(Ordering::SeqCst) {
                let _ = agent.signal(&c.id, sig);
            } else {
                prestart::end(&c, sig);
            }
        })
    };
    let listener = match forwarded.map_err(OciError::Signals).and_then(|()| bind(&c)) {
        Ok(l) => l,
        Err(e) => {
            sync.failed(&e);
            return 1;
        }
    };
    let m = if p.boots_at_start() {
        if let Err(e) = p.record_created() {
            sync.failed(&e);
            return 1;
        }
        sync.ready(warnings);
        match prestart::wait_for_start(&listener, p, &booted) {
            Ok(m) => m,
            Err(code) => return code,
        }
    } else {
        let m = p.boot();
        booted.store(true, Ordering::SeqCst);
        match m.and_then(|m| m.serve_created().map(|()| m)) {
            Ok(m) => {
                sync.ready(warnings);
                m
            }
            Err(e) => {
                sync.failed(&e);
                return 1;
            }
        }
    };
    m.serve(listener);
    match m.wait() {
        // Validated again: only a signal that ends a process is re-raised here (a reported
        // SIGSTOP would stop the monitor, and everyone waiting on it).
        Ok(st) => match st.validated().signal {
            Some(sig) => signals::die_by(sig),
            None => st.code,
        },
        // Recorded (`failed`, with why) where it can be.
        Err(_) => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `wait-unpaused` request is answered once a resume (or a stop) is recorded, and at
    /// once when the container is not paused.
    #[test]
    fn wait_unpaused_returns_on_the_change() {
        let dir = tempfile::tempdir().unwrap();
        let c = ContainerDir {
            id: "c1".into(),
            dir: dir.path().to_owned(),
        };
        let mut rec = Record::new("c1", Default::default());
        rec.phase = Phase::Running;
        let shared = Shared::new(rec);
        shared.wait_unpaused();
        for then in [Phase::Running, Phase::Stopped] {
            shared.lock().phase = Phase::Paused;
            let (tx, rx) = std::sync::mpsc::channel();
            let waiter = {
                let shared = shared.clone();
                std::thread::spawn(move || {
                    shared.wait_unpaused();
                    tx.send(()).unwrap();
                })
            };
            // Still waiting after a change that leaves it paused.
            {
                let r = shared.lock();
                shared.save(&c, &r).unwrap();
            }
            assert!(rx.try_recv().is_err(), "paused: still waiting");
            {
                let mut r = shared.lock();
                r.phase = then;
                shared.save(&c, &r).unwrap();
            }
            rx.recv().unwrap();
            waiter.join().unwrap();
        }
    }
}
