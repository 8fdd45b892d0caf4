//! OCI bundles: `config.json` loaded and checked, the spec the guest gets, the VM's size.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::error::{io, OciError};

/// Mount types the guest kernel and libcontainer handle (`bind` sources are host paths:
/// see [`guest_spec`]).
pub const MOUNT_TYPES: &[&str] = &[
    "bind",
    "rbind",
    "none",
    "proc",
    "sysfs",
    "tmpfs",
    "devpts",
    "mqueue",
    "cgroup",
    "cgroup2",
    "overlay",
    "ramfs",
    "devtmpfs",
    "securityfs",
    "debugfs",
    "tracefs",
    "hugetlbfs",
    "binfmt_misc",
    "fusectl",
    "shm",
];

/// The fixed memory the guest (kernel, agent, page cache) needs on top of the container's
/// memory limit.
pub const VM_OVERHEAD_MIB: u32 = 96;
/// The VM's memory when the spec sets no limit (as `crx run`).
pub const DEFAULT_VM_MIB: u32 = 256;

/// A loaded, checked bundle.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The bundle directory (absolute).
    pub dir: PathBuf,
    /// `config.json` as given.
    pub spec: Value,
    /// The root filesystem directory (absolute).
    pub rootfs: PathBuf,
    pub annotations: BTreeMap<String, String>,
}

impl Bundle {
    /// Loads and checks `dir/config.json`: valid OCI spec JSON, a process, a rootfs directory,
    /// no `createContainer` hooks, known mount types.
    pub fn load(dir: &Path) -> Result<Bundle, OciError> {
        let dir = std::path::absolute(dir).map_err(io(dir))?;
        let path = dir.join("config.json");
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(OciError::NoConfig(dir))
            }
            Err(e) => return Err(io(&path)(e)),
        };
        let bad = |source| OciError::BadConfig {
            path: path.clone(),
            source,
        };
        let spec: Value = serde_json::from_slice(&text).map_err(bad)?;
        // The typed parse checks the shape (types, required fields).
        let _: oci_spec::runtime::Spec = serde_json::from_value(spec.clone()).map_err(bad)?;
        if !spec["process"].is_object() {
            return Err(OciError::NoProcess);
        }
        let root = spec["root"]["path"].as_str().unwrap_or("rootfs");
        let rootfs = dir.join(root);
        if !rootfs.is_dir() {
            return Err(OciError::NoRootfs(dir, rootfs));
        }
        if spec["hooks"]["createContainer"]
            .as_array()
            .is_some_and(|h| !h.is_empty())
        {
            return Err(OciError::CreateContainerHooks);
        }
        for m in spec["mounts"].as_array().into_iter().flatten() {
            let typ = m["type"].as_str().unwrap_or("none");
            if !MOUNT_TYPES.contains(&typ) {
                return Err(OciError::UnknownMountType {
                    dest: m["destination"].as_str().unwrap_or("?").to_owned(),
                    typ: typ.to_owned(),
                });
            }
        }
        let annotations = spec["annotations"]
            .as_object()
            .map(|o| {
                o.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Bundle {
            dir,
            spec,
            rootfs,
            annotations,
        })
    }

    /// Whether the container's process wants a terminal.
    pub fn terminal(&self) -> bool {
        self.spec["process"]["terminal"].as_bool().unwrap_or(false)
    }
}

/// Whether mount `m` is a bind mount (type `bind`/`rbind`, or a `bind`/`rbind` option).
pub fn is_bind(m: &Value) -> bool {
    let typ = m["type"].as_str().unwrap_or("none");
    typ == "bind"
        || typ == "rbind"
        || m["options"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|o| o == "bind" || o == "rbind")
}

/// The spec the guest agent gets (its bind mounts are then rewritten by `rootfs::deliver`):
///
/// - hooks are removed, they run on the host (see `hooks`), except `startContainer`: it runs in
///   the container (libcontainer, in the guest), its path resolved in the container's rootfs;
/// - namespaces given by `path` are host namespaces: the container shares the VM's instead.
pub fn guest_spec(spec: &Value) -> Value {
    let mut spec = spec.clone();
    let start_container = spec["hooks"].get("startContainer").cloned();
    if let Some(o) = spec.as_object_mut() {
        o.remove("hooks");
        if let Some(h) = start_container {
            o.insert("hooks".into(), serde_json::json!({ "startContainer": h }));
        }
    }
    if let Some(ns) = spec["linux"]["namespaces"].as_array_mut() {
        ns.retain(|n| n.get("path").is_none_or(|p| p.as_str() == Some("")));
    }
    spec
}

/// The VM's size from `linux.resources`: memory limit + [`VM_OVERHEAD_MIB`] (else
/// [`DEFAULT_VM_MIB`]); vCPUs from the CPU quota/period (rounded up), else the `cpus` set, else
/// one; at most `host_cpus`.
pub fn vm_size(spec: &Value, host_cpus: u32) -> (u32, u32) {
    let r = &spec["linux"]["resources"];
    let memory = match r["memory"]["limit"].as_i64() {
        Some(limit) if limit > 0 => {
            let mib = (limit as u64).div_ceil(1 << 20);
            u32::try_from(mib)
                .unwrap_or(u32::MAX - VM_OVERHEAD_MIB)
                .saturating_add(VM_OVERHEAD_MIB)
        }
        _ => DEFAULT_VM_MIB,
    };
    let quota = r["cpu"]["quota"].as_i64().unwrap_or(0);
    let period = r["cpu"]["period"].as_u64().unwrap_or(0);
    let cpus = if quota > 0 && period > 0 {
        (quota as u64).div_ceil(period) as u32
    } else if let Some(set) = r["cpu"]["cpus"].as_str().filter(|s| !s.is_empty()) {
        cpuset_count(set).max(1)
    } else {
        1
    };
    (memory, cpus.clamp(1, host_cpus.max(1)))
}

/// The number of CPUs in a cpuset list (`0-3,5`); 0 when malformed.
fn cpuset_count(set: &str) -> u32 {
    let mut n = 0u32;
    for part in set.split(',') {
        let part = part.trim();
        let r = match part.split_once('-') {
            Some((a, b)) => a.parse::<u32>().ok().zip(b.parse::<u32>().ok()),
            None => part.parse::<u32>().ok().map(|a| (a, a)),
        };
        match r {
            Some((a, b)) if a <= b => n += b - a + 1,
            _ => return 0,
        }
    }
    n
}

/// `runc spec`'s default config (oci-spec's default: `sh`, no terminal, the usual mounts).
pub fn default_spec() -> oci_spec::runtime::Spec {
    oci_spec::runtime::Spec::default()
}

/// `runc spec --rootless`.
pub fn default_rootless_spec(uid: u32, gid: u32) -> Value {
    serde_json::to_value(oci_spec::runtime::Spec::rootless(uid, gid)).expect("spec serializes")
}

/// The `features` document: what crx-runc supports.
pub fn features() -> Value {
    let caps = serde_json::to_value(default_spec()).expect("spec serializes")["process"]
        ["capabilities"]["bounding"]
        .clone();
    serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": super::state::OCI_VERSION,
        "hooks": ["prestart", "createRuntime", "startContainer", "poststart", "poststop"],
        "mountOptions": ["ro", "rw", "nosuid", "nodev", "noexec", "relatime", "strictatime",
            "noatime", "mode", "size", "newinstance", "ptmxmode", "gid", "uid"],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"],
            "capabilities": caps,
            "cgroup": {"v1": false, "v2": true, "systemd": false, "systemdUser": false},
            "seccomp": {
                "enabled": true,
                "actions": ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL",
                    "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG",
                    "SCMP_ACT_TRACE", "SCMP_ACT_TRAP"],
                "operators": ["SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE",
                    "SCMP_CMP_LT", "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE"],
                "archs": ["SCMP_ARCH_X86", "SCMP_ARCH_X86_64", "SCMP_ARCH_X32"],
            },
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false},
        },
        "annotations": {
            "io.crx.isolation": "microvm (one KVM VM per container)",
            "io.crx.rootfs": "the bundle's rootfs directory shared live over virtio-fs",
            "io.crx.bind-mounts": "directories and single files shared live over virtio-fs; missing sources left out with a warning",
            "io.crx.seccomp": "applied in the guest to the container's process and to exec'd processes (which get no_new_privs when they hold neither it nor CAP_SYS_ADMIN)",
            "io.crx.terminal": "the guest's pty relayed through a host pty whose master goes to --console-socket",
            "io.crx.hooks": "prestart, createRuntime, poststart and poststop run on the host; startContainer in the container, in the guest",
            "io.crx.hooks.createContainer": "refused: its path resolves in the runtime's namespace, the host, but it must run in the container's, inside the microVM",
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bundle(config: Option<&str>, rootfs: bool) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        if let Some(c) = config {
            fs::write(d.path().join("config.json"), c).unwrap();
        }
        if rootfs {
            fs::create_dir(d.path().join("rootfs")).unwrap();
        }
        d
    }

    fn minimal(extra: Value) -> String {
        let mut v = json!({"ociVersion": "1.0.2", "root": {"path": "rootfs"},
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}}});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v.to_string()
    }

    #[test]
    fn good_bundle_loads() {
        let d = bundle(Some(&minimal(json!({"annotations": {"a": "b"}}))), true);
        let b = Bundle::load(d.path()).unwrap();
        assert_eq!(b.rootfs, d.path().join("rootfs"));
        assert_eq!(b.annotations.get("a").map(String::as_str), Some("b"));
        assert!(!b.terminal());
    }

    #[test]
    fn bad_bundles_are_typed_errors() {
        let d = bundle(None, true);
        assert!(matches!(Bundle::load(d.path()), Err(OciError::NoConfig(_))));
        let d = bundle(Some("{not json"), true);
        assert!(matches!(
            Bundle::load(d.path()),
            Err(OciError::BadConfig { .. })
        ));
        let d = bundle(Some(r#"{"ociVersion": 3}"#), true);
        assert!(matches!(
            Bundle::load(d.path()),
            Err(OciError::BadConfig { .. })
        ));
        let d = bundle(Some(&minimal(json!({}))), false);
        assert!(matches!(
            Bundle::load(d.path()),
            Err(OciError::NoRootfs(..))
        ));
        let m = json!({"mounts": [{"destination": "/x", "type": "bogusfs", "source": "x"}]});
        let d = bundle(Some(&minimal(m)), true);
        let e = Bundle::load(d.path()).unwrap_err();
        assert!(e.to_string().contains("bogusfs"), "{e}");
        let h = json!({"hooks": {"createContainer": [{"path": "/usr/bin/nvidia-ctk"}]}});
        let d = bundle(Some(&minimal(h)), true);
        let e = Bundle::load(d.path()).unwrap_err();
        assert!(matches!(e, OciError::CreateContainerHooks), "{e}");
        let empty = json!({"hooks": {"createContainer": []}});
        let d = bundle(Some(&minimal(empty)), true);
        Bundle::load(d.path()).unwrap();
    }

    #[test]
    fn guest_spec_drops_hooks_and_host_namespaces() {
        let spec = json!({
            "hooks": {"prestart": [{"path": "/bin/true"}]},
            "linux": {"namespaces": [{"type": "pid"}, {"type": "network", "path": "/run/netns/x"}]},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/etc/hosts", "type": "bind", "source": "/h"},
                {"destination": "/data", "type": "none", "source": "/d", "options": ["rbind"]}
            ]
        });
        let g = guest_spec(&spec);
        assert!(g.get("hooks").is_none());
        let start = json!([{"path": "/bin/hook", "args": ["hook"]}]);
        let with_start =
            json!({"hooks": {"poststop": [{"path": "/bin/true"}], "startContainer": start}});
        assert_eq!(
            guest_spec(&with_start)["hooks"],
            json!({"startContainer": start})
        );
        assert_eq!(g["linux"]["namespaces"], json!([{"type": "pid"}]));
        assert_eq!(g["mounts"], spec["mounts"]);
        assert!(is_bind(&spec["mounts"][1]) && is_bind(&spec["mounts"][2]));
        assert!(!is_bind(&spec["mounts"][0]));
    }

    #[test]
    fn resources_size_the_vm() {
        assert_eq!(vm_size(&json!({}), 8), (DEFAULT_VM_MIB, 1));
        let s = json!({"linux": {"resources": {"memory": {"limit": 64 << 20},
            "cpu": {"quota": 150000, "period": 100000}}}});
        assert_eq!(vm_size(&s, 8), (64 + VM_OVERHEAD_MIB, 2));
        let s = json!({"linux": {"resources": {"cpu": {"cpus": "0-3,6"}}}});
        assert_eq!(vm_size(&s, 8), (DEFAULT_VM_MIB, 5));
        assert_eq!(vm_size(&s, 2), (DEFAULT_VM_MIB, 2), "capped at the host's");
        let s = json!({"linux": {"resources": {"memory": {"limit": -1}, "cpu": {"cpus": "x"}}}});
        assert_eq!(vm_size(&s, 8), (DEFAULT_VM_MIB, 1));
        assert_eq!(cpuset_count("2"), 1);
        assert_eq!(cpuset_count("3-1"), 0);
    }
}
