//! `crx-runc ps [--format table|json] ID`: the container's processes (pids in the guest).

use std::path::Path;

use anyhow::{bail, Result};

pub fn run(root: &Path, a: liboci_cli::Ps) -> Result<i32> {
    let pids = crx_runtime::oci::lifecycle::processes(root, &a.container_id)?;
    match a.format.as_str() {
        "json" => println!("{}", serde_json::to_string(&pids)?),
        "table" => {
            println!("PID");
            for p in pids {
                println!("{p}");
            }
        }
        other => bail!("unknown format {other:?} (table or json)"),
    }
    Ok(0)
}
