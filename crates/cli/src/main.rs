//! crx: the command line. One small file per command under `commands/`, over `crx-runtime`.
//! Exit codes: the container's (run, exec), 125 for crx's own errors.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crx::commands;

/// crx: containers, each in its own KVM microVM.
#[derive(Debug, Parser)]
#[command(name = "crx", version)]
struct Cli {
    /// State root (images, instance homes).
    #[arg(long, global = true, env = "CRX_ROOT", default_value = crx_runtime::paths::DEFAULT_ROOT)]
    root: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a command in a new container (its own microVM).
    Run(Box<commands::run::Args>),
    /// Run a command in a running (detached) container.
    Exec(commands::exec::Args),
    /// List instances.
    Ps(commands::ps::Args),
    /// Send a signal to a container.
    Kill(commands::kill::Args),
    /// Remove instances.
    Rm(commands::rm::Args),
    /// Print an instance's console log.
    Logs(commands::logs::Args),
    /// Print an instance's state as JSON.
    Inspect(commands::inspect::Args),
    /// Remove the homes of instances whose VMM is gone (and, with --images, unused images).
    Gc(commands::gc::Args),
    /// List images.
    Images(commands::images::Args),
    /// Import an image: the offline busybox image, an OCI layout or a docker archive.
    Load(commands::load::Args),
    /// Pull an image from a registry.
    Pull(commands::pull::Args),
    /// Remove image names.
    Rmi(commands::rmi::Args),
    /// Tell whether this host can run crx, with a fix for each problem.
    Check(commands::check::Args),
    /// System VMs (a program as the guest's init task, no container).
    Vm(commands::vm::Args),
}

fn main() -> ExitCode {
    if let Some(code) = crx_runtime::monitor::enter() {
        return ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(255));
    }
    crx_runtime::trace::init();
    crx_runtime::trace::mark("cli start");
    let cli = Cli::parse();
    let root = cli.root;
    let result = match cli.command {
        Command::Run(a) => commands::run::run(&root, *a),
        Command::Exec(a) => commands::exec::run(&root, a),
        Command::Ps(a) => commands::ps::run(&root, a),
        Command::Kill(a) => commands::kill::run(&root, a),
        Command::Rm(a) => commands::rm::run(&root, a),
        Command::Logs(a) => commands::logs::run(&root, a),
        Command::Inspect(a) => commands::inspect::run(&root, a),
        Command::Gc(a) => commands::gc::run(&root, a),
        Command::Images(a) => commands::images::run(&root, a),
        Command::Load(a) => commands::load::run(&root, a),
        Command::Pull(a) => commands::pull::run(&root, a),
        Command::Rmi(a) => commands::rmi::run(&root, a),
        Command::Check(a) => commands::check::run(&root, a),
        Command::Vm(a) => commands::vm::run(&root, a),
    };
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(255)),
        Err(e) => {
            eprintln!("crx: {e:#}");
            ExitCode::from(commands::CRX_ERROR)
        }
    }
}
