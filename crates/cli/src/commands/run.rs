//! `crx run`: a container in a new microVM, in the foreground or detached (`-d`).

use std::path::Path;
use std::time::Duration;

use std::net::IpAddr;

use anyhow::{bail, Result};
use crx_runtime::instance::{self, RunConfig, Started, Volume};
use crx_runtime::net::cni::PortMapping;
use crx_runtime::net::etc::{HostEntry, Resolution};
use crx_runtime::net::run::{NetworkMode, RunNetwork};
use crx_runtime::relay::{self, PtyEnds, Relay};
use crx_runtime::sandbox::Streams;
use crx_runtime::ProcessOptions;

use crate::flags;

use crate::signals::{Forwarder, Target};

#[derive(Debug, clap::Args)]
#[command(trailing_var_arg = true)]
pub struct Args {
    /// Remove the instance's home when it exits.
    #[arg(long)]
    rm: bool,
    /// Set an environment variable (KEY=VALUE, or KEY to pass ours).
    #[arg(short = 'e', long = "env")]
    env: Vec<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long = "workdir")]
    workdir: Option<String>,
    /// User as UID[:GID].
    #[arg(short = 'u', long = "user")]
    user: Option<String>,
    /// Instance name (default: its id).
    #[arg(long)]
    name: Option<String>,
    /// VM memory in MiB.
    #[arg(long, default_value_t = 256)]
    memory: u32,
    /// VM vCPUs.
    #[arg(long, default_value_t = 1)]
    cpus: u32,
    /// Boot the VM's kernel even when a template fits (as `CRX_COLD=1`; ADR 0017).
    #[arg(long)]
    cold: bool,
    /// Keep stdin open and copy ours to the container.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Allocate a terminal in the guest (with -i and a terminal as stdin, ours goes raw).
    #[arg(short = 't', long)]
    tty: bool,
    /// Run in the background and print the instance id.
    #[arg(short = 'd', long)]
    detach: bool,
    /// The network: `bridge` (crx's CNI network, /etc/crx/net.d/crx.conflist) or `none`.
    #[arg(long, default_value = "bridge", value_parser = flags::network::parse)]
    network: NetworkMode,
    /// Publish a container port on the host: [IP:]HOST:CONTAINER[/tcp|udp] (repeatable).
    #[arg(short = 'p', long = "publish", value_parser = flags::publish::parse)]
    publish: Vec<PortMapping>,
    /// The container's hostname (default: the first 12 characters of its id).
    #[arg(long)]
    hostname: Option<String>,
    /// A DNS server for the container's /etc/resolv.conf (repeatable; default: the host's).
    #[arg(long)]
    dns: Vec<IpAddr>,
    /// An /etc/hosts entry NAME:IP (repeatable).
    #[arg(long = "add-host", value_parser = flags::add_host::parse)]
    add_host: Vec<HostEntry>,
    /// Bind-mount a host path: HOST:CONTAINER[:ro|rw] (repeatable; shared over virtio-fs).
    #[arg(short = 'v', long = "volume", value_parser = flags::volume::parse)]
    volume: Vec<Volume>,
    /// The image (name or digest).
    image: String,
    /// The command and its arguments (default: the image's).
    #[arg(allow_hyphen_values = true)]
    command: Vec<String>,
}

pub fn run(root: &Path, mut a: Args) -> Result<i32> {
    if a.cold {
        // Read by crx_runtime::template here and in a detached run's monitor (inherited).
        std::env::set_var("CRX_COLD", "1");
    }
    // As docker: a terminal gets TERM=xterm unless -e says otherwise.
    if a.tty && !a.env.iter().any(|e| e == "TERM" || e.starts_with("TERM=")) {
        a.env.push("TERM=xterm".into());
    }
    if a.network == NetworkMode::None && !a.publish.is_empty() {
        bail!("-p publishes a port of the container's network: not with --network none");
    }
    let cfg = RunConfig {
        image: a.image,
        name: a.name,
        memory_mib: a.memory,
        vcpus: a.cpus,
        process: ProcessOptions {
            args: a.command,
            env: a.env,
            workdir: a.workdir,
            user: a.user,
            // A detached container's output is the console: no terminal to attach.
            terminal: a.tty && !a.detach,
        },
        detached: a.detach,
        rm: a.rm,
        network: RunNetwork {
            mode: a.network,
            ports: a.publish,
        },
        hostname: a.hostname,
        resolution: Resolution {
            dns: a.dns,
            hosts: a.add_host,
        },
        volumes: a.volume,
    };
    if a.detach {
        // A monitor started by the runtime boots the instance and records its exit.
        println!("{}", instance::start_detached(root, &cfg)?);
        return Ok(0);
    }
    let signals = Forwarder::start()?;
    let on_spawn = |pid: u32, home: &Path| signals.set(Target::Booting(pid, home.to_owned()));
    let Started {
        mut home,
        sandbox: mut sb,
        streams,
        binds: _binds,
    } = instance::start_with(root, &cfg, on_spawn)?;
    let id = home.state.id.clone();
    signals.set(Target::Process {
        agent: sb.agent.clone(),
        id: id.clone(),
        exec_id: None,
    });
    let relay = match streams {
        Streams::Pty(stream) => Relay::Pty {
            stream,
            ends: PtyEnds::ours(a.interactive)?,
        },
        Streams::Stdio(streams) => Relay::Stdio {
            streams,
            interactive: a.interactive,
        },
        Streams::None => unreachable!("foreground runs have stdio or a pty"),
    };
    let vmm = sb.vmm.id();
    let alive = || crx_runtime::record::pid_alive(vmm);
    let waited = relay::relay_and_wait(&mut sb.control, &sb.agent, &id, None, relay, alive)
        .map(|st| st.code);
    if let Ok(code) = waited {
        home.set_exit(code)?;
    }
    sb.stop(Duration::from_secs(30));
    crx_runtime::trace::mark("vm stopped");
    if a.rm {
        home.remove()?;
        crx_runtime::trace::mark("removed");
    }
    Ok(waited?)
}
