//! `containerd-shim-crx-v2`: containerd's shim v2 for `io.containerd.crx.v2`. One shim process
//! and one microVM per pod (grouped by the CRI sandbox id), every container of the pod created
//! in that VM by its agent (ADR 0019). See the crate's README for installing it.
//!
//! - `start` / `delete` (the actions containerd runs): [`actions`];
//! - the serving shim (ttrpc task API, v2 and v3 method names): [`serve`], [`service`];
//! - its containers and processes: [`task`]; their stdio through containerd's FIFOs: [`stdio`];
//! - containerd's rootfs mounts on the host: [`mounts`]; events: [`events`].

mod actions;
mod events;
mod exits;
mod mounts;
mod serve;
mod service;
mod service_create;
mod stdio;
mod task;

use containerd_shim as shim;

/// The runtime's name as containerd knows it.
pub const RUNTIME_ID: &str = "io.containerd.crx.v2";
/// Where the shim keeps its pods (one directory each, `crx_runtime::pod`).
pub const STATE_ROOT: &str = "/run/crx-shim";

fn main() {
    // `CRX_TRACE=1` in containerd's environment: boot phases in its log, as `crx` prints them.
    crx_runtime::trace::init();
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    match shim::parse(&args[1..]) {
        Ok(flags) if flags.action.is_empty() && !flags.info && !flags.version => {
            if let Err(e) = serve::run(&flags) {
                eprintln!("{RUNTIME_ID}: {e:#}");
                std::process::exit(1);
            }
        }
        Ok(flags) if flags.action == "start" => {
            if let Err(e) = actions::start(&flags) {
                eprintln!("{RUNTIME_ID}: {e:#}");
                std::process::exit(1);
            }
        }
        _ => {
            let config = shim::Config {
                no_setup_logger: true,
                default_log_level: "info".into(),
                // The shim waits for its own children (crx-vmm, virtiofsd): a reaper of
                // every child would take their statuses.
                no_reaper: true,
                no_sub_reaper: true,
            };
            shim::run::<actions::CrxShim>(RUNTIME_ID, Some(config));
        }
    }
}
