//! `crx inspect`: an instance's state, status and paths as JSON, with the measured boot: the
//! kernel and base initrd its VM boots and their verified sha256 digests (ADR 0008), and what
//! confined its VMM (`confinement`: seccomp on or `--no-seccomp`, the jail or none, its cgroup
//! and limits or why none), and its network (`network`: the addresses CNI gave it, with their
//! gateways, and its published ports; `null` with `--network none`).

use std::path::Path;

use anyhow::Result;
use crx_runtime::net::cni::ResultIp;
use crx_runtime::SandboxFiles;
use serde_json::json;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Instance id, id prefix or name.
    id: String,
}

pub fn run(root: &Path, a: Args) -> Result<i32> {
    let h = crx_runtime::home::find(root, &a.id)?;
    let spec: serde_json::Value = std::fs::read(h.config_path())
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::Value::Null);
    let network = crx_runtime::net::run::record(&h.dir).map(|r| {
        let addr = |ip: &ResultIp| format!("{}/{}", ip.address.addr, ip.address.prefix_len);
        let addresses: Vec<String> = r.ips.iter().map(addr).collect();
        let gateways: Vec<String> = r
            .ips
            .iter()
            .filter_map(|ip| ip.gateway.map(|g| g.to_string()))
            .collect();
        json!({
            "network": r.conflist.name,
            "addresses": addresses,
            "gateways": gateways,
            "ports": r.ports,
        })
    });
    let v = json!({
        "state": h.state,
        "status": h.status().to_string(),
        "boot": h.state.boot,
        // What confined its VMM: seccomp, the jail, its cgroup (ADR 0010, 0011).
        "confinement": crx_runtime::jail::Confinement::load(&h.dir),
        "network": network,
        "home": h.dir,
        "console_log": h.console_path(),
        "vsock_socket": h.vsock_path(),
        "spec": spec,
    });
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(0)
}
