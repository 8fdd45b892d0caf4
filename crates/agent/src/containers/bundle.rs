//! Writing the OCI bundle libcontainer reads, from the spec the host sent.

use std::fs;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// Writes `DIR/bundle/config.json`: the host's spec with `root.path` set to `rootfs`, the cgroup
/// set to `/crx/ID` (the host applies the caller's `cgroupsPath` to the VMM process), and `HOME`
/// set when missing (libcontainer would otherwise look it up through NSS, which a static binary
/// must not do). Returns the bundle directory.
///
/// Extra virtio-fs shares (the host's bind mounts) arrive as `mounts[]` entries of type
/// `virtiofs` whose source is the tag ([`crx_proto::virtiofs_mount`]); they pass through
/// unchanged and libcontainer mounts them (`fsopen("virtiofs")`, source = tag, `ro` honoured).
pub fn write_bundle(
    dir: &Path,
    id: &str,
    spec: &Value,
    rootfs: &Path,
) -> Result<std::path::PathBuf> {
    let mut spec = spec.clone();
    let Some(obj) = spec.as_object_mut() else {
        bail!("the OCI spec is not a JSON object");
    };
    let root = obj.entry("root").or_insert_with(|| json!({}));
    let Some(root) = root.as_object_mut() else {
        bail!("spec.root is not an object");
    };
    root.insert("path".into(), json!(rootfs.display().to_string()));
    let linux = obj.entry("linux").or_insert_with(|| json!({}));
    let Some(linux) = linux.as_object_mut() else {
        bail!("spec.linux is not an object");
    };
    linux.insert("cgroupsPath".into(), json!(super::cgroup_path(id)));
    if let Some(process) = obj.get_mut("process").and_then(Value::as_object_mut) {
        let env = process.entry("env").or_insert_with(|| json!([]));
        if let Some(env) = env.as_array_mut() {
            let has_home = env.iter().any(|v| {
                v.as_str()
                    .is_some_and(|s| s.starts_with("HOME=") && s.len() > 5)
            });
            if !has_home {
                env.push(json!("HOME=/"));
            }
        }
    }
    let bundle = dir.join("bundle");
    fs::create_dir_all(&bundle).with_context(|| format!("creating {}", bundle.display()))?;
    let text = serde_json::to_vec_pretty(&spec).context("serializing the spec")?;
    fs::write(bundle.join("config.json"), text).context("writing config.json")?;
    Ok(bundle)
}

/// Adds `HOME=/` to an OCI process's env when it has no non-empty HOME.
fn ensure_home(process: &mut Value) {
    let Some(process) = process.as_object_mut() else {
        return;
    };
    let env = process.entry("env").or_insert_with(|| json!([]));
    if let Some(env) = env.as_array_mut() {
        let has_home = env.iter().any(|v| {
            v.as_str()
                .is_some_and(|s| s.starts_with("HOME=") && s.len() > 5)
        });
        if !has_home {
            env.push(json!("HOME=/"));
        }
    }
}

/// Writes the OCI process of an exec to `DIR/exec-EXEC_ID.json` (with `HOME` as in
/// [`write_bundle`]) and returns its path.
pub fn write_process(dir: &Path, exec_id: &str, process: &Value) -> Result<std::path::PathBuf> {
    if !process.is_object() {
        bail!("the OCI process is not a JSON object");
    }
    let mut process = process.clone();
    ensure_home(&mut process);
    let path = dir.join(format!("exec-{exec_id}.json"));
    let text = serde_json::to_vec(&process).context("serializing the process")?;
    fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_root_cgroup_and_home() {
        let dir = tempfile::tempdir().unwrap();
        let spec = json!({"ociVersion": "1.0.2", "process": {"args": ["sh"], "env": ["PATH=/bin"]},
                          "root": {"path": "rootfs", "readonly": true}, "linux": {"cgroupsPath": "/x"}});
        let b = write_bundle(dir.path(), "c1", &spec, Path::new("/run/r")).unwrap();
        let v: Value = serde_json::from_slice(&fs::read(b.join("config.json")).unwrap()).unwrap();
        assert_eq!(v["root"]["path"], "/run/r");
        assert_eq!(v["root"]["readonly"], true);
        assert_eq!(v["linux"]["cgroupsPath"], "/crx/c1");
        assert_eq!(v["process"]["env"][1], "HOME=/");
        assert!(write_bundle(dir.path(), "c1", &json!([1]), Path::new("/r")).is_err());
    }

    #[test]
    fn virtiofs_mounts_pass_through_to_libcontainer() {
        let dir = tempfile::tempdir().unwrap();
        let m = crx_proto::virtiofs_mount("vol0", "/data", true);
        let spec = json!({"process": {"args": ["sh"]}, "mounts": [m.clone()]});
        let b = write_bundle(dir.path(), "c1", &spec, Path::new("/run/r")).unwrap();
        let v: Value = serde_json::from_slice(&fs::read(b.join("config.json")).unwrap()).unwrap();
        assert_eq!(v["mounts"], json!([m]));
        assert_eq!(v["mounts"][0]["type"], "virtiofs");
        assert_eq!(v["mounts"][0]["source"], "vol0");
    }
}
