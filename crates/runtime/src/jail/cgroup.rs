//! A cgroup v2 of its own for every jailed crx-vmm (ADR 0011): `ROOT/crx/NAME`, with limits
//! sized from the VM, made by the runtime before the jailer starts and joined by the jailer
//! itself between fork and exec ([`crate::child::join_cgroup`]), so the VMM is born in it.
//!
//! - `memory.max`: the guest's RAM + [`VMM_OVERHEAD_MIB`] (crx-vmm's own heap, device buffers,
//!   the jailer; ~8 MiB measured, ADR 0012), and `memory.swap.max` 0 where offered: a VMM that
//!   outgrows its VM is killed by the kernel's OOM killer in this cgroup, not the host's;
//! - `pids.max`: the vCPUs + [`PIDS_BASE`] (the jailer, the VMM's main thread, helpers);
//! - `cpu.max`: the vCPUs + a quarter CPU for the event loop, per 100 ms (where the `cpu`
//!   controller is offered).
//!
//! The hierarchy is the cgroup2 at `/sys/fs/cgroup` (a pure v2 host, as the lab) or at
//! `/sys/fs/cgroup/unified` (a hybrid host), usable only when it offers the `memory` and `pids`
//! controllers. Without one the VMM runs without a cgroup of its own (a documented degrade:
//! `crx check` says so, the VM's `confinement.json` records why).
//!
//! NAME is derived from the VM's directory ([`name_for`]), so whoever removes the sandbox
//! finds its cgroup again, also after the jailer was killed with SIGKILL: [`remove`] kills what
//! is left in it (`cgroup.kill`), waits for it to empty and removes it.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{io, RuntimeError};

/// Where a cgroup2 hierarchy is looked for, in order.
pub const CGROUP2_ROOTS: [&str; 2] = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"];
/// The parent of every sandbox's cgroup, under the hierarchy's root.
pub const PARENT: &str = "crx";
/// Memory allowed besides the guest's RAM.
pub const VMM_OVERHEAD_MIB: u64 = 64;
/// Tasks allowed besides one per vCPU.
pub const PIDS_BASE: u64 = 64;
/// The CPU period of `cpu.max`, in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;
/// How long [`remove`] waits for a killed cgroup to empty.
const EMPTY_TIMEOUT: Duration = Duration::from_secs(5);

/// The limits of one VMM's cgroup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub memory_max: u64,
    pub pids_max: u64,
    /// `(quota, period)` in microseconds.
    pub cpu_max: Option<(u64, u64)>,
}

impl Limits {
    /// The limits of a VM with `memory_mib` of RAM and `vcpus` vCPUs.
    pub fn for_vm(memory_mib: u32, vcpus: u32) -> Limits {
        let vcpus = u64::from(vcpus.max(1));
        Limits {
            memory_max: (u64::from(memory_mib) + VMM_OVERHEAD_MIB) << 20,
            pids_max: vcpus + PIDS_BASE,
            cpu_max: Some((vcpus * CPU_PERIOD_US + CPU_PERIOD_US / 4, CPU_PERIOD_US)),
        }
    }
}

/// A usable cgroup2 hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    pub root: PathBuf,
    /// Whether it offers the `cpu` controller (`cpu.max` is skipped otherwise).
    pub cpu: bool,
}

/// The first usable hierarchy among `roots`, or why there is none (one line).
pub fn find_in(roots: &[&Path]) -> Result<Hierarchy, String> {
    let mut seen = Vec::new();
    for root in roots {
        let Ok(ctl) = fs::read_to_string(root.join("cgroup.controllers")) else {
            continue;
        };
        let has = |c: &str| ctl.split_whitespace().any(|x| x == c);
        if has("memory") && has("pids") {
            return Ok(Hierarchy {
                root: root.to_path_buf(),
                cpu: has("cpu"),
            });
        }
        seen.push(format!("{} offers [{}]", root.display(), ctl.trim()));
    }
    Err(if seen.is_empty() {
        "no cgroup2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified".into()
    } else {
        format!(
            "no cgroup2 hierarchy with the memory and pids controllers ({}: cgroup v1 holds them)",
            seen.join("; ")
        )
    })
}

/// [`find_in`] over [`CGROUP2_ROOTS`].
pub fn find() -> Result<Hierarchy, String> {
    let roots: Vec<&Path> = CGROUP2_ROOTS.iter().map(Path::new).collect();
    find_in(&roots)
}

/// The longest cgroup name [`name_for`] makes from a path (a file name has 255 bytes).
const MAX_NAME: usize = 240;

/// The cgroup name of the sandbox whose VM directory is `vm_dir`: the path escaped as
/// systemd does (`/` as `-`; bytes other than ASCII letters, digits, `_` and `.` as `\xNN`), so
/// that [`sweep`] can tell from the name whether its sandbox still exists; a path too long for
/// that gets `h-HASH` (removed by [`remove`] only).
pub fn name_for(vm_dir: &Path) -> String {
    let mut out = String::new();
    for b in vm_dir.as_os_str().as_encoded_bytes() {
        match b {
            b'/' => out.push('-'),
            b if b.is_ascii_alphanumeric() || *b == b'_' || *b == b'.' => out.push(*b as char),
            b => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    if vm_dir.is_absolute() && out.len() <= MAX_NAME {
        return out;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in vm_dir.as_os_str().as_encoded_bytes() {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("h-{h:016x}")
}

/// The VM directory a [`name_for`] name stands for (`None` for a hashed or foreign name).
pub fn dir_of(name: &str) -> Option<PathBuf> {
    if !name.starts_with('-') {
        return None;
    }
    let mut bytes = Vec::new();
    let mut rest = name.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        rest = tail;
        match b {
            b'-' => bytes.push(b'/'),
            b'\\' => {
                let hex = rest.get(..3).filter(|h| h[0] == b'x')?;
                let hex = std::str::from_utf8(&hex[1..]).ok()?;
                bytes.push(u8::from_str_radix(hex, 16).ok()?);
                rest = &rest[3..];
            }
            b => bytes.push(b),
        }
    }
    use std::os::unix::ffi::OsStringExt;
    Some(PathBuf::from(std::ffi::OsString::from_vec(bytes)))
}

/// One VMM's cgroup, made and limited, not yet joined.
#[derive(Debug)]
pub struct VmCgroup {
    pub dir: PathBuf,
    pub limits: Limits,
}

/// What the VM's `confinement.json` says about its cgroup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupRecord {
    pub path: PathBuf,
    #[serde(flatten)]
    pub limits: Limits,
}

impl VmCgroup {
    /// Makes the cgroup of `vm_dir` in `h` (an existing one is reused: a restarted VM) and
    /// writes its limits.
    pub fn create_in(h: &Hierarchy, vm_dir: &Path, limits: Limits) -> Result<Self, RuntimeError> {
        let cpu = delegate(h)?;
        Self::make_leaf(h, cpu, vm_dir, limits)
    }

    /// The cgroup itself, under a `crx` that delegates the controllers (`cpu` too if `cpu`).
    fn make_leaf(
        h: &Hierarchy,
        cpu: bool,
        vm_dir: &Path,
        limits: Limits,
    ) -> Result<Self, RuntimeError> {
        let dir = h.root.join(PARENT).join(name_for(vm_dir));
        mkdir(&dir)?;
        let limits = Limits {
            cpu_max: limits.cpu_max.filter(|_| cpu),
            ..limits
        };
        write(&dir.join("memory.max"), &limits.memory_max.to_string())?;
        if dir.join("memory.swap.max").exists() {
            write(&dir.join("memory.swap.max"), "0")?;
        }
        write(&dir.join("pids.max"), &limits.pids_max.to_string())?;
        if let Some((q, p)) = limits.cpu_max {
            write(&dir.join("cpu.max"), &format!("{q} {p}"))?;
        }
        Ok(Self { dir, limits })
    }

    /// The sandbox cgroup of `vm_dir` on this host, or `Ok(Err(why))` without a usable cgroup2
    /// hierarchy (the documented degrade): none mounted, its controllers held by cgroup v1,
    /// or a root that cannot delegate them (a container's cgroup namespace whose root holds
    /// processes). A failure past that (making the cgroup, writing a limit) is an error.
    pub fn create(
        vm_dir: &Path,
        memory_mib: u32,
        vcpus: u32,
    ) -> Result<Result<Self, String>, RuntimeError> {
        let roots: Vec<&Path> = CGROUP2_ROOTS.iter().map(Path::new).collect();
        Self::create_under(&roots, vm_dir, memory_mib, vcpus)
    }

    /// [`VmCgroup::create`] with the hierarchy looked for among `roots`.
    pub fn create_under(
        roots: &[&Path],
        vm_dir: &Path,
        memory_mib: u32,
        vcpus: u32,
    ) -> Result<Result<Self, String>, RuntimeError> {
        let h = match find_in(roots) {
            Ok(h) => h,
            Err(why) => return Ok(Err(why)),
        };
        let cpu = match delegate(&h) {
            Ok(cpu) => cpu,
            Err(e) => {
                return Ok(Err(format!(
                    "the cgroup2 at {} cannot delegate the memory and pids controllers ({})",
                    h.root.display(),
                    crate::chain(&e)
                )))
            }
        };
        Self::make_leaf(&h, cpu, vm_dir, Limits::for_vm(memory_mib, vcpus)).map(Ok)
    }

    /// `cgroup.procs`, opened for the child to write itself into.
    pub fn procs(&self) -> Result<fs::File, RuntimeError> {
        let p = self.dir.join("cgroup.procs");
        fs::OpenOptions::new().write(true).open(&p).map_err(io(&p))
    }

    pub fn record(&self) -> CgroupRecord {
        CgroupRecord {
            path: self.dir.clone(),
            limits: self.limits.clone(),
        }
    }
}

/// Sweeps `h`'s sandbox cgroups, then makes `crx` and has the root delegate the `memory` and
/// `pids` controllers to it and it to its children (it holds no process); returns whether
/// `cpu` is delegated too (optional: enabling it fails while real-time tasks sit in other
/// cgroups).
fn delegate(h: &Hierarchy) -> Result<bool, RuntimeError> {
    let parent = h.root.join(PARENT);
    sweep_in(&parent);
    let mut cpu = h.cpu;
    for dir in [&h.root, &parent] {
        if dir == &parent {
            mkdir(dir)?;
        }
        let ctl = dir.join("cgroup.subtree_control");
        write(&ctl, "+memory +pids")?;
        cpu = cpu && write(&ctl, "+cpu").is_ok();
    }
    Ok(cpu)
}

fn mkdir(dir: &Path) -> Result<(), RuntimeError> {
    match fs::create_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(io(dir)(e)),
        _ => Ok(()),
    }
}

fn write(path: &Path, value: &str) -> Result<(), RuntimeError> {
    fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(io(path))
}

/// Removes the cgroup of the sandbox whose VM directory is `vm_dir`, in every hierarchy where
/// it exists: what still runs there is killed first (the VMM of a jailer that was SIGKILLed
/// dies of its parent-death signal, but need not be gone yet). Best effort: a cgroup that does
/// not empty within 5 s is left (and named in the error).
pub fn remove(vm_dir: &Path) -> Result<(), RuntimeError> {
    let name = name_for(vm_dir);
    for root in CGROUP2_ROOTS {
        remove_dir(&Path::new(root).join(PARENT).join(&name))?;
    }
    Ok(())
}

/// Removes the cgroups of sandboxes whose VM directory no longer exists (a home removed by
/// `crx rm`/`gc`/`--rm`, a container deleted, also after a SIGKILL of the jailer or of the
/// runtime): what still runs in them is killed. Best effort; returns the cgroups removed.
pub fn sweep() -> Vec<PathBuf> {
    let mut removed = Vec::new();
    for root in CGROUP2_ROOTS {
        removed.extend(sweep_in(&Path::new(root).join(PARENT)));
    }
    removed
}

/// [`sweep`] of the sandbox cgroups under `parent`.
pub fn sweep_in(parent: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(parent) else {
        return Vec::new();
    };
    let stale = entries.filter_map(|e| {
        let e = e.ok()?;
        let vm_dir = dir_of(e.file_name().to_str()?)?;
        (e.path().is_dir() && !vm_dir.exists()).then(|| e.path())
    });
    stale.filter(|d| remove_dir(d).is_ok()).collect()
}

/// Kills everything in the cgroup `dir`, waits for it to empty and removes it; a missing
/// `dir` is success.
pub fn remove_dir(dir: &Path) -> Result<(), RuntimeError> {
    if !dir.is_dir() {
        return Ok(());
    }
    kill_all(dir);
    let end = Instant::now() + EMPTY_TIMEOUT;
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() > end => return Err(io(dir)(e)),
            // EBUSY while a killed task is still exiting.
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// `cgroup.kill` (Linux 5.14), else SIGKILL to each listed process.
fn kill_all(dir: &Path) {
    if write(&dir.join("cgroup.kill"), "1").is_ok() {
        return;
    }
    let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_follow_the_vm() {
        let l = Limits::for_vm(512, 2);
        assert_eq!(l.memory_max, (512 + VMM_OVERHEAD_MIB) << 20);
        assert_eq!(l.pids_max, 2 + PIDS_BASE);
        assert_eq!(l.cpu_max, Some((225_000, 100_000)));
        assert_eq!(Limits::for_vm(128, 0).pids_max, 1 + PIDS_BASE);
    }

    #[test]
    fn names_stand_for_their_directory() {
        let p = Path::new("/var/lib/crx/instances/ab-c d/vm");
        let n = name_for(p);
        assert_eq!(n, "-var-lib-crx-instances-ab\\x2dc\\x20d-vm");
        assert_eq!(dir_of(&n).as_deref(), Some(p));
        assert_ne!(n, name_for(Path::new("/var/lib/crx/instances/ab/c d/vm")));
        let long = PathBuf::from(format!("/{}/vm", "x".repeat(300)));
        let h = name_for(&long);
        assert!(h.starts_with("h-") && h.len() == 18, "{h}");
        assert_eq!(dir_of(&h), None);
        assert_eq!(dir_of("-a\\xz1"), None);
        assert_eq!(dir_of("-a\\x2"), None);
    }

    #[test]
    fn sweep_removes_the_cgroups_of_vanished_sandboxes_only() {
        let t = tempfile::tempdir().unwrap();
        let live = t.path().join("live/vm");
        fs::create_dir_all(&live).unwrap();
        let parent = t.path().join("cg");
        let (live_cg, gone_cg) = (
            parent.join(name_for(&live)),
            parent.join(name_for(&t.path().join("gone/vm"))),
        );
        // Empty stand-ins: `cgroup.procs` marks a cgroup (a real one's files go with rmdir).
        for d in [&live_cg, &gone_cg] {
            fs::create_dir_all(d).unwrap();
        }
        fs::create_dir_all(parent.join("h-0123456789abcdef")).unwrap();
        let removed = sweep_in(&parent);
        assert_eq!(removed, std::slice::from_ref(&gone_cg));
        assert!(!gone_cg.exists() && live_cg.exists());
        assert!(parent.join("h-0123456789abcdef").exists());
    }

    /// A cgroupfs stand-in: the control files exist, as the kernel makes them.
    fn fake_root(controllers: &str) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("cgroup.controllers"), controllers).unwrap();
        fs::write(t.path().join("cgroup.subtree_control"), "").unwrap();
        t
    }

    #[test]
    fn a_hierarchy_needs_memory_and_pids() {
        let v2 = fake_root("cpuset cpu io memory pids");
        let hybrid = fake_root("");
        let h = find_in(&[Path::new("/nonexistent"), hybrid.path(), v2.path()]).unwrap();
        assert_eq!(h.root, v2.path());
        assert!(h.cpu);
        let why = find_in(&[hybrid.path()]).unwrap_err();
        assert!(why.contains("memory and pids"), "{why}");
        let why = find_in(&[Path::new("/nonexistent")]).unwrap_err();
        assert!(why.starts_with("no cgroup2 hierarchy at"), "{why}");
        let nocpu = fake_root("memory pids");
        assert!(!find_in(&[nocpu.path()]).unwrap().cpu);
    }

    #[test]
    fn the_cgroup_gets_its_limits_and_the_parents_delegate() {
        let t = fake_root("memory pids");
        let h = find_in(&[t.path()]).unwrap();
        // An existing sandbox: a sweep leaves its cgroup alone.
        let vm_dir = &t.path().join("id1/vm");
        fs::create_dir_all(vm_dir).unwrap();
        let dir = t.path().join(PARENT).join(name_for(vm_dir));
        // The kernel makes the control files with the directories; the stand-in cannot.
        fs::create_dir_all(&dir).unwrap();
        fs::write(t.path().join(PARENT).join("cgroup.subtree_control"), "").unwrap();
        for f in ["memory.max", "pids.max", "cgroup.procs"] {
            fs::write(dir.join(f), "max").unwrap();
        }
        let cg = VmCgroup::create_in(&h, vm_dir, Limits::for_vm(256, 1)).unwrap();
        assert_eq!(cg.dir, dir);
        let read = |p: PathBuf| fs::read_to_string(p).unwrap();
        assert_eq!(read(dir.join("memory.max")), ((256 + 64) << 20).to_string());
        assert_eq!(read(dir.join("pids.max")), "65");
        assert!(!dir.join("cpu.max").exists(), "no cpu controller offered");
        assert_eq!(cg.limits.cpu_max, None);
        assert_eq!(
            read(t.path().join("cgroup.subtree_control")),
            "+memory +pids"
        );
        assert_eq!(
            read(t.path().join(PARENT).join("cgroup.subtree_control")),
            "+memory +pids"
        );
        let rec = serde_json::to_value(cg.record()).unwrap();
        assert_eq!(rec["pids_max"], 65);
        assert_eq!(rec["path"], dir.display().to_string());
    }

    /// A hierarchy whose root cannot delegate (no `cgroup.subtree_control` to write here; in
    /// a container's cgroup namespace, EBUSY) is the degrade, with the reason.
    #[test]
    fn a_root_that_cannot_delegate_is_the_degrade() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("cgroup.controllers"), "memory pids").unwrap();
        let vm_dir = t.path().join("id/vm");
        let why = VmCgroup::create_under(&[t.path()], &vm_dir, 128, 1)
            .unwrap()
            .unwrap_err();
        assert!(why.contains("cannot delegate the memory and pids"), "{why}");
        let none = tempfile::tempdir().unwrap();
        let why = VmCgroup::create_under(&[none.path()], &vm_dir, 128, 1)
            .unwrap()
            .unwrap_err();
        assert!(why.starts_with("no cgroup2 hierarchy"), "{why}");
    }

    #[test]
    fn removing_a_missing_cgroup_is_success() {
        let t = tempfile::tempdir().unwrap();
        remove_dir(&t.path().join("gone")).unwrap();
        remove(Path::new("/nonexistent/instances/x/vm")).unwrap();
    }
}
