//! `cargo xtask crx ARGS...`: build crx and what it boots, make sure the offline busybox image
//! is in the store, and run `crx ARGS...` — directly where this host's KVM can boot Linux,
//! else inside the nested lab (saying so).
//!
//! It is the README's first command, typed on fresh machines: before it builds anything, the
//! Debian packages of `.ci/apt-packages` are installed (by `main`, as for every host command;
//! crx-init links libseccomp statically). virtiofsd is not needed: `crx` shares no host
//! directory over virtio-fs.

use std::process::Command;

use anyhow::Result;

use crate::{boot, cmd, kvm, lab, workspace_root};

pub fn run(args: &[String]) -> Result<i32> {
    cmd::run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(workspace_root())
            .args([
                "build",
                "--quiet",
                "-p",
                "crx",
                "-p",
                "crx-vmm",
                "-p",
                "crx-jailer",
            ]),
    )?;
    let boot_dir = boot::ensure()?;
    let crx = workspace_root().join("target/debug/crx");
    let crx = crx.to_string_lossy();
    let script = format!(
        "{crx} load --busybox >/dev/null || exit 125\nexec {crx} \"$@\"\n",
        crx = cmd::shell_quote(&crx)
    );
    let mut argv = vec!["sh".to_string(), "-c".into(), script, "crx".into()];
    argv.extend(args.iter().cloned());
    let boot_env = (
        "CRX_BOOT_DIR".to_string(),
        boot_dir.to_string_lossy().into_owned(),
    );

    match kvm::loop_speed_ns() {
        Ok(ns) if crx_kvmspeed::fast_enough(ns) => {
            let status = Command::new(&argv[0])
                .args(&argv[1..])
                .env(&boot_env.0, &boot_env.1)
                .status()?;
            Ok(status.code().unwrap_or(125))
        }
        speed => {
            let why = match speed {
                Ok(ns) => format!("emulates guest instructions ({ns:.0} ns per loop iteration)"),
                Err(e) => format!("is not usable ({e:#})"),
            };
            eprintln!("xtask: this host's /dev/kvm {why} and cannot boot Linux: running crx in the nested lab");
            let opts = lab::Options {
                env: vec![boot_env],
                ..lab::Options::default()
            };
            lab::run(&argv, &opts)
        }
    }
}
