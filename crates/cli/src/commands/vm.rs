//! `crx vm run CONFIG`: a system VM from a crx-vmm config file (TOML, see crates/vmm), e.g.
//! with `init_args = "crxrun=/bin/tool crxarg=..."`. The guest kernel and base initrd are
//! filled in when the file names none; the console goes to our stdout unless the file says
//! otherwise; crx exits with the status crx-init reports (`crx-init: exit status N`).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{bail, Context, Result};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: VmCommand,
}

#[derive(Debug, clap::Subcommand)]
enum VmCommand {
    /// Boot a system VM from a VM config file and wait for it.
    Run {
        /// The crx-vmm config (TOML).
        config: PathBuf,
    },
}

pub fn run(_root: &Path, a: Args) -> Result<i32> {
    let VmCommand::Run { config } = a.command;
    let text = std::fs::read_to_string(&config)
        .with_context(|| format!("reading the VM config {}", config.display()))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("{}: not a TOML VM config", config.display()))?;
    let mut cmd = std::process::Command::new(crx_runtime::paths::find_vmm()?);
    cmd.arg("--config").arg(&config);
    // Verified, and handed over as the open files that were (ADR 0008): held until the spawn.
    let mut boot = None;
    if !table.contains_key("kernel") || !table.contains_key("initrds") {
        let b = boot.insert(crx_runtime::paths::verified_boot_files()?);
        if !table.contains_key("kernel") {
            cmd.arg("--kernel").arg(b.kernel.vmm_path());
        }
        if !table.contains_key("initrds") {
            cmd.arg("--initrd").arg(b.initrd.vmm_path());
        }
        crx_runtime::child::keep_fds(&mut cmd, b.fds().to_vec());
    }
    let console_ours = !table.contains_key("serial");
    if console_ours {
        cmd.args(["--serial", "stdout"]).stdout(Stdio::piped());
    }
    let mut child = cmd.spawn().context("starting crx-vmm")?;
    drop(boot); // crx-vmm holds its own descriptors now
    let mut status = None;
    if let Some(out) = child.stdout.take() {
        let mut stdout = std::io::stdout();
        for line in BufReader::new(out).split(b'\n') {
            let line = line.context("reading the console")?;
            let text = String::from_utf8_lossy(&line);
            if let Some(n) = text.trim_end().strip_prefix("crx-init: exit status ") {
                status = n.parse::<i32>().ok();
            }
            stdout.write_all(&line)?;
            stdout.write_all(b"\n")?;
        }
    }
    let vmm = child.wait().context("waiting for crx-vmm")?;
    match (status, vmm.code()) {
        (Some(n), _) => Ok(n),
        (None, Some(0)) if !console_ours => Ok(0),
        (None, Some(0)) => {
            bail!("the VM ended without an exit status from crx-init (is `crxrun=` in init_args?)")
        }
        (None, code) => bail!(
            "crx-vmm failed ({}): see its messages above",
            code.map_or("killed".into(), |c| format!("exit {c}"))
        ),
    }
}
