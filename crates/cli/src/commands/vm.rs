//! `crx vm run CONFIG`: a system VM from a crx-vmm config file (TOML, the `crx-vmconfig`
//! schema), e.g. with `init_args = "crxrun=/bin/tool crxarg=..."`. The guest kernel and base
//! initrd are filled in when the file names none; the console is relayed to our stdout unless
//! the file sends it to a file or off; crx exits with the status crx-init reports
//! (`crx-init: exit status N`). crx-vmm reads the completed config from an inherited memfd.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{bail, Context, Result};
use crx_runtime::vm::ConfigFile;
use crx_vmconfig::{SerialOutput, VmConfig};

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
    let mut cfg = VmConfig::read(&config)?;
    let mut cmd = std::process::Command::new(crx_runtime::paths::find_vmm()?);
    // Verified, and handed over as the open files that were (ADR 0008): held until the spawn.
    let mut boot = None;
    if cfg.kernel.as_os_str().is_empty() || cfg.initrds.is_empty() {
        let b = boot.insert(crx_runtime::paths::verified_boot_files()?);
        if cfg.kernel.as_os_str().is_empty() {
            cfg.kernel = b.kernel.vmm_path();
        }
        if cfg.initrds.is_empty() {
            cfg.initrds = vec![b.initrd.vmm_path()];
        }
        crx_runtime::child::keep_fds(&mut cmd, b.fds().to_vec());
    }
    cfg.validate()
        .with_context(|| format!("invalid VM config {}", config.display()))?;
    let console_ours = cfg.serial == SerialOutput::Stdout;
    if console_ours {
        cmd.stdout(Stdio::piped());
    }
    let file = ConfigFile::new(&cfg)?;
    crx_runtime::child::keep_fds(&mut cmd, vec![file.fd()]);
    cmd.arg("--config").arg(file.vmm_path());
    let mut child = cmd.spawn().context("starting crx-vmm")?;
    drop((boot, file)); // crx-vmm holds its own descriptors now
    let mut status = None;
    if let Some(out) = child.stdout.take() {
        let mut stdout = std::io::stdout();
        for line in BufReader::new(out).split(b'\n') {
            let line = line.context("reading the console")?;
            if let Some(n) = crx_proto::console::parse_status_line(&String::from_utf8_lossy(&line))
            {
                status = Some(n);
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
