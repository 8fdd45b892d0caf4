//! Containers on host directories shared over virtio-fs, through the runtime's API: one
//! `virtiofs::Daemon` per directory, `VmConfig::add_fs`, no disk, the agent mounting
//! `Rootfs::virtiofs` (Direct and ReadOnly) and libcontainer mounting extra shares given as
//! `virtiofs_mount` entries of the spec.
//!
//! Runs inside the nested lab (`cargo xtask lab -- target/debug/deps/lab_virtiofs-HASH lab_`)
//! with the boot files of `cargo xtask boot`, `target/debug/crx-vmm` and virtiofsd
//! (`cargo xtask virtiofsd`); anything missing is a failure, never a skip.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crx_proto::{virtiofs_mount, ExitStatus, Request, Response, Rootfs, StreamKind, WritableLayer};
use crx_runtime::agent::Agent;
use crx_runtime::paths;
use crx_runtime::virtiofs::Daemon;
use crx_runtime::vm::VmConfig;

const BOOT: Duration = Duration::from_secs(180);

/// The VMM runs jailed (ADR 0011), seen from the host: the runtime's child is crx-vmm itself
/// (the jailer, started as PID 1 of a new PID namespace, became it: ADR 0018), as the
/// sandbox's own user with no capabilities, `no_new_privs` and its seccomp filters, in
/// namespaces of its own, with the VM's directory as its `/`.
/// The only child of `parent`, by parent pid (the lab's kernel has no
/// /proc/PID/task/TID/children).
fn child_of(parent: u32) -> u32 {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let after = stat.rsplit_once(") ").map_or("", |(_, a)| a);
            after.split(' ').nth(1) == Some(parent.to_string().as_str())
        })
        .unwrap_or_else(|| panic!("process {parent} has no child"))
}

/// A field of /proc/PID/status.
fn status_field(pid: u32, name: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
        .trim()
        .to_owned()
}

/// Each virtiofsd serves from a child in its own sandbox: mount, PID and network namespaces
/// of its own, its seccomp filter (installed once it serves: checked after the VM booted),
/// `no_new_privs`, no bounding set and only the capabilities its share needs (read-only:
/// `dac_override` and `dac_read_search`; writable: all of virtiofsd's but `setfcap`).
fn assert_daemon_confined(daemon: u32, readonly: bool) {
    let server = child_of(daemon);
    let field = |name: &str| status_field(server, name);
    assert_eq!(field("Seccomp"), "2", "virtiofsd {server}'s seccomp filter");
    assert_eq!(field("NoNewPrivs"), "1");
    assert_eq!(field("CapBnd"), "0000000000000000");
    let want = if readonly { 0x6u64 } else { 0x0800_00df };
    let eff = u64::from_str_radix(&field("CapEff"), 16).unwrap();
    assert_eq!(
        eff, want,
        "virtiofsd {server} capabilities (readonly {readonly})"
    );
    for ns in ["mnt", "pid", "net"] {
        let theirs = std::fs::read_link(format!("/proc/{server}/ns/{ns}")).unwrap();
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        assert_ne!(theirs, ours, "virtiofsd shares the host's {ns} namespace");
    }
}

/// The jailed VMM was born in its own cgroup, limited from its VM (256 MiB, 1 vCPU).
fn assert_cgroup(vmm: u32, vm_dir: &Path) {
    use crx_runtime::jail::cgroup;
    let h = cgroup::find().expect("the lab mounts cgroup2 with memory and pids");
    let name = cgroup::name_for(vm_dir);
    let line = std::fs::read_to_string(format!("/proc/{vmm}/cgroup")).unwrap();
    assert_eq!(line.trim(), format!("0::/{}/{name}", cgroup::PARENT));
    let dir = h.root.join(cgroup::PARENT).join(&name);
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f))
            .unwrap()
            .trim()
            .to_owned()
    };
    assert_eq!(
        read("memory.max"),
        ((256u64 + cgroup::VMM_OVERHEAD_MIB) << 20).to_string()
    );
    assert_eq!(read("pids.max"), (1 + cgroup::PIDS_BASE).to_string());
    if h.cpu {
        assert_eq!(read("cpu.max"), "125000 100000");
    }
}

fn assert_jailed(vmm: u32, vm_dir: &Path) {
    let comm = std::fs::read_to_string(format!("/proc/{vmm}/comm")).unwrap();
    assert_eq!(comm.trim(), "crx-vmm");
    assert_cgroup(vmm, vm_dir);
    let field = |name: &str| status_field(vmm, name);
    let uid = crx_runtime::jail::uid_for(vm_dir);
    assert_eq!(field("Uid"), format!("{uid}\t{uid}\t{uid}\t{uid}"));
    assert_eq!(field("Gid"), format!("{uid}\t{uid}\t{uid}\t{uid}"));
    for caps in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(field(caps), "0000000000000000", "{caps}");
    }
    assert_eq!(field("NoNewPrivs"), "1");
    assert!(field("NSpid").ends_with("\t1"), "{}", field("NSpid"));
    assert_eq!(
        field("Seccomp"),
        "2",
        "the VMM's seccomp filters (ADR 0010)"
    );
    for ns in ["mnt", "pid", "net", "ipc", "uts"] {
        let theirs = std::fs::read_link(format!("/proc/{vmm}/ns/{ns}")).unwrap();
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        assert_ne!(theirs, ours, "the VMM shares the host's {ns} namespace");
    }
    let names: Vec<String> = std::fs::read_dir(format!("/proc/{vmm}/root"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for want in ["crx-vmm", "dev", "proc", "v.sock", "fs-0.sock"] {
        assert!(
            names.iter().any(|n| n == want),
            "no /{want} in the jail: {names:?}"
        );
    }
    for host_only in ["etc", "root", "home", "var", "tmp", "boot"] {
        assert!(
            !names.iter().any(|n| n == host_only),
            "/{host_only} in the jail: {names:?}"
        );
    }
}

fn busybox_tree(root: &Path) {
    crx_testkit::busybox::tree(
        root,
        &["proc", "dev", "sys", "tmp", "etc", "vol", "rovol"],
        &["sh", "echo", "cat", "touch", "ls"],
    );
}

fn spec(cmd: &str, readonly: bool, mounts: &[serde_json::Value]) -> serde_json::Value {
    let mut m = vec![
        serde_json::json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        serde_json::json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                           "options": ["nosuid", "mode=755", "size=65536k"]}),
    ];
    m.extend(mounts.iter().cloned());
    serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"terminal": false, "user": {"uid": 0, "gid": 0},
                    "args": ["/bin/sh", "-c", cmd], "env": ["PATH=/bin"], "cwd": "/"},
        "root": {"path": "rootfs", "readonly": readonly},
        "hostname": "ctr",
        "mounts": m,
        "linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]}
    })
}

/// Creates, starts and waits for container `id`; returns its stdout and exit code.
fn run(agent: &Agent, id: &str, rootfs: Rootfs, spec: serde_json::Value) -> (String, i32) {
    let mut c = agent.control().unwrap();
    let mut out = agent.open_stream(id, None, StreamKind::Stdout).unwrap();
    let t = Instant::now();
    let r = c
        .call(Request::CreateContainer {
            id: id.into(),
            spec,
            rootfs,
        })
        .unwrap();
    assert_eq!(r, Response::Ok, "create {id}");
    assert_eq!(
        c.call(Request::Start { id: id.into() }).unwrap(),
        Response::Ok
    );
    let code = match c
        .call(Request::Wait {
            id: id.into(),
            exec_id: None,
        })
        .unwrap()
    {
        Response::Exited(ExitStatus { code, .. }) => code,
        other => panic!("wait {id}: {other:?}"),
    };
    let mut text = String::new();
    out.read_to_string(&mut text).unwrap();
    eprintln!("{id}: create -> exit {:?}\n{text}", t.elapsed());
    c.call(Request::Remove {
        id: id.into(),
        force: false,
    })
    .unwrap();
    (text, code)
}

#[test]
fn lab_containers_on_virtiofs_shares() {
    assert!(
        Path::new("/dev/kvm").exists(),
        "/dev/kvm is missing: run inside the nested lab"
    );
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (root, rootro, vol, rovol) = (
        t.join("root"),
        t.join("rootro"),
        t.join("vol"),
        t.join("rovol"),
    );
    busybox_tree(&root);
    busybox_tree(&rootro);
    std::fs::write(rootro.join("hello"), "ro-root-file\n").unwrap();
    std::fs::create_dir(&vol).unwrap();
    std::fs::create_dir(&rovol).unwrap();
    std::fs::write(vol.join("in.txt"), "volume-from-host\n").unwrap();
    std::fs::write(rovol.join("keep.txt"), "keep\n").unwrap();

    // One daemon per directory, default options (namespace sandbox as root, cache=auto).
    let started = Instant::now();
    let daemons: Vec<(&str, Daemon)> = [
        ("root", &root, false),
        ("rootro", &rootro, true),
        ("vol", &vol, false),
        ("rovol", &rovol, true),
    ]
    .into_iter()
    .map(|(tag, dir, ro)| {
        let d = Daemon::spawn(dir, &t.join(format!("{tag}.sock")), ro)
            .unwrap_or_else(|e| panic!("virtiofsd for {tag}: {e:#}"));
        (tag, d)
    })
    .collect();
    eprintln!("4 virtiofsd sockets up after {:?}", started.elapsed());

    let mut vm = VmConfig {
        vmm: paths::find_vmm().unwrap(),
        boot: paths::verified_boot_files().unwrap(),
        memory_mib: 256,
        vcpus: 1,
        disk: PathBuf::new(),
        // In the VM's own directory: its jail when jailed (ADR 0011).
        vsock_uds: t.join("vm").join("v.sock"),
        console: t.join("console.log"),
        vmm_log: t.join("vmm.log"),
        die_with_parent: true,
        boot_timer: false,
        fs: Vec::new(),
        net: Vec::new(),
    };
    for (tag, d) in &daemons {
        vm.add_fs(*tag, d.socket());
    }
    let mut child = vm.spawn().unwrap();
    let agent = Agent::new(&vm.vsock_uds);
    let logs = || {
        format!(
            "--- console ---\n{}\n--- vmm ---\n{}",
            std::fs::read_to_string(&vm.console).unwrap_or_default(),
            std::fs::read_to_string(&vm.vmm_log).unwrap_or_default()
        )
    };
    let t0 = Instant::now();
    let ctl = agent.wait_ready(BOOT, &vm.vmm_log, &vm.console, || true);
    assert!(ctl.is_ok(), "{:?}\n{}", ctl.err(), logs());
    eprintln!("agent ready after {:?}", t0.elapsed());
    assert_jailed(child.id(), &t.join("vm"));
    for ((_, d), ro) in daemons.iter().zip([false, true, false, true]) {
        assert_daemon_confined(d.pid(), ro);
    }

    // Writable root written directly, a writable and a read-only extra share.
    let (out, code) = run(
        &agent,
        "c0",
        Rootfs::virtiofs("root", WritableLayer::Direct),
        spec(
            "cat /vol/in.txt; echo from-container > /written-by-container; \
             echo vol-from-container > /vol/out.txt; \
             if echo x > /rovol/x 2>/dev/null; then echo ROVOL=writable; else echo ROVOL=refused; fi; \
             cat /rovol/keep.txt",
            false,
            &[
                virtiofs_mount("vol", "/vol", false),
                virtiofs_mount("rovol", "/rovol", true),
            ],
        ),
    );
    assert_eq!(code, 0, "{out}\n{}", logs());
    assert_eq!(out, "volume-from-host\nROVOL=refused\nkeep\n", "{}", logs());
    assert_eq!(
        std::fs::read_to_string(root.join("written-by-container")).unwrap(),
        "from-container\n",
        "a write to the writable root lands in the host directory"
    );
    assert_eq!(
        std::fs::read_to_string(vol.join("out.txt")).unwrap(),
        "vol-from-container\n"
    );
    assert!(!rovol.join("x").exists());

    // root.readonly: the root share is mounted read-only, no overlay.
    let (out, code) = run(
        &agent,
        "c1",
        Rootfs::virtiofs("rootro", WritableLayer::ReadOnly),
        spec(
            "cat /hello; if touch /new 2>/dev/null; then echo ROOT=writable; else echo ROOT=refused; fi",
            true,
            &[],
        ),
    );
    assert_eq!(code, 0, "{out}\n{}", logs());
    assert_eq!(out, "ro-root-file\nROOT=refused\n", "{}", logs());
    assert!(!rootro.join("new").exists());

    assert_eq!(
        agent.control().unwrap().call(Request::Shutdown).unwrap(),
        Response::Ok
    );
    let end = Instant::now() + Duration::from_secs(60);
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("crx-vmm did not exit after Shutdown\n{}", logs());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(st.success(), "crx-vmm: {st}\n{}", logs());
    // The sandbox's cgroup goes with it (an empty one, the VMM gone).
    let cg = crx_runtime::jail::Confinement::load(t)
        .and_then(|c| c.cgroup)
        .expect("the VMM's cgroup recorded");
    assert!(cg.path.is_dir());
    crx_runtime::jail::cgroup::remove(&t.join("vm")).unwrap();
    assert!(!cg.path.exists(), "{} left", cg.path.display());
    // Each virtiofsd exits by itself once its only client, the VMM, is gone.
    let end = Instant::now() + Duration::from_secs(10);
    for (tag, mut d) in daemons {
        while d.is_running() {
            assert!(
                Instant::now() < end,
                "virtiofsd for {tag} still running after the VM exited"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
