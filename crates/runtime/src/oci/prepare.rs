//! What a container's monitor readies at `create` ([`Prepared`]: everything that can fail
//! before a VM exists) and how it then boots the VM and creates the container in it, at
//! `create`, or at `start` for a `network` entry without a path (ADR 0022).

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use super::bundle::{fit_cpus, guest_spec, vm_size};
use super::cgroup;
use super::container::ContainerDir;
use super::error::OciError;
use super::monitor::{Attach, Monitor};
use super::rootfs::{self, Shares};
use super::state::{Phase, Record};
use crate::paths;
use crate::record::SandboxFiles;
use crate::sandbox::{self, Sandbox, Streams};
use crate::tty;
use crate::vm::VmConfig;
use crate::RuntimeError;
use crx_proto::chain;

/// What the monitor makes ready at create, before the VM boots: the container's record
/// (this process its monitor), its spec, its shares (their daemons running), the VM's
/// description but for its NICs, and the host pty whose master went to the console socket.
#[derive(Debug)]
pub struct Prepared {
    c: ContainerDir,
    rec: Record,
    spec: serde_json::Value,
    gspec: serde_json::Value,
    rootfs: crx_proto::Rootfs,
    shares: Shares,
    left_out: Vec<String>,
    vm: VmConfig,
    pty_slave: Option<OwnedFd>,
}

impl Prepared {
    /// Records this process as the monitor of `c` and readies everything the VM needs but
    /// its network (a `network` entry without a path: this process moves into a fresh
    /// namespace, the one a tool may configure after create). On error the record says
    /// `failed` with the reason.
    pub fn new(c: ContainerDir, console: Option<&Path>) -> Result<Prepared, OciError> {
        let mut rec = c.load()?;
        rec.set_monitor(std::process::id());
        c.save(&rec)?;
        match prepare(c.clone(), rec.clone(), console) {
            Ok(p) => Ok(p),
            Err(e) => {
                rec.phase = Phase::Failed;
                rec.error = Some(chain(&e));
                let _ = c.save(&rec);
                Err(e)
            }
        }
    }

    /// Whether the VM boots at `start` rather than now: a `network` entry without a path,
    /// whose namespace (this process's) a tool may still give interfaces (`ctr run --cni`,
    /// nerdctl's hooks) until then.
    pub fn boots_at_start(&self) -> bool {
        crate::net::from_spec(&self.spec) == crate::net::SpecNetwork::Loopback
    }

    pub fn container(&self) -> &ContainerDir {
        &self.c
    }

    /// The destinations of bind mounts left out (their sources do not exist).
    pub fn left_out(&self) -> &[String] {
        &self.left_out
    }

    /// Records the container as created without its VM (booted by [`Prepared::boot`] at
    /// `start`).
    pub fn record_created(&mut self) -> Result<(), OciError> {
        self.rec.phase = Phase::Created;
        self.c.save(&self.rec)
    }

    /// Joins the container's network, boots the VM and creates the container in it. On
    /// error the record says `failed` with the reason, the VMM is killed and the shares'
    /// daemons stopped.
    pub fn boot(mut self) -> Result<Monitor, OciError> {
        match boot_vm(&mut self) {
            Ok((sandbox, attach)) => {
                Ok(Monitor::new(self.c, self.rec, sandbox, attach, self.shares))
            }
            Err(e) => {
                self.rec.phase = Phase::Failed;
                self.rec.error = Some(chain(&e));
                let _ = self.c.save(&self.rec);
                Err(e)
            }
        }
    }
}

/// [`Prepared::new`]'s work: everything that can fail before a VM exists, so that a bad
/// spec, boot file or missing VMM fails `create` whenever the VM boots.
fn prepare(c: ContainerDir, mut rec: Record, console: Option<&Path>) -> Result<Prepared, OciError> {
    let spec = c.read_config()?;
    // A `network` entry without a path: our pid's namespace is a fresh one (this is the main
    // thread), which a tool may configure; never the host's.
    crate::net::own_namespace_if_unpathed(&spec)?;
    crate::net::check_spec(&spec)?;
    // Before anything starts: boot files that fail verification start nothing (ADR 0008).
    let boot = paths::verified_boot_files()?;
    let vmm = paths::find_vmm()?;
    std::fs::metadata(&vmm).map_err(|source| RuntimeError::SpawnVmm {
        path: vmm.clone(),
        source,
    })?;
    if let Some(dir) = cgroup::host_dir(&spec) {
        // Before any child: the VMM and virtiofsd are born in it.
        cgroup::join(&dir, std::process::id())?;
    }
    let mut gspec = guest_spec(&spec);
    let rootfs = rec.rootfs.clone().unwrap_or_default();
    let delivery = rootfs::deliver(&rootfs, &mut gspec, &c)?;
    let host_cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let (memory_mib, vcpus) = vm_size(&spec, host_cpus);
    fit_cpus(&mut gspec, vcpus);
    let mut vm = VmConfig {
        vmm,
        boot,
        memory_mib,
        vcpus,
        disk: PathBuf::new(),
        vsock_uds: c.vsock_path(),
        console: c.console_path(),
        vmm_log: c.vmm_log(),
        die_with_parent: true,
        boot_timer: false,
        fs: Vec::new(),
        net: Vec::new(),
    };
    for (tag, d) in &delivery.shares {
        vm.add_fs(tag.clone(), d.socket());
    }
    // The measured boot: what this VM boots, as verified.
    rec.boot = Some(vm.boot.digests());
    // The terminal's master goes to the caller now, as runc's does at create.
    let pty_slave = match console {
        Some(console) => {
            let pair = tty::open_pty()?;
            tty::send_console(console, &pair.master, tty::PTMX_NAME)?;
            Some(pair.slave)
        }
        None => None,
    };
    Ok(Prepared {
        c,
        rec,
        spec,
        gspec,
        rootfs: delivery.rootfs,
        shares: delivery.shares,
        left_out: delivery.left_out,
        vm,
        pty_slave,
    })
}

/// Joins the network, boots the VM and creates the container; on error the VMM is killed.
fn boot_vm(p: &mut Prepared) -> Result<(Sandbox, Attach), OciError> {
    let record = p.c.dir.join(crate::net::RECORD);
    // The namespace the tool prepared (by path, or this process's own for a `network` entry
    // without one), joined through taps the VMM inherits (`delete` undoes it from the record
    // in the container's directory).
    let network = if p.boots_at_start() {
        let own = PathBuf::from(format!("/proc/{}/ns/net", std::process::id()));
        crate::net::attach(&own, &record)?
    } else {
        crate::net::join(&p.spec, &p.c.dir)?
    };
    p.vm.net = network.nics;
    let (c, rec) = (&p.c, &mut p.rec);
    let mut shares: Vec<_> = p.shares.iter_mut().map(|(_, d)| d).collect();
    let sandbox = sandbox::boot(&p.vm, &mut shares, |pid| {
        rec.set_vmm(pid);
        c.save(rec)
    });
    // Only the VMM keeps the taps from here on: they go when it goes.
    p.vm.net.clear();
    let mut sandbox = sandbox?;
    let created = sandbox
        .configure_network(network.guest)
        .and_then(|()| {
            let gspec = std::mem::take(&mut p.gspec);
            sandbox.create(&c.id, gspec, p.rootfs.clone(), false)
        })
        .map_err(OciError::from)
        .and_then(|streams| attach(streams, p.pty_slave.take()));
    match created {
        Ok(attach) => Ok((sandbox, attach)),
        Err(e) => {
            let _ = sandbox.vmm.kill();
            let _ = sandbox.vmm.wait();
            Err(e)
        }
    }
}

/// How the created container's streams are attached here: stdio as they are; a terminal's
/// stream with the slave of the host pty whose master went to the console socket.
fn attach(streams: Streams, pty_slave: Option<OwnedFd>) -> Result<Attach, OciError> {
    match streams {
        Streams::Pty(stream) => {
            let slave = pty_slave.ok_or(OciError::NoConsoleSocket)?;
            Ok(Attach::Pty { stream, slave })
        }
        Streams::Stdio(stdio) => Ok(Attach::Stdio(stdio)),
        Streams::None => Err(OciError::Runtime(crate::RuntimeError::Agent(
            crx_proto::ClientError::Closed,
        ))),
    }
}
