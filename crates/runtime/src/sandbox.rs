//! A sandbox: one microVM (its crx-vmm process, a child of ours, and its guest agent) that
//! holds containers, created through the agent. The one boot path of both front-ends: `crx`
//! ([`crate::instance`]) and crx-runc's monitor ([`crate::oci::monitor`]) describe their VM
//! (a [`VmConfig`]) and their container (a spec, a rootfs), and the sandbox boots and creates
//! them the same way. Several containers may be created in one sandbox (the agent keys them
//! by id); `crx` and crx-runc create one each.

use std::process::Child;

use crx_proto::{Request, Rootfs, StreamKind};

use crate::agent::{agent_timeout, Agent, Control};
use crate::error::RuntimeError;
use crate::relay::{open_stdio, Stdio};
use crate::template::{self, Plan};
use crate::trace;
use crate::virtiofs::Daemon;
use crate::vm::VmConfig;

/// A booted VM whose agent answers.
#[derive(Debug)]
pub struct Sandbox {
    pub vmm: Child,
    pub agent: Agent,
    pub control: Control,
    /// Restored from a template: its NICs' MACs by slot (the guest still has the slots'
    /// MACs, [`template::nic_mac`], until [`Sandbox::configure_network`]).
    restored_macs: Vec<String>,
    /// The VM has virtio-fs shares (writes the guest may still cache for the host).
    shares: bool,
}

/// How a container's process is attached, as opened before its creation.
#[derive(Debug)]
pub enum Streams {
    /// Detached: no streams (its stdin is `/dev/null`, its output the console).
    None,
    Stdio(Stdio),
    /// Its terminal's stream.
    Pty(std::os::unix::net::UnixStream),
}

/// Boots `vm`: restored from its template when one fits ([`template::plan`], ADR 0017),
/// else cold; calls `on_spawn(pid)` with the VMM that runs (at once for a cold boot, to record
/// it where a later process looks; once a restored VM answered, since a restore that fails
/// falls back to a cold boot, with new `shares` daemons: those of `vm`'s virtio-fs shares end
/// with the VMM they served), and waits for the guest agent (bounded by [`agent_timeout`]; a
/// VM that stops first fails at once); a restored VM gets its identity before anything else.
/// On any error the VMM is killed and reaped.
pub fn boot<E: From<RuntimeError>>(
    vm: &VmConfig,
    shares: &mut [&mut Daemon],
    on_spawn: impl FnOnce(u32) -> Result<(), E>,
) -> Result<Sandbox, E> {
    let agent = Agent::new(vm.vsock_uds.clone());
    if let Plan::Restore(r) = template::plan(vm) {
        match restore(vm, &r, &agent) {
            Ok((mut vmm, control)) => {
                drop(r);
                if let Err(e) = on_spawn(vmm.id()) {
                    let _ = vmm.kill();
                    let _ = vmm.wait();
                    return Err(e);
                }
                trace::mark("agent ready");
                return Ok(Sandbox {
                    vmm,
                    agent,
                    control,
                    restored_macs: vm.net.iter().map(|n| n.mac.clone()).collect(),
                    shares: !vm.fs.is_empty(),
                });
            }
            Err(e) => {
                // Not this template again: later boots of the shape boot cold.
                let why = crate::chain(&e);
                r.discard(&why);
                trace::mark(&format!("template: restore failed, booting cold: {why}"));
                for d in shares.iter_mut() {
                    d.respawn().map_err(RuntimeError::Reshare)?;
                }
            }
        }
    }
    let mut vmm = vm.spawn()?;
    let spawned_ms = trace::now_ms();
    trace::mark("vmm spawned");
    let ready = on_spawn(vmm.id()).and_then(|()| {
        agent
            .wait_ready(agent_timeout(), &vm.vmm_log, &vm.console, || {
                matches!(vmm.try_wait(), Ok(None))
            })
            .map_err(E::from)
    });
    let control = match ready {
        Ok(c) => c,
        Err(e) => {
            let _ = vmm.kill();
            let _ = vmm.wait();
            return Err(e);
        }
    };
    if trace::enabled() {
        boot_marks(vm, spawned_ms);
    }
    trace::mark("agent ready");
    Ok(Sandbox {
        vmm,
        agent,
        control,
        restored_macs: Vec::new(),
        shares: !vm.fs.is_empty(),
    })
}

/// Restores `vm` from template `r` and gives it its identity; the VMM is killed on failure.
fn restore(
    vm: &VmConfig,
    r: &template::Restore,
    agent: &Agent,
) -> Result<(Child, Control), RuntimeError> {
    // The template was built without the boot timer: the shapes must match.
    let mut restored = vm.clone();
    restored.boot_timer = false;
    let mut vmm = restored.spawn_as(
        crate::jail::enabled(),
        crate::jail::seccomp_enabled(),
        &r.launch(),
    )?;
    trace::mark("vmm spawned (restoring)");
    let ready = agent
        .wait_ready(agent_timeout(), &vm.vmm_log, &vm.console, || {
            matches!(vmm.try_wait(), Ok(None))
        })
        .and_then(|mut c| {
            trace::mark("restored agent answers");
            c.call(template::identity(vm)?)?;
            trace::mark("identity given (entropy, disk)");
            Ok(c)
        });
    match ready {
        Ok(c) => Ok((vmm, c)),
        Err(e) => {
            let _ = vmm.kill();
            let _ = vmm.wait();
            // Killed, it left its socket: the cold VMM binds the same path.
            let _ = std::fs::remove_file(&vm.vsock_uds);
            Err(e)
        }
    }
}

/// The guest's boot-timer marks from the VMM's log, as trace marks.
fn boot_marks(vm: &VmConfig, spawned_ms: f64) {
    let log = std::fs::read_to_string(&vm.vmm_log).unwrap_or_default();
    for (code, ms) in trace::boot_timer_marks(&log) {
        let phase = match code {
            1 => "kernel booted (guest init started)",
            2 => "guest agent up",
            _ => continue,
        };
        trace::mark_at(phase, spawned_ms + ms);
    }
}

impl Sandbox {
    /// Stops the VM once its containers are done with. Without shares nothing the guest holds
    /// outlives it (its disk is read-only, container writes live in guest RAM), so the VMM is
    /// killed at once; with shares the agent first stops the containers and unmounts (what
    /// the guest cached for a share reaches the host), then the VM resets, bounded by `grace`.
    pub fn stop(&mut self, grace: std::time::Duration) {
        let pid = self.vmm.id();
        if self.shares {
            crate::instance::shutdown(&self.agent, pid, grace);
        } else {
            let _ = self.vmm.kill();
            crate::instance::wait_gone(pid, grace);
        }
    }

    /// Opens container `id`'s streams (none when `detached`; its terminal's with
    /// `terminal`; else stdio), then creates it from `spec` on `rootfs` (not started).
    pub fn create(
        &mut self,
        id: &str,
        spec: serde_json::Value,
        rootfs: Rootfs,
        detached: bool,
    ) -> Result<Streams, RuntimeError> {
        let terminal = spec["process"]["terminal"].as_bool() == Some(true);
        let streams = match (detached, terminal) {
            (true, _) => Streams::None,
            (false, true) => Streams::Pty(self.agent.open_stream(id, None, StreamKind::Pty)?),
            (false, false) => Streams::Stdio(open_stdio(&self.agent, id, None)?),
        };
        self.control.call(Request::CreateContainer {
            id: id.to_owned(),
            spec,
            rootfs,
        })?;
        Ok(streams)
    }

    /// Configures the guest's network as `network` describes it (its loopback is up
    /// already; an empty description changes nothing). In a VM restored from a template, each
    /// NIC is found by its slot's MAC and takes its own.
    pub fn configure_network(
        &mut self,
        mut network: crx_proto::network::NetworkConfig,
    ) -> Result<(), RuntimeError> {
        if network.interfaces.is_empty() {
            return Ok(());
        }
        for iface in &mut network.interfaces {
            let slot = self
                .restored_macs
                .iter()
                .position(|m| m.eq_ignore_ascii_case(&iface.mac));
            iface.template_mac = slot.map(template::nic_mac);
        }
        self.control.call(Request::ConfigureNetwork { network })?;
        trace::mark("network configured");
        Ok(())
    }

    /// Starts the created container `id`'s process.
    pub fn start(&mut self, id: &str) -> Result<(), RuntimeError> {
        self.control.call(Request::Start { id: id.to_owned() })?;
        trace::mark("container started");
        Ok(())
    }
}
