//! The host side of `linux.cgroupsPath`: the container's host processes (the monitor, and the
//! VMM and virtiofsd it starts) join that cgroup, so host-level accounting (podman stats,
//! containerd metrics, kubelet) sees what the container costs, and limits derived from
//! `linux.resources` bound it on the host too:
//!
//! - memory: the VM's RAM (the container's limit + `bundle::VM_OVERHEAD_MIB`, all the guest
//!   can touch) + [`HOST_OVERHEAD_MIB`] (crx-vmm, the virtiofsd daemons, the monitor);
//! - CPU: the quota + a quarter CPU ([`CPU_OVERHEAD_DIVISOR`]) for the VMM's device thread
//!   and virtiofsd, over the same period; shares as given (cgroup v2: converted to a weight);
//! - pids: [`HOST_PIDS_MAX`] when the spec limits pids (the container's own limit is enforced
//!   in the guest; the host processes use a few dozen tasks).
//!
//! The container's own limits are enforced by its cgroup in the guest; `cpus`/`mems` sets
//! size the VM and are not pinned on the host.
//!
//! Layouts: cgroup v2 (`ROOT/cgroup.controllers`), and v1 or hybrid (a hierarchy per
//! controller under `ROOT/NAME`, with `ROOT/unified` a cgroup2 mount in the hybrid case): the
//! processes join the path in every hierarchy, as runc's cgroupfs driver does. A systemd
//! path `slice:prefix:name` is mapped to its cgroupfs path `SLICE-PATH/prefix-name.scope`
//! (as systemd would place the scope; no systemd unit is made).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::bundle::vm_size;
use super::error::{io, OciError};

/// Where the cgroup hierarchies are mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Memory for the host processes besides the guest's RAM: crx-vmm's own (device buffers,
/// copied boot files), two virtiofsd and the monitor.
pub const HOST_OVERHEAD_MIB: u64 = 128;

/// The host CPU quota gets `period / CPU_OVERHEAD_DIVISOR` on top of the container's quota.
pub const CPU_OVERHEAD_DIVISOR: u64 = 4;

/// `pids.max` on the host when the spec limits pids.
pub const HOST_PIDS_MAX: u64 = 1024;

/// What is written to the host cgroup (from `linux.resources`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    /// `(quota, period)` in microseconds.
    pub cpu_quota: Option<(u64, u64)>,
    pub cpu_shares: Option<u64>,
    pub pids: Option<u64>,
}

impl Limits {
    /// The host limits for `spec` on a host with `host_cpus` CPUs.
    pub fn from_spec(spec: &Value, host_cpus: u32) -> Limits {
        let r = &spec["linux"]["resources"];
        let memory_bytes = r["memory"]["limit"]
            .as_i64()
            .filter(|l| *l > 0)
            .map(|_| (u64::from(vm_size(spec, host_cpus).0) + HOST_OVERHEAD_MIB) << 20);
        let quota = r["cpu"]["quota"].as_i64().filter(|q| *q > 0);
        let period = r["cpu"]["period"]
            .as_u64()
            .filter(|p| *p > 0)
            .unwrap_or(100_000);
        let cpu_quota = quota.map(|q| {
            (
                (q as u64).saturating_add(period / CPU_OVERHEAD_DIVISOR),
                period,
            )
        });
        Limits {
            memory_bytes,
            cpu_quota,
            cpu_shares: r["cpu"]["shares"].as_u64().filter(|s| *s > 0),
            pids: r["pids"]["limit"]
                .as_i64()
                .filter(|l| *l > 0)
                .map(|_| HOST_PIDS_MAX),
        }
    }
}

/// A container's host cgroup: its directory in each hierarchy, and its limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCgroup {
    /// `(hierarchy root, controllers, the cgroup's directory)`; controllers is `None` for a
    /// cgroup v2 hierarchy.
    dirs: Vec<Hierarchy>,
    pub limits: Limits,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Hierarchy {
    root: PathBuf,
    /// v1: the controllers this hierarchy carries (`memory`, `cpu`...); v2: `None`.
    v1: Option<Vec<String>>,
    dir: PathBuf,
}

/// The cgroupfs path of `cgroupsPath` (relative to a hierarchy's root), or `None` when it is
/// empty or invalid (`..`, a bad systemd slice).
pub fn cgroupfs_path(path: &str) -> Option<PathBuf> {
    let rel = if let Some((slice, rest)) = path.split_once(':') {
        let (prefix, name) = rest.split_once(':')?;
        if name.is_empty() || name.contains('/') || prefix.contains('/') {
            return None;
        }
        let slice = if slice.is_empty() {
            "system.slice"
        } else {
            slice
        };
        let unit = if name.ends_with(".slice") {
            name.to_owned()
        } else if prefix.is_empty() {
            format!("{name}.scope")
        } else {
            format!("{prefix}-{name}.scope")
        };
        format!("{}/{unit}", expand_slice(slice)?)
    } else {
        path.to_owned()
    };
    let rel = rel.trim_start_matches('/');
    if rel.is_empty() || rel.split('/').any(|c| c == ".." || c == ".") {
        return None;
    }
    Some(PathBuf::from(rel))
}

/// systemd's slice nesting: `a-b.slice` is `a.slice/a-b.slice` (runc's `ExpandSlice`).
fn expand_slice(slice: &str) -> Option<String> {
    let name = slice.strip_suffix(".slice")?;
    if name.is_empty() || slice.contains('/') {
        return None;
    }
    if name == "-" {
        return Some(String::new());
    }
    let (mut path, mut prefix) = (String::new(), String::new());
    for part in name.split('-') {
        if part.is_empty() {
            return None;
        }
        path.push_str(&format!("/{prefix}{part}.slice"));
        prefix.push_str(&format!("{part}-"));
    }
    Some(path)
}

/// The hierarchies under `root`: a v2 root, or the v1 hierarchies (and a hybrid's cgroup2
/// `unified`).
fn hierarchies(root: &Path) -> Vec<(PathBuf, Option<Vec<String>>)> {
    if root.join("cgroup.controllers").exists() {
        return vec![(root.to_owned(), None)];
    }
    let mut found: Vec<(PathBuf, Option<Vec<String>>)> = Vec::new();
    let mut seen = Vec::new();
    let Ok(entries) = fs::read_dir(root) else {
        return found;
    };
    let mut entries: Vec<_> = entries.filter_map(|e| e.ok()).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let dir = e.path();
        // `cpu` -> `cpu,cpuacct` links: each hierarchy once.
        let real = fs::canonicalize(&dir).unwrap_or_else(|_| dir.clone());
        if seen.contains(&real) || !dir.join("cgroup.procs").exists() {
            continue;
        }
        seen.push(real.clone());
        let v1 = if dir.join("cgroup.controllers").exists() {
            None
        } else {
            let name = real
                .file_name()
                .unwrap_or(&e.file_name())
                .to_string_lossy()
                .into_owned();
            Some(name.split(',').map(str::to_owned).collect())
        };
        found.push((real, v1));
    }
    found
}

/// The host cgroup `spec` names, with cgroup hierarchies under `root`.
pub fn host_dir_in(root: &Path, spec: &Value, host_cpus: u32) -> Option<HostCgroup> {
    let rel = cgroupfs_path(spec["linux"]["cgroupsPath"].as_str()?)?;
    let dirs: Vec<Hierarchy> = hierarchies(root)
        .into_iter()
        .map(|(h, v1)| Hierarchy {
            dir: h.join(&rel),
            root: h,
            v1,
        })
        .collect();
    if dirs.is_empty() {
        return None;
    }
    Some(HostCgroup {
        dirs,
        limits: Limits::from_spec(spec, host_cpus),
    })
}

/// [`host_dir_in`] under [`CGROUP_ROOT`], for this host's CPUs.
pub fn host_dir(spec: &Value) -> Option<HostCgroup> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    host_dir_in(Path::new(CGROUP_ROOT), spec, cpus)
}

impl HostCgroup {
    /// The cgroup's directories, one per hierarchy.
    pub fn dirs(&self) -> impl Iterator<Item = &Path> {
        self.dirs.iter().map(|h| h.dir.as_path())
    }
}

/// Writes `value` to the existing control file `path`; a file the kernel does not offer (its
/// controller is not enabled there) is skipped.
fn set(path: &Path, value: &str) -> Result<(), OciError> {
    match fs::OpenOptions::new().write(true).truncate(true).open(path) {
        Ok(mut f) => f.write_all(value.as_bytes()).map_err(io(path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(path)(e)),
    }
}

/// Makes the cgroup directories from `h.root` down to `h.dir` (v1 cpuset: each new level gets
/// its parent's `cpus` and `mems`, which start empty; v2: the parents delegate the memory,
/// cpu and pids controllers where they can).
fn make(h: &Hierarchy) -> Result<(), OciError> {
    let rel = h.dir.strip_prefix(&h.root).unwrap_or(Path::new(""));
    let mut cur = h.root.clone();
    let cpuset =
        h.v1.as_ref()
            .is_some_and(|c| c.iter().any(|c| c == "cpuset"));
    for part in rel.components() {
        if h.v1.is_none() {
            let ctl = fs::read_to_string(cur.join("cgroup.controllers")).unwrap_or_default();
            for c in ["memory", "cpu", "pids"] {
                if ctl.split_whitespace().any(|x| x == c) {
                    // EBUSY where the parent holds processes: that limit is then not set.
                    let _ = set(&cur.join("cgroup.subtree_control"), &format!("+{c}"));
                }
            }
        }
        let parent = cur.clone();
        cur.push(part);
        match fs::create_dir(&cur) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(&cur)(e)),
        }
        if cpuset {
            for f in ["cpuset.cpus", "cpuset.mems"] {
                let mine = fs::read_to_string(cur.join(f)).unwrap_or_default();
                if mine.trim().is_empty() {
                    let theirs = fs::read_to_string(parent.join(f)).unwrap_or_default();
                    set(&cur.join(f), theirs.trim())?;
                }
            }
        }
    }
    Ok(())
}

/// The limit files of one hierarchy: `(file, value)`.
fn limit_files(h: &Hierarchy, l: &Limits) -> Vec<(&'static str, String)> {
    let mut v = Vec::new();
    let has = |c: &str| h.v1.as_ref().is_none_or(|cs| cs.iter().any(|x| x == c));
    let v2 = h.v1.is_none();
    if let (Some(m), true) = (l.memory_bytes, has("memory")) {
        v.push((
            if v2 {
                "memory.max"
            } else {
                "memory.limit_in_bytes"
            },
            m.to_string(),
        ));
    }
    if let (Some((q, p)), true) = (l.cpu_quota, has("cpu")) {
        if v2 {
            v.push(("cpu.max", format!("{q} {p}")));
        } else {
            // The period first: a quota is checked against the current period.
            v.push(("cpu.cfs_period_us", p.to_string()));
            v.push(("cpu.cfs_quota_us", q.to_string()));
        }
    }
    if let (Some(s), true) = (l.cpu_shares, has("cpu")) {
        if v2 {
            // runc's conversion of shares [2, 262144] to a weight [1, 10000].
            let s = s.clamp(2, 262_144);
            v.push(("cpu.weight", (1 + (s - 2) * 9999 / 262_142).to_string()));
        } else {
            v.push(("cpu.shares", s.to_string()));
        }
    }
    if let (Some(p), true) = (l.pids, has("pids")) {
        v.push(("pids.max", p.to_string()));
    }
    v
}

/// Set once this process has joined a sandbox's host cgroup ([`join`] of its own pid).
static JOINED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether this process runs in a sandbox's host cgroup: its jailed VMM then stays there
/// instead of getting a cgroup of its own ([`crate::jail::cgroup`]).
pub fn joined() -> bool {
    JOINED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Puts process `pid` (and its future children) into the cgroup `cg`, made with its limits
/// where missing.
pub fn join(cg: &HostCgroup, pid: u32) -> Result<(), OciError> {
    for h in &cg.dirs {
        make(h)?;
        for (file, value) in limit_files(h, &cg.limits) {
            set(&h.dir.join(file), &value)?;
        }
        let procs = h.dir.join("cgroup.procs");
        fs::write(&procs, pid.to_string()).map_err(io(&procs))?;
    }
    if pid == std::process::id() {
        JOINED.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    Ok(())
}

/// Removes the cgroup's directories (once its processes are gone); errors are ignored.
pub fn remove(cg: &HostCgroup) {
    for d in cg.dirs() {
        let _ = fs::remove_dir(d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(path: &str) -> Value {
        json!({"linux": {"cgroupsPath": path, "resources": {
            "memory": {"limit": 64 << 20}, "cpu": {"quota": 50_000, "period": 100_000,
            "shares": 1024}, "pids": {"limit": 100}}}})
    }

    /// A control file as the kernel offers it in a new cgroup (the fake root cannot).
    fn offer(dir: &Path, files: &[&str]) {
        fs::create_dir_all(dir).unwrap();
        for f in files {
            fs::write(dir.join(f), "").unwrap();
        }
    }

    fn read(p: &Path) -> String {
        fs::read_to_string(p).unwrap()
    }

    #[test]
    fn paths_as_runc_maps_them() {
        let p = |s: &str| cgroupfs_path(s).map(|p| p.display().to_string());
        assert_eq!(p("/a/b").as_deref(), Some("a/b"));
        assert_eq!(p("c").as_deref(), Some("c"));
        assert_eq!(
            p("system.slice:crx:c1").as_deref(),
            Some("system.slice/crx-c1.scope")
        );
        assert_eq!(
            p("machine-libpod.slice:libpod:abc").as_deref(),
            Some("machine.slice/machine-libpod.slice/libpod-abc.scope")
        );
        assert_eq!(p(":crio:x").as_deref(), Some("system.slice/crio-x.scope"));
        assert_eq!(p("-.slice::x").as_deref(), Some("x.scope"));
        assert_eq!(
            p("kubepods-burstable.slice:cri-containerd:x").as_deref(),
            Some("kubepods.slice/kubepods-burstable.slice/cri-containerd-x.scope")
        );
        for bad in [
            "",
            "/",
            "/../x",
            "a/./b",
            "bad:crx:c1",
            "a--b.slice:p:n",
            "s.slice:p",
        ] {
            assert_eq!(p(bad), None, "{bad}");
        }
    }

    #[test]
    fn limits_cover_the_vm_and_its_host_processes() {
        let l = Limits::from_spec(&spec("/x"), 8);
        let vm_mib = u64::from(vm_size(&spec("/x"), 8).0);
        assert_eq!(
            vm_mib,
            64 + u64::from(super::super::bundle::VM_OVERHEAD_MIB)
        );
        assert_eq!(l.memory_bytes, Some((vm_mib + HOST_OVERHEAD_MIB) << 20));
        assert_eq!(l.cpu_quota, Some((75_000, 100_000)));
        assert_eq!(l.cpu_shares, Some(1024));
        assert_eq!(l.pids, Some(HOST_PIDS_MAX));
        assert_eq!(Limits::from_spec(&json!({}), 8), Limits::default());
        let unlimited = json!({"linux": {"resources": {"memory": {"limit": -1},
            "cpu": {"quota": -1}, "pids": {"limit": 0}}}});
        assert_eq!(Limits::from_spec(&unlimited, 8), Limits::default());
    }

    #[test]
    fn v2_cgroup_gets_the_limits_and_the_process() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        fs::write(root.join("cgroup.controllers"), "cpuset cpu io memory pids").unwrap();
        fs::write(root.join("cgroup.subtree_control"), "").unwrap();
        assert_eq!(host_dir_in(root, &json!({}), 2), None, "no cgroupsPath");
        let cg = host_dir_in(root, &spec("/a/b"), 2).unwrap();
        assert_eq!(cg.dirs().collect::<Vec<_>>(), [root.join("a/b")]);
        let files = [
            "memory.max",
            "cpu.max",
            "cpu.weight",
            "pids.max",
            "cgroup.procs",
        ];
        offer(&root.join("a/b"), &files);
        join(&cg, 42).unwrap();
        let dir = root.join("a/b");
        assert_eq!(read(&dir.join("cgroup.procs")), "42");
        assert_eq!(
            read(&dir.join("memory.max")),
            cg.limits.memory_bytes.unwrap().to_string()
        );
        assert_eq!(read(&dir.join("cpu.max")), "75000 100000");
        assert_eq!(read(&dir.join("cpu.weight")), "39");
        assert_eq!(read(&dir.join("pids.max")), HOST_PIDS_MAX.to_string());
        // The root delegated the controllers to its children.
        assert_eq!(read(&root.join("cgroup.subtree_control")), "+pids");
        // A controller the kernel does not offer there is skipped, not an error.
        let cg = host_dir_in(root, &spec("/c"), 2).unwrap();
        offer(&root.join("c"), &["cgroup.procs"]);
        join(&cg, 43).unwrap();
        assert!(!root.join("c/memory.max").exists());
    }

    #[test]
    fn v1_hybrid_joins_every_hierarchy_with_its_limits() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        for h in ["memory", "cpu,cpuacct", "pids", "cpuset", "systemd"] {
            offer(&root.join(h), &["cgroup.procs"]);
        }
        std::os::unix::fs::symlink("cpu,cpuacct", root.join("cpu")).unwrap();
        fs::write(root.join("cpuset/cpuset.cpus"), "0-1\n").unwrap();
        fs::write(root.join("cpuset/cpuset.mems"), "0\n").unwrap();
        offer(
            &root.join("unified"),
            &["cgroup.procs", "cgroup.controllers"],
        );
        let cg = host_dir_in(root, &spec("system.slice:crx:c1"), 2).unwrap();
        let rel = "system.slice/crx-c1.scope";
        let mut dirs: Vec<_> = cg.dirs().map(Path::to_path_buf).collect();
        dirs.sort();
        let mut want: Vec<_> = [
            "cpu,cpuacct",
            "cpuset",
            "memory",
            "pids",
            "systemd",
            "unified",
        ]
        .iter()
        .map(|h| root.join(h).join(rel))
        .collect();
        want.sort();
        assert_eq!(dirs, want, "each hierarchy once");
        offer(&root.join("memory").join(rel), &["memory.limit_in_bytes"]);
        let cpu = root.join("cpu,cpuacct").join(rel);
        offer(
            &cpu,
            &["cpu.cfs_quota_us", "cpu.cfs_period_us", "cpu.shares"],
        );
        offer(&root.join("pids").join(rel), &["pids.max"]);
        for level in ["system.slice", rel] {
            offer(
                &root.join("cpuset").join(level),
                &["cpuset.cpus", "cpuset.mems"],
            );
        }
        join(&cg, 7).unwrap();
        for d in &want {
            assert_eq!(read(&d.join("cgroup.procs")), "7", "{}", d.display());
        }
        assert_eq!(
            read(&root.join("memory").join(rel).join("memory.limit_in_bytes")),
            cg.limits.memory_bytes.unwrap().to_string()
        );
        assert_eq!(read(&cpu.join("cpu.cfs_quota_us")), "75000");
        assert_eq!(read(&cpu.join("cpu.cfs_period_us")), "100000");
        assert_eq!(read(&cpu.join("cpu.shares")), "1024");
        assert_eq!(read(&root.join("pids").join(rel).join("pids.max")), "1024");
        // cpuset: every new level inherits the parent's CPUs and memory nodes.
        for level in ["system.slice", rel] {
            let dir = root.join("cpuset").join(level);
            assert_eq!(read(&dir.join("cpuset.cpus")), "0-1");
            assert_eq!(read(&dir.join("cpuset.mems")), "0");
        }
        // Not in the hierarchies without the controller.
        assert!(!root.join("systemd").join(rel).join("memory.max").exists());
    }

    /// Needs root and a writable cgroup hierarchy (the test tiers run as root): a child
    /// process joins a real cgroup with a memory limit, and the cgroup is removed after it.
    #[test]
    fn a_process_joins_the_real_hierarchy() {
        let name = format!("crx-unit-{}", std::process::id());
        let cg = host_dir(&spec(&format!("/{name}"))).expect("cgroup hierarchies mounted");
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let joined = join(&cg, child.id());
        let mut seen = Vec::new();
        if joined.is_ok() {
            let mine = read(Path::new(&format!("/proc/{}/cgroup", child.id())));
            seen = mine
                .lines()
                .filter(|l| l.ends_with(&name))
                .map(str::to_owned)
                .collect();
        }
        let limits: Vec<String> = cg
            .dirs()
            .flat_map(|d| ["memory.max", "memory.limit_in_bytes"].map(|f| d.join(f)))
            .filter_map(|f| fs::read_to_string(f).ok())
            .map(|s| s.trim().to_owned())
            .collect();
        let _ = child.kill();
        let _ = child.wait();
        remove(&cg);
        let left: Vec<_> = cg.dirs().filter(|d| d.exists()).collect();
        joined.unwrap();
        assert!(!seen.is_empty(), "the child is in the cgroup");
        assert!(
            limits.contains(&cg.limits.memory_bytes.unwrap().to_string()),
            "{limits:?}"
        );
        assert!(left.is_empty(), "removed: {left:?}");
    }
}
