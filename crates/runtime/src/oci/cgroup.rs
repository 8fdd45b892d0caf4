//! The host side of `linux.cgroupsPath`: the container's host processes (the monitor, and the
//! VMM and virtiofsd it starts) join that cgroup, so host-level accounting (podman, containerd
//! metrics, systemd) sees what the container costs. cgroup v2 with cgroupfs paths only
//! (systemd's `slice:prefix:name` form is left alone). No limits are set on it: the VM is
//! sized from `linux.resources`, and the container's cgroup in the guest enforces them.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::error::{io, OciError};

/// Where cgroup v2 is mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The host cgroup directory `spec` names under `root`, if any (and cgroup v2 is there).
pub fn host_dir_in(root: &Path, spec: &Value) -> Option<PathBuf> {
    let path = spec["linux"]["cgroupsPath"].as_str()?;
    if path.is_empty() || path.contains(':') || path.split('/').any(|c| c == "..") {
        return None;
    }
    if !root.join("cgroup.controllers").exists() {
        return None;
    }
    Some(root.join(path.trim_start_matches('/')))
}

/// [`host_dir_in`] under [`CGROUP_ROOT`].
pub fn host_dir(spec: &Value) -> Option<PathBuf> {
    host_dir_in(Path::new(CGROUP_ROOT), spec)
}

/// Moves process `pid` into `dir` (made if missing).
pub fn join(dir: &Path, pid: u32) -> Result<(), OciError> {
    fs::create_dir_all(dir).map_err(io(dir))?;
    let procs = dir.join("cgroup.procs");
    fs::write(&procs, pid.to_string()).map_err(io(&procs))
}

/// Removes `dir` (once its processes are gone); errors are ignored.
pub fn remove(dir: &Path) {
    let _ = fs::remove_dir(dir);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cgroupfs_paths_only_under_a_v2_root() {
        let d = tempfile::tempdir().unwrap();
        let spec = |p: &str| json!({"linux": {"cgroupsPath": p}});
        assert_eq!(host_dir_in(d.path(), &spec("/a/b")), None, "not cgroup v2");
        fs::write(d.path().join("cgroup.controllers"), "").unwrap();
        assert_eq!(
            host_dir_in(d.path(), &spec("/a/b")),
            Some(d.path().join("a/b"))
        );
        assert_eq!(host_dir_in(d.path(), &spec("c")), Some(d.path().join("c")));
        assert_eq!(host_dir_in(d.path(), &spec("system.slice:crx:c1")), None);
        assert_eq!(host_dir_in(d.path(), &spec("/../x")), None);
        assert_eq!(host_dir_in(d.path(), &json!({})), None);
        // join writes the pid into cgroup.procs of a new directory.
        let dir = d.path().join("a/b");
        join(&dir, 42).unwrap();
        assert_eq!(fs::read_to_string(dir.join("cgroup.procs")).unwrap(), "42");
    }
}
