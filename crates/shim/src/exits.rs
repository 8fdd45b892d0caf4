//! Exits: a watcher thread per process records its exit (output drained first), wakes the
//! `Wait` requests and tells containerd (`TaskExit`).

use std::sync::Arc;

use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::TtrpcResult;

use crate::events::{now, Event};
use crate::service::{not_found, Inner};
use crate::task::{Phase, PodHandle};

impl Inner {
    /// Records the exit of `id`'s process `exec_id` with `code`: its output drained first,
    /// then the state, the waiters and containerd's `TaskExit`.
    pub fn exited(&self, id: &str, exec_id: &str, code: u32) {
        let copies = {
            let mut s = self.lock();
            let Some(p) = s.containers.get_mut(id).and_then(|c| c.proc_mut(exec_id)) else {
                return;
            };
            if p.exit.is_some() {
                return;
            }
            p.copies.take()
        };
        if let Some(c) = copies {
            c.drain();
        }
        log::info!("{id} {exec_id:?} exited ({code})");
        let at = now();
        let pid = {
            let mut s = self.lock();
            let pid = s.pod.as_ref().map_or(0, |p| p.vmm_pid);
            if let Some(p) = s.containers.get_mut(id).and_then(|c| c.proc_mut(exec_id)) {
                p.exit = Some((code, at.clone()));
                p.phase = Phase::Stopped;
            }
            self.changed.notify_all();
            pid
        };
        self.events.publish(Event::Exit {
            id: id.to_owned(),
            exec_id: exec_id.to_owned(),
            pid,
            status: code,
            at,
        });
    }

    /// Tells containerd of OOM kills in `id`'s cgroup beyond those told (`oom_kills` is the
    /// agent's count since the container was created): one `TaskOOM` when there are new ones.
    pub fn note_ooms(&self, id: &str, oom_kills: u64) {
        let new = {
            let mut s = self.lock();
            let Some(c) = s.containers.get_mut(id) else {
                return;
            };
            c.new_ooms(oom_kills)
        };
        if new {
            log::info!("{id}: OOM kill ({oom_kills} in all)");
            self.events.publish(Event::Oom(id.to_owned()));
        }
    }

    /// Asks the agent for `id`'s OOM kills and tells containerd of new ones (before a
    /// process's exit, so that the exit is known as an OOM kill).
    fn check_ooms(&self, pod: &PodHandle, id: &str) {
        match crate::service::stats(pod, id) {
            Ok(s) => self.note_ooms(id, s.oom_kills),
            Err(e) => log::warn!("{id}: no OOM count from the agent: {e}"),
        }
    }

    /// Blocks until `id`'s process `exec_id` has exited; its status and time.
    pub fn wait_exit(&self, id: &str, exec_id: &str) -> TtrpcResult<(u32, Timestamp)> {
        let mut s = self.lock();
        loop {
            let p = s
                .containers
                .get(id)
                .and_then(|c| c.proc(exec_id))
                .ok_or_else(|| not_found(id))?;
            if let Some((code, at)) = &p.exit {
                return Ok((*code, at.clone()));
            }
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Watches a guest process until it exits (or its VM dies: [`crate::task::VM_DIED`]). A wait
/// that fails while the VM runs (the agent busy or restarting a connection) is retried a few
/// times; an agent that keeps failing it ends the process as if its VM had died.
pub fn watch(inner: Arc<Inner>, pod: PodHandle, id: String, exec_id: String) {
    std::thread::spawn(move || {
        let exec = (!exec_id.is_empty()).then_some(exec_id.as_str());
        // The agent's answer; none when the VM died (or its agent kept failing).
        let mut answered = None;
        for _ in 0..WAIT_TRIES {
            let status = pod
                .agent
                .control()
                .and_then(|mut c| c.wait(&id, exec, || pod.alive()));
            match status {
                Ok(s) => {
                    answered = Some(s.code.clamp(0, 255) as u32);
                    break;
                }
                Err(_) if pod.alive() => std::thread::sleep(std::time::Duration::from_secs(1)),
                Err(_) => break,
            }
        }
        if answered.is_some() {
            inner.check_ooms(&pod, &id);
        }
        inner.exited(&id, &exec_id, answered.unwrap_or(crate::task::VM_DIED));
    });
}

/// Tells containerd of each OOM kill in container `id` as the agent sees it (`WaitOom`), also
/// of a process that is not the container's init, whose kill no exit reports; until the
/// container is removed or its VM dies.
pub fn watch_ooms(inner: Arc<Inner>, pod: PodHandle, id: String) {
    std::thread::spawn(move || {
        let mut seen = 0;
        loop {
            let count = pod
                .agent
                .control()
                .and_then(|mut c| c.wait_oom(&id, seen, || pod.alive()));
            match count {
                // Guest input: a count that goes backwards tells nothing new.
                Ok(count) if count > seen => {
                    inner.note_ooms(&id, count);
                    seen = count;
                }
                Ok(_) => return,
                Err(e) => {
                    log::debug!("{id}: OOM watch ended: {e}");
                    return;
                }
            }
        }
    });
}

/// How many times a failed wait on a live VM is tried.
const WAIT_TRIES: u32 = 5;

/// Watches the sandbox's stand-in process: it ends when killed or when the VM dies.
pub fn watch_sandbox(inner: Arc<Inner>, pod: PodHandle, id: String) {
    std::thread::spawn(move || loop {
        std::thread::sleep(std::time::Duration::from_millis(500));
        let done = {
            let s = inner.lock();
            s.containers.get(&id).is_none_or(|c| c.init.exit.is_some())
        };
        if done {
            return;
        }
        if !pod.alive() {
            inner.exited(&id, "", crate::task::VM_DIED);
            return;
        }
    });
}
