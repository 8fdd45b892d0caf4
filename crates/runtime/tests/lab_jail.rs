//! A jailed VMM's cgroup (ADR 0011) over its life, seen from the host: the VMM is born in
//! `crx/NAME` with its VM's limits, alone (the jailer became it, ADR 0018); after a `kill -9`
//! of the VMM the empty cgroup stays until its sandbox is gone, when a sweep removes
//! it; removing the cgroup of a live sandbox kills what runs in it.
//!
//! Runs inside the nested lab (`cargo xtask lab -- target/debug/deps/lab_jail-HASH lab_`) with
//! the boot files of `cargo xtask boot` and `target/debug/crx-vmm`; anything missing is a
//! failure, never a skip.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use crx_runtime::agent::Agent;
use crx_runtime::jail::cgroup;
use crx_runtime::paths;
use crx_runtime::vm::VmConfig;

const BOOT: Duration = Duration::from_secs(180);

/// Boots a VM with 192 MiB and 2 vCPUs in `dir` (no disk, no share: the agent alone) and
/// waits for its agent.
fn boot(dir: &Path) -> (VmConfig, Child) {
    let vm = VmConfig {
        vmm: paths::find_vmm().unwrap(),
        boot: paths::verified_boot_files().unwrap(),
        memory_mib: 192,
        vcpus: 2,
        disk: PathBuf::new(),
        vsock_uds: dir.join("vm").join("v.sock"),
        console: dir.join("console.log"),
        vmm_log: dir.join("vmm.log"),
        die_with_parent: true,
        boot_timer: false,
        fs: Vec::new(),
        net: Vec::new(),
    };
    let child = vm.spawn().unwrap();
    let ready = Agent::new(&vm.vsock_uds).wait_ready(BOOT, &vm.vmm_log, &vm.console, || true);
    assert!(
        ready.is_ok(),
        "{:?}\n{}",
        ready.err(),
        std::fs::read_to_string(&vm.vmm_log).unwrap_or_default()
    );
    (vm, child)
}

/// The pids in the cgroup `dir`.
fn members(dir: &Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < end, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn lab_a_jailed_vmms_cgroup_outlives_a_kill_9_until_swept() {
    let h = cgroup::find().expect("the lab mounts cgroup2 with the memory and pids controllers");
    let t = tempfile::tempdir().unwrap();
    let (_vm, mut vmm) = boot(t.path());
    let vm_dir = t.path().join("vm");
    let dir = h.root.join(cgroup::PARENT).join(cgroup::name_for(&vm_dir));
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f))
            .unwrap()
            .trim()
            .to_owned()
    };
    assert_eq!(
        read("memory.max"),
        ((192 + cgroup::VMM_OVERHEAD_MIB) << 20).to_string()
    );
    assert_eq!(read("pids.max"), (2 + cgroup::PIDS_BASE).to_string());
    // The VMM, our child (no jailer waits between), and nothing else.
    let procs = members(&dir);
    assert_eq!(procs, [vmm.id()]);
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", vmm.id())).unwrap();
    assert_eq!(comm.trim(), "crx-vmm");
    let rec = crx_runtime::jail::Confinement::load(t.path()).unwrap();
    assert_eq!(rec.cgroup.unwrap().path, dir);
    assert!(rec.seccomp && rec.jail.is_some());

    // kill -9 of the VMM: the cgroup empties and stays (its sandbox still exists).
    vmm.kill().unwrap();
    vmm.wait().unwrap();
    wait_until("the SIGKILLed VMM stayed in its cgroup", || {
        members(&dir).is_empty()
    });
    cgroup::sweep();
    assert!(dir.is_dir(), "swept while its sandbox exists");
    // The sandbox removed (crx rm, crx-runc delete): the next sweep takes its cgroup.
    std::fs::remove_dir_all(&vm_dir).unwrap();
    let removed = cgroup::sweep();
    assert!(removed.contains(&dir), "{removed:?}");
    assert!(!dir.exists());
}

#[test]
fn lab_removing_a_live_sandboxs_cgroup_kills_its_vmm() {
    let t = tempfile::tempdir().unwrap();
    let (_vm, mut vmm) = boot(t.path());
    let vm_dir = t.path().join("vm");
    let dir = cgroup::find()
        .unwrap()
        .root
        .join(cgroup::PARENT)
        .join(cgroup::name_for(&vm_dir));
    assert!(!members(&dir).is_empty());
    cgroup::remove(&vm_dir).unwrap();
    assert!(!dir.exists());
    let status = vmm.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "{status}");
}
