//! crx-init: PID 1 in a CRX microVM.
//!
//! As PID 1 it mounts the pseudo filesystems, sets the hostname, reaps zombies, marks the VMM's
//! boot-timer port, then either runs the program named by `crxrun=` on the kernel command line
//! (system-VM mode) or serves the host agent protocol on vsock port 1024 (agent mode), and ends
//! the VM with a reset. As an ordinary process it serves the agent protocol on a Unix socket
//! (`--agent --listen unix:PATH`) or runs one program like system-VM mode (`--run PROG ARGS..`),
//! for host-tier tests. See README.md.
#![deny(unsafe_code)]

mod agent;
mod boot_timer;
mod call;
mod cmdline;
mod containers;
mod identity;
mod network;
mod pid1;
mod reaper;
mod sysvm;

use std::process::ExitCode;

use anyhow::{bail, Context, Result};

use agent::listener::ListenAddr;
use reaper::Reaper;

const USAGE: &str = "\
usage: crx-init                                (as PID 1: reads crxrun=/crxarg=/crxenv=/crxhostname= from /proc/cmdline)
       crx-init --agent [--listen vsock:PORT|unix:PATH]   (agent as an ordinary process; default vsock:1024)
       crx-init --run PROG [ARG]...            (run PROG like system-VM mode, print its status line, exit with it)
       crx-init --call unix:PATH [--stdin|--stdout|--stderr ID[/EXEC]=FILE]... REQUEST...
                                               (open stdio streams, send JSON requests (or @FILE), print the responses)
       crx-init --container-helper [--restarted] (internal: the agent's single-threaded container helper)";

fn main() -> ExitCode {
    // Before any thread exists, so that every thread inherits it (see reaper).
    if let Err(e) = reaper::block_sigchld() {
        eprintln!("crx-init: blocking SIGCHLD: {e}");
    }
    if std::process::id() == 1 {
        pid1_main()
    }
    match process_main(std::env::args().skip(1).collect()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("crx-init: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// PID 1: never returns; every path ends in a VM reset.
fn pid1_main() -> ! {
    // ioperm works before any mount; /dev/port (the fallback) needs devtmpfs: retry after it.
    let early = boot_timer::mark(boot_timer::INIT_STARTED);
    // A panic in PID 1 would panic the kernel; report it and reset the VM instead.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("crx-init: panic: {info}");
        pid1::power_off();
    }));
    pid1::mount_all();
    if early.is_none() {
        boot_timer::mark(boot_timer::INIT_STARTED);
    }
    boot_timer::mark(boot_timer::MOUNTED);
    pid1::ensure_console();
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let cfg = cmdline::parse(&cmdline);
    pid1::set_hostname(cfg.hostname.as_deref().unwrap_or("crx"));
    // Loopback always, whatever else the host describes later (ConfigureNetwork).
    if let Err(e) = network::loopback_up() {
        eprintln!("crx-init: {}", crx_proto::chain(&e));
    }
    let reaper = match Reaper::start() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("crx-init: starting the reaper: {e}");
            pid1::power_off();
        }
    };
    boot_timer::mark(boot_timer::REAPING);
    if let Some(prog) = &cfg.run {
        if boot_timer::mark(boot_timer::READY).is_none() {
            eprintln!("crx-init: boot-timer port 0x440 not writable (no ioperm, no /dev/port)");
        }
        sysvm::run(&reaper, prog, &cfg.args, &cfg.env);
    } else {
        let addr = ListenAddr::Vsock(crx_proto::AGENT_VSOCK_PORT);
        let marks = |step| {
            boot_timer::mark(step);
        };
        let template = cfg.template;
        if let Err(e) = agent::serve(&addr, &reaper, marks, template) {
            eprintln!("crx-init: agent: {e:#}");
        }
    }
    pid1::power_off()
}

/// Not PID 1: the host-tier entry points.
fn process_main(args: Vec<String>) -> Result<ExitCode> {
    let mut it = args.iter();
    match it.next().map(String::as_str) {
        Some("--agent") => {
            let mut addr = ListenAddr::Vsock(crx_proto::AGENT_VSOCK_PORT);
            while let Some(a) = it.next() {
                match a.as_str() {
                    "--listen" => {
                        let v = it.next().context("--listen needs an address")?;
                        addr = v.parse().map_err(anyhow::Error::msg)?;
                    }
                    other => bail!("unknown argument {other:?}\n{USAGE}"),
                }
            }
            let reaper = Reaper::start().context("starting the reaper")?;
            agent::serve(&addr, &reaper, |_| {}, false)?;
            Ok(ExitCode::SUCCESS)
        }
        Some("--container-helper") => {
            containers::helper::main()?;
            Ok(ExitCode::SUCCESS)
        }
        Some("--run") => {
            let prog = it.next().context("--run needs a program")?;
            let rest: Vec<String> = it.cloned().collect();
            let reaper = Reaper::start().context("starting the reaper")?;
            let code = sysvm::run(&reaper, prog, &rest, &[]);
            Ok(ExitCode::from(code.clamp(0, 255) as u8))
        }
        Some("--call") => {
            let addr = it.next().context("--call needs an address")?;
            let rest: Vec<String> = it.cloned().collect();
            call::main(addr, &rest)
        }
        Some("-h" | "--help") => {
            println!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        _ => bail!("not PID 1; for host use:\n{USAGE}"),
    }
}
