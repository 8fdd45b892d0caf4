//! `crx run`'s bind mounts: the volumes (`-v HOST:CONTAINER[:ro]`) and, with `--dns` or
//! `--add-host`, the instance's `/etc/hosts`, `/etc/resolv.conf` and `/etc/hostname`
//! ([`crate::net::etc`]), staged in the home and shared with the VM by one virtiofsd, the
//! same way crx-runc shares a bundle's binds (`oci::rootfs::stage_binds`): writes on either
//! side are seen on the other, `ro` ones are read-only on the host too. Without any, no share
//! (and no virtiofsd) at all.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::RunConfig;
use crate::error::RuntimeError;
use crate::virtiofs::{Daemon, DaemonOptions};

/// The share's tag, and its staging directory in the home.
pub const TAG: &str = "binds";

/// One `-v` volume.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Volume {
    /// The host file or directory (absolute, resolved).
    pub source: PathBuf,
    /// Where the container sees it (absolute).
    pub destination: PathBuf,
    pub read_only: bool,
}

fn bind(source: &Path, destination: &str, read_only: bool) -> Value {
    json!({
        "destination": destination,
        "type": "bind",
        "source": source,
        "options": ["rbind", if read_only { "ro" } else { "rw" }],
    })
}

/// Adds `cfg`'s binds to `spec` (the guest's view: mounts of the share) and starts the share's
/// virtiofsd, which the VM must get (`vm.add_fs(TAG, d.socket())`) and which lives as long as
/// the returned daemon is kept. `own` are the instance's addresses (for `/etc/hosts`).
pub fn share(
    dir: &Path,
    cfg: &RunConfig,
    hostname: &str,
    own: &[IpAddr],
    spec: &mut Value,
) -> Result<Option<Daemon>, RuntimeError> {
    let mut mounts: Vec<Value> = Vec::new();
    let r = &cfg.resolution;
    if !r.dns.is_empty() || !r.hosts.is_empty() {
        let files = crate::net::etc::write(dir, hostname, own, r).map_err(crate::error::io(dir))?;
        mounts.extend(files.iter().map(|(src, dest)| bind(src, dest, false)));
    }
    for v in &cfg.volumes {
        mounts.push(bind(
            &v.source,
            &v.destination.to_string_lossy(),
            v.read_only,
        ));
    }
    if mounts.is_empty() {
        return Ok(None);
    }
    if let Some(list) = spec["mounts"].as_array_mut() {
        list.extend(mounts);
    }
    let staging = dir.join(TAG);
    let failed = |e| RuntimeError::Volumes(Box::new(e));
    let (_, left_out) = crate::oci::rootfs::stage_binds(spec, &staging, TAG, "").map_err(failed)?;
    if let Some(dest) = left_out.first() {
        return Err(RuntimeError::VolumeGone(dest.clone()));
    }
    let opts = DaemonOptions {
        announce_submounts: false,
        ..DaemonOptions::default()
    };
    let socket = dir.join(format!("{TAG}.fs.sock"));
    Daemon::spawn_with(&staging, &socket, &opts)
        .map(Some)
        .map_err(|source| {
            failed(crate::oci::error::OciError::Share {
                dir: staging,
                source,
            })
        })
}

/// Undoes the host bind mounts of `dir`'s binds (before the home is removed).
pub fn unbind(dir: &Path) -> Result<(), RuntimeError> {
    crate::oci::rootfs::unbind_all(dir).map_err(|e| RuntimeError::Volumes(Box::new(e)))
}
