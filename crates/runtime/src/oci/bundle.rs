//! OCI bundles: `config.json` loaded and checked, the spec the guest gets, the VM's size.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::error::{io, OciError};
use super::{cpus, namespace};

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
/// The most vCPUs a guest uses: the guest kernel's `CONFIG_NR_CPUS` (kernel/guest.config; a
/// test checks they agree). vCPUs past it would boot offline, and a cpuset naming them fail.
pub const GUEST_MAX_VCPUS: u32 = 64;

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
        if spec["ociVersion"].as_str().is_none_or(str::is_empty) {
            return Err(OciError::NoVersion);
        }
        if !spec["process"].is_object() {
            return Err(OciError::NoProcess);
        }
        if spec["process"]["args"].as_array().is_none_or(Vec::is_empty) {
            return Err(OciError::NoArgs);
        }
        let root = spec["root"]["path"].as_str().unwrap_or("rootfs");
        let rootfs = check_rootfs(&dir, root)?;
        if spec["hooks"]["createContainer"]
            .as_array()
            .is_some_and(|h| !h.is_empty())
        {
            return Err(OciError::CreateContainerHooks);
        }
        check_hook_paths(&spec)?;
        if let Some(h) = spec["hostname"]
            .as_str()
            .filter(|h| h.len() > HOST_NAME_MAX)
        {
            return Err(OciError::HostnameTooLong(h.len()));
        }
        namespace::check_paths(&spec)?;
        crate::net::check_spec(&spec)?;
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

/// The kernel's limit on a hostname, in bytes (`HOST_NAME_MAX`).
pub const HOST_NAME_MAX: usize = 64;

/// The rootfs of `root.path` in bundle `dir`: a directory, not a symbolic link, and when
/// `root` is relative, inside the bundle once resolved (an absolute path may be anywhere, as
/// with runc).
fn check_rootfs(dir: &Path, root: &str) -> Result<PathBuf, OciError> {
    let rootfs = dir.join(root);
    let no_rootfs = || OciError::NoRootfs(dir.to_owned(), rootfs.clone());
    let meta = fs::symlink_metadata(&rootfs).map_err(|_| no_rootfs())?;
    if meta.file_type().is_symlink() {
        return Err(OciError::RootfsSymlink(rootfs));
    }
    if !meta.is_dir() {
        return Err(no_rootfs());
    }
    if Path::new(root).is_relative() {
        let real = fs::canonicalize(&rootfs).map_err(io(&rootfs))?;
        let real_dir = fs::canonicalize(dir).map_err(io(dir))?;
        if !real.starts_with(&real_dir) {
            return Err(OciError::RootfsEscapes(rootfs));
        }
    }
    Ok(rootfs)
}

/// Every hook's `path` is absolute (the spec: it is resolved in no directory).
fn check_hook_paths(spec: &Value) -> Result<(), OciError> {
    for (kind, hooks) in spec["hooks"].as_object().into_iter().flatten() {
        for h in hooks.as_array().into_iter().flatten() {
            let path = h["path"].as_str().unwrap_or_default();
            if !path.starts_with('/') {
                return Err(OciError::RelativeHookPath {
                    what: kind.clone(),
                    path: path.to_owned(),
                });
            }
        }
    }
    Ok(())
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
/// - namespaces given by `path` are host namespaces, which cannot be joined from the VM:
///   `uts` and `mount` become fresh ones, the others the VM's (see [`namespace`]).
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
        namespace::for_guest(ns);
    }
    spec
}

/// The VM's size from `linux.resources`: memory limit + [`VM_OVERHEAD_MIB`] (else
/// [`DEFAULT_VM_MIB`]); vCPUs enough for the CPU quota/period (rounded up) and for the highest
/// CPU id of the `cpus` set and of `process.execCPUAffinity`, at least one, at most
/// `host_cpus` (then [`fit_cpus`] makes the guest spec's CPU lists fit).
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
    let for_quota = if quota > 0 && period > 0 {
        u32::try_from((quota as u64).div_ceil(period)).unwrap_or(u32::MAX)
    } else {
        0
    };
    let for_lists = cpu_lists(spec)
        .filter_map(|(_, list)| cpus::highest(list))
        .map(|id| id.saturating_add(1))
        .max()
        .unwrap_or(0);
    let vcpus = for_quota.max(for_lists);
    (memory, vcpus.clamp(1, host_cpus.clamp(1, GUEST_MAX_VCPUS)))
}

/// The CPU lists of a spec, with their JSON pointer: `linux.resources.cpu.cpus` and
/// `process.execCPUAffinity`'s `initial` and `final`.
fn cpu_lists(spec: &Value) -> impl Iterator<Item = (&'static str, &str)> {
    [
        "/linux/resources/cpu/cpus",
        "/process/execCPUAffinity/initial",
        "/process/execCPUAffinity/final",
    ]
    .into_iter()
    .filter_map(|p| Some((p, spec.pointer(p)?.as_str().filter(|s| !s.is_empty())?)))
}

/// Makes the CPU lists of the guest spec `gspec` (see [`cpu_lists`]) name only vCPUs of a VM
/// with `vcpus` of them (when [`vm_size`] capped it at the host's): the ids it has stay, the
/// lowest others make up the count (`0-3,6` on 2 vCPUs: `0-1`). Else the guest's cgroup
/// refuses the `cpus` set (`Numerical result out of range`) and the affinity.
pub fn fit_cpus(gspec: &mut Value, vcpus: u32) {
    let fitted: Vec<(&str, String)> = cpu_lists(gspec)
        .filter_map(|(p, list)| Some((p, cpus::fit(list, vcpus)?)))
        .collect();
    for (p, list) in fitted {
        if let Some(v) = gspec.pointer_mut(p) {
            *v = list.into();
        }
    }
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
            "io.crx.seccomp": "applied in the guest to the container's process and to exec'd processes, loaded right before execve (profiles blocking the runtime's own calls such as getcwd still start); SCMP_ACT_NOTIFY refused (its listener would be on the host)",
            "io.crx.spec-fields": "honoured in the guest: domainname, process.ioPriority, process.scheduler, linux.personality (domain; flags refused), linux.timeOffsets with a time namespace, process.execCPUAffinity of exec'd processes (clamped to the VM's CPUs); refused at create: linux.memoryPolicy (the guest kernel has no NUMA)",
            "io.crx.terminal": "the guest's pty relayed through a host pty whose master goes to --console-socket",
            "io.crx.hooks": "prestart, createRuntime, poststart and poststop run on the host; startContainer in the container, in the guest",
            "io.crx.namespace-paths": namespace::IN_GUEST,
            "io.crx.vcpus": "enough for the CPU quota and for the highest id of linux.resources.cpu.cpus and process.execCPUAffinity, at most the host's; ids beyond the VM's vCPUs are remapped onto them",
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
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "linux": {"namespaces": [{"type": "network"}]}});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v.to_string()
    }

    use crate::net::NetError;

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
    fn specs_a_vm_cannot_run_are_refused_before_a_boot() {
        let load = |extra: Value| {
            let d = bundle(Some(&minimal(extra)), true);
            Bundle::load(d.path())
        };
        let mut v: Value = serde_json::from_str(&minimal(json!({}))).unwrap();
        v.as_object_mut().unwrap().remove("ociVersion");
        let d = bundle(Some(&v.to_string()), true);
        assert!(matches!(Bundle::load(d.path()), Err(OciError::NoVersion)));
        let p = json!({"process": {"args": [], "cwd": "/", "user": {"uid": 0, "gid": 0}}});
        assert!(matches!(load(p), Err(OciError::NoArgs)));
        let p = json!({"process": {"cwd": "/", "user": {"uid": 0, "gid": 0}}});
        assert!(matches!(load(p), Err(OciError::NoArgs)));
        let h = json!({"hooks": {"poststop": [{"path": "/bin/true"}, {"path": "true"}]}});
        let e = load(h).unwrap_err();
        assert!(
            matches!(&e, OciError::RelativeHookPath { what, path } if what == "poststop" && path == "true"),
            "{e}"
        );
        let h = json!({"hooks": {"startContainer": [{"path": "bin/hook"}]}});
        assert!(matches!(load(h), Err(OciError::RelativeHookPath { .. })));
        let name = "h".repeat(HOST_NAME_MAX);
        load(json!({"hostname": name})).unwrap();
        let e = load(json!({"hostname": format!("{name}x")})).unwrap_err();
        assert!(matches!(e, OciError::HostnameTooLong(65)), "{e}");
        let ns = |typ: &str, path: &str| json!({"linux": {"namespaces": [{"type": "mount"}, {"type": typ, "path": path}, {"type": "network"}]}});
        load(ns("uts", "/proc/self/ns/uts")).unwrap();
        let e = load(ns("uts", "/proc/self/ns/net")).unwrap_err();
        assert!(matches!(e, OciError::NamespaceMismatch { .. }), "{e}");
        let e = load(ns("network", "/etc/hostname")).unwrap_err();
        assert!(matches!(e, OciError::NotANamespace { .. }), "{e}");
        // The host's network stack, by omission or by path, is not a VM's.
        let e = load(json!({"linux": {"namespaces": [{"type": "mount"}]}})).unwrap_err();
        assert!(matches!(e, OciError::Net(NetError::HostNetwork)), "{e}");
        let e = load(ns("network", "/proc/self/ns/net")).unwrap_err();
        assert!(
            matches!(e, OciError::Net(NetError::HostNamespace(_))),
            "{e}"
        );
    }

    #[test]
    fn root_path_is_a_directory_of_the_bundle_or_absolute() {
        let t = tempfile::tempdir().unwrap();
        let (dir, outside) = (t.path().join("bundle"), t.path().join("outside"));
        fs::create_dir_all(dir.join("rootfs")).unwrap();
        fs::create_dir(&outside).unwrap();
        let load = |root: Value| {
            fs::write(
                dir.join("config.json"),
                minimal(json!({"root": {"path": root}})),
            )
            .unwrap();
            Bundle::load(&dir)
        };
        let e = load(json!("../outside")).unwrap_err();
        assert!(matches!(e, OciError::RootfsEscapes(_)), "{e}");
        // A symbolic link, to inside or outside the bundle, is refused.
        for target in [dir.join("rootfs"), outside.clone()] {
            let _ = fs::remove_file(dir.join("link"));
            std::os::unix::fs::symlink(&target, dir.join("link")).unwrap();
            let e = load(json!("link")).unwrap_err();
            assert!(matches!(e, OciError::RootfsSymlink(_)), "{e}");
        }
        // A path through a symbolic link that leads out escapes too.
        let e = load(json!("link/.")).unwrap_err();
        assert!(matches!(e, OciError::RootfsEscapes(_)), "{e}");
        load(json!("./rootfs/../rootfs")).unwrap();
        // An absolute path may be anywhere (as with runc: podman's overlay mounts).
        assert_eq!(load(json!(outside)).unwrap().rootfs, outside);
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
        let uts = json!({"hostname": "box", "linux": {"namespaces": [
            {"type": "mount"}, {"type": "uts", "path": "/proc/self/ns/uts"}]}});
        assert_eq!(
            guest_spec(&uts)["linux"]["namespaces"],
            json!([{"type": "mount"}, {"type": "uts"}]),
            "a uts path is a private UTS namespace in the guest: the hostname applies"
        );
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
        assert_eq!(vm_size(&s, 8), (DEFAULT_VM_MIB, 7), "up to the highest id");
        assert_eq!(vm_size(&s, 2), (DEFAULT_VM_MIB, 2), "capped at the host's");
        let s = json!({"linux": {"resources": {"memory": {"limit": -1}, "cpu": {"cpus": "x"}}}});
        assert_eq!(vm_size(&s, 8), (DEFAULT_VM_MIB, 1));
        let s = json!({"linux": {"resources": {"cpu": {"cpus": "0-1", "quota": 50000,
            "period": 100000}}}});
        assert_eq!(
            vm_size(&s, 8).1,
            2,
            "a small quota does not shrink the cpuset's VM"
        );
        let s = json!({"linux": {"resources": {"cpu": {"cpus": "1", "quota": 300000,
            "period": 100000}}}});
        assert_eq!(vm_size(&s, 8).1, 3, "nor a small cpuset the quota's");
        let s = json!({"linux": {"resources": {"cpu": {"quota": i64::MAX, "period": 1}}}});
        assert_eq!(vm_size(&s, 8).1, 8);
        let s = json!({"process": {"execCPUAffinity": {"initial": "5", "final": "0-2"}}});
        assert_eq!(vm_size(&s, 8).1, 6, "the exec affinity counts");
        assert_eq!(vm_size(&s, 4).1, 4);
        let s = json!({"linux": {"resources": {"cpu": {"cpus": "0-199"}}}});
        assert_eq!(
            vm_size(&s, 256).1,
            GUEST_MAX_VCPUS,
            "and at the guest kernel's"
        );
    }

    #[test]
    fn the_guest_kernel_runs_as_many_cpus_as_a_vm_gets() {
        let config = include_str!("../../../../kernel/guest.config");
        let nr_cpus = config
            .lines()
            .find_map(|l| l.strip_prefix("CONFIG_NR_CPUS="))
            .and_then(|n| n.trim().parse::<u32>().ok());
        assert_eq!(
            nr_cpus,
            Some(GUEST_MAX_VCPUS),
            "kernel/guest.config CONFIG_NR_CPUS"
        );
    }

    #[test]
    fn cpu_lists_fit_the_vm_in_the_guest_spec() {
        let spec = json!({
            "linux": {"resources": {"cpu": {"cpus": "0-3,6", "quota": 50000, "period": 100000}}},
            "process": {"args": ["sh"], "execCPUAffinity": {"initial": "7", "final": "0-1"}}});
        let (_, vcpus) = vm_size(&spec, 2);
        let mut g = guest_spec(&spec);
        fit_cpus(&mut g, vcpus);
        assert_eq!(g["linux"]["resources"]["cpu"]["cpus"], "0-1");
        assert_eq!(g["linux"]["resources"]["cpu"]["quota"], 50000);
        assert_eq!(
            g["process"]["execCPUAffinity"],
            json!({"initial": "0", "final": "0-1"})
        );
        // Fitting lists are left alone.
        let (_, vcpus) = vm_size(&spec, 16);
        assert_eq!(vcpus, 8);
        let mut g = guest_spec(&spec);
        fit_cpus(&mut g, vcpus);
        assert_eq!(g, guest_spec(&spec));
    }
}
