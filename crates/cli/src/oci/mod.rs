//! The `crx-runc` command line: runc's global flags and commands (youki's `liboci-cli` clap
//! structs where they match runc), one file per command.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::{Parser, Subcommand};

mod checkpoint;
mod console;
mod create;
mod delete;
mod events;
mod exec;
mod features;
mod kill;
mod list;
pub mod log;
mod pause;
mod ps;
mod resume;
mod run;
mod spec;
mod start;
mod state;
mod update;

/// The default state root (runc's is /run/runc).
pub const DEFAULT_ROOT: &str = "/run/crx-runc";

/// crx-runc: an OCI runtime that runs every container in its own KVM microVM.
#[derive(Debug, Parser)]
#[command(name = "crx-runc", version)]
pub struct Cli {
    #[command(flatten)]
    pub global: liboci_cli::GlobalOpts,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a container (its VM boots; the process waits for `start`).
    Create(liboci_cli::Create),
    /// Start a created container's process.
    Start(liboci_cli::Start),
    /// Print a container's OCI state as JSON.
    State(liboci_cli::State),
    /// Send a signal (default SIGTERM) to a container's process.
    Kill(kill::Args),
    /// Delete a container: tear its VM down, remove every trace.
    Delete(liboci_cli::Delete),
    /// Create, start and wait for a container; exit with its code.
    Run(liboci_cli::Run),
    /// Run a process in a running container.
    Exec(liboci_cli::Exec),
    /// List a container's processes (guest pids).
    Ps(liboci_cli::Ps),
    /// List containers.
    List(list::Args),
    /// Freeze a container's processes.
    Pause(liboci_cli::Pause),
    /// Thaw a paused container.
    Resume(liboci_cli::Resume),
    /// Change a running container's resource limits (its cgroup in the guest).
    Update(liboci_cli::Update),
    /// Resource usage of a container (`--stats`: once).
    Events(liboci_cli::Events),
    /// What this runtime supports, as JSON.
    Features(liboci_cli::Features),
    /// Write a default config.json.
    Spec(liboci_cli::Spec),
    /// (refused) Checkpoint a container with CRIU: not possible for a microVM.
    Checkpoint(liboci_cli::Checkpoint),
    /// (refused) Restore a checkpointed container.
    Restore(checkpoint::RestoreArgs),
}

/// Runs the command; the exit code, or an error (exit 1).
pub fn dispatch(cli: Cli) -> Result<i32> {
    let root = cli
        .global
        .root
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT));
    let root = root.as_path();
    // The command line as given, never a Debug dump of the parsed structs.
    let argv: Vec<String> = std::env::args().collect();
    log::debug(&format!("root {}: {}", root.display(), argv.join(" ")));
    match cli.command {
        Command::Create(a) => create::run(root, a),
        Command::Start(a) => start::run(root, a),
        Command::State(a) => state::run(root, a),
        Command::Kill(a) => kill::run(root, a),
        Command::Delete(a) => delete::run(root, a),
        Command::Run(a) => run::run(root, a),
        Command::Exec(a) => exec::run(root, a),
        Command::Ps(a) => ps::run(root, a),
        Command::List(a) => list::run(root, a),
        Command::Pause(a) => pause::run(root, a),
        Command::Resume(a) => resume::run(root, a),
        Command::Update(a) => update::run(root, a),
        Command::Events(a) => events::run(root, a),
        Command::Features(_) => features::run(),
        Command::Spec(a) => spec::run(a),
        Command::Checkpoint(a) => checkpoint::checkpoint(root, a),
        Command::Restore(a) => checkpoint::restore(root, a),
    }
}

/// Writes `pid` to `path` atomically (a temporary file renamed over it), as runc does.
pub fn write_pid_file(path: &Path, pid: u32) -> Result<()> {
    use anyhow::Context;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, pid.to_string()).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// The exit code of a status: the code, or `128 + N` for signal N.
pub fn exit_code(st: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    st.code()
        .or_else(|| st.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn runc_command_lines_parse() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(args)
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        for ok in [
            &[
                "crx-runc",
                "--root",
                "/r",
                "--log",
                "/l",
                "--log-format",
                "json",
                "--systemd-cgroup",
                "create",
                "--bundle",
                "/b",
                "--pid-file",
                "/p",
                "c1",
            ][..],
            &["crx-runc", "kill", "c1"],
            &["crx-runc", "kill", "--all", "c1", "KILL"],
            &["crx-runc", "delete", "--force", "c1"],
            &[
                "crx-runc",
                "exec",
                "--process",
                "/p.json",
                "--detach",
                "--pid-file",
                "/p",
                "c1",
            ],
            &["crx-runc", "exec", "c1", "sh", "-c", "echo"],
            &["crx-runc", "list", "-q"],
            &["crx-runc", "ps", "--format", "json", "c1"],
            &["crx-runc", "events", "--stats", "c1"],
        ] {
            parse(ok).unwrap();
        }
        assert!(parse(&["crx-runc", "create"]).is_err());
    }
}
