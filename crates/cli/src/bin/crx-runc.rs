//! crx-runc: the runc-compatible OCI runtime of CRX (podman `--runtime`, containerd's runc
//! shim `BinaryName`), every container in its own KVM microVM. The commands are one small file
//! each under `src/oci/`, over `crx_runtime::oci`; see docs/adr/0007-oci-runtime-binary.md.
//! Exit codes: the container's (`run`, `exec`), 1 for crx-runc's own errors.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

use crx::oci;

fn main() -> ExitCode {
    // `CRX_TRACE=1`: boot phases on stderr (a monitor inherits ours), as `crx` prints them.
    crx_runtime::trace::init();
    // A monitor (this program again, started by the runtime) runs its job alone.
    if let Some(code) = crx_runtime::monitor::enter() {
        return ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(255));
    }
    let cli = oci::Cli::parse();
    oci::log::init(&cli.global);
    match oci::dispatch(cli) {
        Ok(code) => ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(255)),
        Err(e) => {
            oci::log::error(&format!("{e:#}"));
            ExitCode::from(1)
        }
    }
}
