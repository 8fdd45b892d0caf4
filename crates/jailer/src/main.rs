//! `crx-jailer [OPTIONS] -- PROGRAM [ARGS...]`: runs PROGRAM confined (see the crate docs).
//! Exit status: the program's (128 + signal if killed); 125 if the jail could not be set up.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Parser;
use crx_jailer::{Bind, Device, Jail, Network};

#[derive(Parser)]
#[command(
    name = "crx-jailer",
    about = "Run a program (crx-vmm) in its own namespaces, root and unprivileged user"
)]
struct Cli {
    /// The directory that becomes the program's `/`.
    #[arg(long)]
    root: PathBuf,
    #[arg(long)]
    uid: u32,
    #[arg(long)]
    gid: u32,
    /// Hostname in the jail's UTS namespace.
    #[arg(long, default_value = "crx-jail")]
    hostname: String,
    /// SOURCE:TARGET[:ro|rw] (default ro): bind a host file or directory into the jail.
    #[arg(long = "bind", value_name = "SOURCE:TARGET[:ro|rw]")]
    binds: Vec<String>,
    /// kvm, tun or urandom: a node in the jail's private /dev.
    #[arg(long = "device", value_name = "kvm|tun|urandom")]
    devices: Vec<String>,
    /// `new` (an empty network namespace) or the path of one to join.
    #[arg(long, default_value = "new")]
    netns: String,
    /// RLIMIT_NOFILE of the program.
    #[arg(long, default_value_t = 1024)]
    max_files: u64,
    /// RLIMIT_NPROC of the jail's uid (the program's threads count).
    #[arg(long, default_value_t = 256)]
    max_processes: u64,
    /// The caller started crx-jailer as PID 1 of a new PID namespace: exec the program in
    /// place (it becomes the caller's child) instead of forking it and waiting.
    #[arg(long)]
    as_init: bool,
    /// The program (a path inside the jail) and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

fn parse_bind(s: &str) -> Result<Bind> {
    let parts: Vec<&str> = s.split(':').collect();
    let (source, target, read_only) = match parts[..] {
        [src, dst] => (src, dst, true),
        [src, dst, "ro"] => (src, dst, true),
        [src, dst, "rw"] => (src, dst, false),
        _ => bail!("--bind {s:?}: expected SOURCE:TARGET[:ro|rw]"),
    };
    Ok(Bind {
        source: source.into(),
        target: target.into(),
        read_only,
    })
}

fn parse_device(s: &str) -> Result<Device> {
    Ok(match s {
        "kvm" => Device::Kvm,
        "tun" => Device::Tun,
        "urandom" => Device::Urandom,
        _ => bail!("--device {s:?}: expected kvm, tun or urandom"),
    })
}

fn jail(cli: Cli) -> Result<Jail> {
    let mut command = cli.command.into_iter();
    let program = command.next().context("no program given after --")?;
    Ok(Jail {
        root: cli.root,
        uid: cli.uid,
        gid: cli.gid,
        hostname: cli.hostname,
        binds: cli
            .binds
            .iter()
            .map(|b| parse_bind(b))
            .collect::<Result<_>>()?,
        devices: cli
            .devices
            .iter()
            .map(|d| parse_device(d))
            .collect::<Result<_>>()?,
        network: match cli.netns.as_str() {
            "new" => Network::New,
            path => Network::Join(path.into()),
        },
        max_files: cli.max_files,
        max_processes: cli.max_processes,
        program: program.into(),
        args: command.collect(),
        as_init: cli.as_init,
    })
}

fn main() {
    let code = jail(Cli::parse())
        .and_then(|j| Ok(crx_jailer::run(&j)?))
        .unwrap_or_else(|e| {
            eprintln!("crx-jailer: {e:#}");
            125
        });
    std::process::exit(code);
}
