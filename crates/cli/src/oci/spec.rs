//! `crx-runc spec [--bundle DIR] [--rootless]`: writes a default config.json (as `runc spec`),
//! refusing to overwrite one.

use anyhow::{bail, Context, Result};

pub fn run(a: liboci_cli::Spec) -> Result<i32> {
    let dir = a.bundle.unwrap_or_else(|| ".".into());
    let path = dir.join("config.json");
    if path.exists() {
        bail!("{}: exists; remove it first", path.display());
    }
    let spec = if a.rootless {
        use std::os::unix::fs::MetadataExt;
        let me = std::fs::metadata("/proc/self").context("reading /proc/self")?;
        oci_spec_default_rootless(me.uid(), me.gid())
    } else {
        serde_json::to_value(crx_runtime::oci::bundle::default_spec())?
    };
    let text = serde_json::to_vec_pretty(&spec)?;
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(0)
}

fn oci_spec_default_rootless(uid: u32, gid: u32) -> serde_json::Value {
    crx_runtime::oci::bundle::default_rootless_spec(uid, gid)
}
