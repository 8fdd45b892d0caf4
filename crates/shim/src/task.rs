//! The pod as the serving shim holds it: its VM (booted by a thread that lives as long as the
//! pod: crx-vmm and virtiofsd die with the thread that started them), its containers and
//! their processes with their states and exits.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::Duration;

use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use crx_runtime::agent::Agent;
use crx_runtime::pod::{self, PodDir};
use crx_runtime::record::pid_alive;

use crate::stdio::{Copies, Paths};

/// A process's state as containerd sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Created,
    Running,
    Paused,
    Stopped,
}

/// One process: a container's init or an exec.
#[derive(Debug)]
pub struct Proc {
    pub phase: Phase,
    pub paths: Paths,
    pub exit: Option<(u32, Timestamp)>,
    pub copies: Option<Copies>,
    /// An exec's OCI process, until it starts.
    pub process: Option<serde_json::Value>,
}

impl Proc {
    pub fn new(paths: Paths) -> Proc {
        Proc {
            phase: Phase::Created,
            paths,
            exit: None,
            copies: None,
            process: None,
        }
    }
}

/// One container of the pod.
#[derive(Debug)]
pub struct Container {
    pub bundle: PathBuf,
    /// The pod's sandbox (pause) container: no process in the guest; it stands for the VM.
    pub is_sandbox: bool,
    /// Whether its rootfs was mounted here (unmounted on delete).
    pub mounted: bool,
    pub init: Proc,
    pub execs: HashMap<String, Proc>,
    /// OOM kills in its cgroup already told to containerd (`TaskOOM`).
    pub oom_kills: u64,
}

impl Container {
    pub fn proc(&self, exec_id: &str) -> Option<&Proc> {
        match exec_id {
            "" => Some(&self.init),
            e => self.execs.get(e),
        }
    }

    /// Records the guest's count of OOM kills in the container's cgroup: whether it shows
    /// kills not told yet (a count that falls, a guest's lie or a recreated cgroup, tells
    /// nothing and lowers nothing: each kill is told at most once).
    pub fn new_ooms(&mut self, oom_kills: u64) -> bool {
        let new = oom_kills > self.oom_kills;
        self.oom_kills = self.oom_kills.max(oom_kills);
        new
    }

    pub fn proc_mut(&mut self, exec_id: &str) -> Option<&mut Proc> {
        match exec_id {
            "" => Some(&mut self.init),
            e => self.execs.get_mut(e),
        }
    }
}

/// The pod's VM as the shim sees it (the VM itself is owned by its thread).
#[derive(Debug, Clone)]
pub struct PodHandle {
    pub dir: PodDir,
    pub agent: Agent,
    pub vmm_pid: u32,
    /// The VMM and the virtiofsd daemon: trimmed with the shim once containers run.
    pub host_pids: Vec<u32>,
    /// The sandbox spec's hostname, which the pod's containers get.
    pub hostname: Option<String>,
    stop: Sender<Sender<()>>,
}

impl PodHandle {
    /// Boots the pod `dir` for the sandbox spec `spec` on a thread of its own, which keeps the
    /// VM until [`PodHandle::shutdown`] (or the VM's own end).
    pub fn boot(dir: PodDir, spec: serde_json::Value) -> anyhow::Result<PodHandle> {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<Sender<()>>();
        let hostname = spec["hostname"].as_str().map(str::to_owned);
        let d = dir.clone();
        std::thread::spawn(move || match pod::boot(&d, &spec) {
            Ok(vm) => {
                let _ = ready_tx.send(Ok((vm.agent.clone(), vm.vmm_pid(), vm.host_pids())));
                keep(vm, stop_rx);
            }
            Err(e) => {
                let _ = ready_tx.send(Err(anyhow::anyhow!(crx_proto::chain(&e))));
            }
        });
        let (agent, vmm_pid, host_pids) = ready_rx
            .recv()
            .map_err(|_| anyhow::anyhow!("the pod's boot thread ended"))??;
        Ok(PodHandle {
            dir,
            agent,
            vmm_pid,
            host_pids,
            hostname,
            stop: stop_tx,
        })
    }

    /// Once a container of the pod runs: in [`crx_runtime::trim::SETTLE`], should the VM still
    /// run, the file pages that the shim and the pod's host processes touched to start it go
    /// back (ADR 0018, as crx-runc's monitor does after `start`).
    pub fn trim_later(&self) {
        let vmm = self.vmm_pid;
        crx_runtime::trim::release_later(self.host_pids.clone(), move || pid_alive(vmm));
    }

    /// Whether the VM still runs.
    pub fn alive(&self) -> bool {
        pid_alive(self.vmm_pid)
    }

    /// Powers the VM off, stops its virtiofsd and removes the pod's state.
    pub fn shutdown(&self) -> anyhow::Result<()> {
        let (tx, rx) = mpsc::channel();
        if self.stop.send(tx).is_ok() {
            let _ = rx.recv();
        }
        pod::cleanup(&self.dir).map_err(|e| anyhow::anyhow!(crx_proto::chain(&e)))
    }
}

/// Holds `vm` (reaping its VMM if it ends) until asked to stop it.
fn keep(mut vm: pod::PodVm, stop: Receiver<Sender<()>>) {
    loop {
        match stop.recv_timeout(Duration::from_millis(500)) {
            Ok(done) => {
                vm.shutdown(Duration::from_secs(5));
                let _ = done.send(());
                return;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = vm.vmm.try_wait();
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                vm.shutdown(Duration::from_secs(5));
                return;
            }
        }
    }
}

/// The exit status reported for a process whose VM died under it.
pub const VM_DIED: u32 = 128 + 9;

#[cfg(test)]
mod tests {
    use super::*;

    fn container() -> Container {
        Container {
            bundle: PathBuf::new(),
            is_sandbox: false,
            mounted: false,
            init: Proc::new(Paths::default()),
            execs: HashMap::new(),
            oom_kills: 0,
        }
    }

    #[test]
    fn each_oom_kill_is_told_once_and_a_falling_count_tells_nothing() {
        let mut c = container();
        assert!(!c.new_ooms(0), "no kill yet");
        assert!(c.new_ooms(1), "the first kill");
        assert!(!c.new_ooms(1), "the same kill, asked again (a later Stats)");
        assert!(c.new_ooms(3), "two more");
        assert!(!c.new_ooms(0), "a count that falls");
        assert!(!c.new_ooms(3), "and comes back: told already");
        assert!(c.new_ooms(4));
    }
}
