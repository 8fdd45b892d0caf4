//! End-to-end `crx-runc` runs with hand-written bundles: they boot real microVMs, so they run
//! inside the nested lab (`cargo xtask test`, tier 3; or `cargo test -p crx --no-run` then
//! `cargo xtask lab -- target/debug/deps/lab_oci-HASH lab_ --test-threads 1`). The rootfs is
//! the lab's /bin/busybox (Debian's busybox-static) with a few symlinks
//! ([`crx_testkit::busybox::bundle`]). The terminal cases are in `lab_oci_terminal.rs`, the
//! killed ones in `lab_kill9.rs`.
//!
//! The test process is a child subreaper (as conmon and containerd's shim are): the monitor a
//! `create` leaves behind becomes our child, and we wait for its exit status.
//! One VM at a time (a lock): the lab has two slow emulated cores.

mod cli_lab;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cli_lab::{alive, pids_of, runc_cmd, wait_child, wait_dead, Lab};
use crx_testkit::{code, text};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use serde_json::{json, Value};

/// create with stdout/stderr to files, the pid file; then the lifecycle through every command.
#[test]
fn lab_oci_lifecycle() {
    let lab = Lab::new();
    let script = "echo out; echo err >&2; trap 'echo bye; exit 42' TERM; \
                  while true; do sleep 0.2; done";
    let cgroup = "/crx-oci-test/c1";
    let b = lab.bundle(
        "b1",
        &["sh", "-c", script],
        json!({"linux": {"cgroupsPath": cgroup}}),
    );
    let out_path = lab.dir.path().join("out");
    let err_path = lab.dir.path().join("err");
    let pid_file = lab.dir.path().join("pid");
    let b_s = b.to_str().unwrap();
    let created = runc_cmd(
        &lab.root(),
        &[
            "create",
            "--bundle",
            b_s,
            "--pid-file",
            pid_file.to_str().unwrap(),
            "c1",
        ],
    )
    .stdin(Stdio::null())
    .stdout(fs::File::create(&out_path).unwrap())
    .stderr(fs::File::create(&err_path).unwrap())
    .status()
    .unwrap();
    assert!(
        created.success(),
        "create: {}",
        fs::read_to_string(&err_path).unwrap()
    );
    let pid: i32 = fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let s = lab.state("c1");
    assert_eq!(s["status"], "created", "{s}");
    assert_eq!(s["pid"], pid);
    assert_eq!(s["bundle"], b_s);
    assert!(alive(pid));
    // The monitor and its VMM are in the spec's cgroup on the host.
    let rec: Value =
        serde_json::from_slice(&fs::read(lab.root().join("c1/state.json")).unwrap()).unwrap();
    // The measured boot: the record and the OCI state name the verified initrd's digest.
    let initrd = rec["boot"]["initrd"]["sha256"].as_str().unwrap();
    assert_eq!(initrd.len(), 64, "{rec}");
    assert_eq!(s["boot"]["initrd"]["sha256"], initrd, "{s}");
    // A `network` entry without a path: the VM boots at start, with what its namespace
    // holds then (ADR 0022).
    assert!(rec["vmm_pid"].is_null(), "{rec}");
    // Not started: no output yet.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(fs::read_to_string(&out_path).unwrap(), "");
    // A second container with the same id is refused; the first is untouched.
    let dup = lab.runc(&["create", "--bundle", b_s, "c1"]);
    assert_eq!(code(&dup), 1);
    assert!(
        text(&dup.stderr).contains("already exists"),
        "{}",
        text(&dup.stderr)
    );
    assert_eq!(lab.state("c1")["status"], "created");

    let st = lab.runc(&["start", "c1"]);
    assert_eq!(code(&st), 0, "start: {}", text(&st.stderr));
    assert_eq!(lab.state("c1")["status"], "running");
    let rec: Value =
        serde_json::from_slice(&fs::read(lab.root().join("c1/state.json")).unwrap()).unwrap();
    for p in [pid as i64, rec["vmm_pid"].as_i64().unwrap()] {
        let cg = fs::read_to_string(format!("/proc/{p}/cgroup")).unwrap();
        assert_eq!(cg.trim(), format!("0::{cgroup}"), "pid {p}");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    // stdout and stderr travel on separate streams: either may arrive first.
    while fs::read_to_string(&out_path).unwrap() != "out\n"
        || fs::read_to_string(&err_path).unwrap() != "err\n"
    {
        assert!(
            Instant::now() < deadline,
            "no output: {:?} {:?}",
            fs::read_to_string(&out_path),
            fs::read_to_string(&err_path)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        code(&lab.runc(&["start", "c1"])),
        1,
        "a second start is refused"
    );

    // exec: output, exit code, the container's view (its rootfs, its hostname).
    let e = lab.runc(&["exec", "c1", "sh", "-c", "cat /etc/motd; hostname; exit 4"]);
    assert_eq!(code(&e), 4, "exec: {}", text(&e.stderr));
    assert_eq!(text(&e.stdout), "from the bundle\ncrx-oci\n");
    // exec --process FILE, detached, with a pid file: its monitor exits with its code.
    let pfile = lab.dir.path().join("process.json");
    fs::write(
        &pfile,
        json!({"args": ["sh", "-c", "exit 7"], "cwd": "/", "env": ["PATH=/bin"],
               "user": {"uid": 0, "gid": 0}})
        .to_string(),
    )
    .unwrap();
    let epid = lab.dir.path().join("epid");
    let e = lab.runc(&[
        "exec",
        "--process",
        pfile.to_str().unwrap(),
        "--detach",
        "--pid-file",
        epid.to_str().unwrap(),
        "c1",
    ]);
    assert_eq!(code(&e), 0, "exec -d: {}", text(&e.stderr));
    let epid: i32 = fs::read_to_string(&epid).unwrap().trim().parse().unwrap();
    assert_eq!(wait_child(epid), WaitStatus::Exited(Pid::from_raw(epid), 7));

    // The rootfs is the bundle's directory, shared live: a write in the container lands in it.
    let e = lab.runc(&["exec", "c1", "sh", "-c", "echo w > /tmp/w"]);
    assert_eq!(code(&e), 0, "exec: {}", text(&e.stderr));
    assert_eq!(fs::read_to_string(b.join("rootfs/tmp/w")).unwrap(), "w\n");

    // ps: guest pids, the init among them.
    let ps = lab.runc(&["ps", "--format", "json", "c1"]);
    assert_eq!(code(&ps), 0, "ps: {}", text(&ps.stderr));
    let pids: Vec<i32> = serde_json::from_slice(&ps.stdout).unwrap();
    assert!(!pids.is_empty(), "{pids:?}");
    // events --stats: one JSON line.
    let ev = lab.runc(&["events", "--stats", "c1"]);
    assert_eq!(code(&ev), 0, "events: {}", text(&ev.stderr));
    let ev: Value = serde_json::from_slice(&ev.stdout).unwrap();
    assert_eq!(ev["type"], "stats");
    assert!(ev["data"]["pids"]["current"].as_u64().unwrap() >= 1, "{ev}");

    // update: new limits in the guest's cgroup, seen in the next stats.
    let u = lab.runc(&["update", "--memory", "67108864", "--pids-limit", "32", "c1"]);
    assert_eq!(code(&u), 0, "update: {}", text(&u.stderr));
    let res = lab.dir.path().join("resources.json");
    fs::write(&res, r#"{"pids": {"limit": 48}}"#).unwrap();
    let u = lab.runc(&["update", "--resources", res.to_str().unwrap(), "c1"]);
    assert_eq!(code(&u), 0, "update -r: {}", text(&u.stderr));
    let ev = lab.runc(&["events", "--stats", "c1"]);
    let ev: Value = serde_json::from_slice(&ev.stdout).unwrap();
    assert_eq!(ev["data"]["memory"]["usage"]["limit"], 67108864, "{ev}");
    assert_eq!(ev["data"]["pids"]["limit"], 48, "{ev}");
    fs::write(&res, "[1]").unwrap();
    let u = lab.runc(&["update", "--resources", res.to_str().unwrap(), "c1"]);
    assert_eq!(code(&u), 1, "a bad resources file is refused");

    // pause: no output while frozen; resume.
    assert_eq!(code(&lab.runc(&["pause", "c1"])), 0);
    assert_eq!(lab.state("c1")["status"], "paused");
    let l = lab.runc(&["list", "--format", "json"]);
    let l: Value = serde_json::from_slice(&l.stdout).unwrap();
    assert_eq!(l[0]["status"], "paused");
    // exec --ignore-paused waits for the monitor's answer to `wait-unpaused`, sent once the
    // container is resumed; then it runs.
    let waiting = runc_cmd(
        &lab.root(),
        &["exec", "--ignore-paused", "c1", "echo", "late"],
    )
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    assert_eq!(code(&lab.runc(&["resume", "c1"])), 0);
    let late = waiting.wait_with_output().unwrap();
    assert_eq!(
        code(&late),
        0,
        "exec --ignore-paused: {}",
        text(&late.stderr)
    );
    assert_eq!(text(&late.stdout), "late\n");
    assert_eq!(lab.state("c1")["status"], "running");
    let q = lab.runc(&["list", "-q"]);
    assert_eq!(text(&q.stdout), "c1\n");

    // delete of a running container needs --force.
    assert_eq!(code(&lab.runc(&["delete", "c1"])), 1);
    // kill TERM: the trap exits 42; the monitor (our adopted child) exits 42.
    assert_eq!(code(&lab.runc(&["kill", "c1", "TERM"])), 0);
    assert_eq!(wait_child(pid), WaitStatus::Exited(Pid::from_raw(pid), 42));
    assert_eq!(fs::read_to_string(&out_path).unwrap(), "out\nbye\n");
    let s = lab.state("c1");
    assert_eq!(s["status"], "stopped");
    assert_eq!(s["pid"], 0);
    assert_eq!(code(&lab.runc(&["kill", "c1", "KILL"])), 1, "not running");
    let d = lab.runc(&["delete", "c1"]);
    assert_eq!(code(&d), 0, "delete: {}", text(&d.stderr));
    assert!(!lab.root().join("c1").exists());
    assert!(
        !Path::new("/sys/fs/cgroup").join(&cgroup[1..]).exists(),
        "cgroup removed"
    );
    let _ = fs::remove_dir("/sys/fs/cgroup/crx-oci-test");
    assert_eq!(code(&lab.runc(&["state", "c1"])), 1);
}

/// `run`: the container's exit code, its stdout ours; hooks on the host with the state on stdin,
/// `startContainer` in the container (in the guest, from the container's rootfs).
#[test]
fn lab_oci_run_exit_code_and_hooks() {
    let lab = Lab::new();
    let log = lab.dir.path().join("hooks.log");
    let hook = |name: &str| {
        json!({"path": "/bin/sh", "args": ["sh", "-c",
            format!("echo {name} $(cat) >> {}", log.display())]})
    };
    // Runs in the container's mount namespace: `/started` is in the container's root.
    let in_container = json!({"path": "/bin/sh", "env": ["PATH=/bin"], "args": ["sh", "-c",
        "s=$(cat); case \"$s\" in *'\"r1\"'*) echo started r1 > /started;; esac"]});
    let b = lab.bundle(
        "b2",
        &[
            "sh",
            "-c",
            "cat /started; echo hello; echo oops >&2; exit 3",
        ],
        json!({"hooks": {"prestart": [hook("prestart")], "createRuntime": [hook("createRuntime")],
            "startContainer": [in_container],
            "poststart": [hook("poststart")], "poststop": [hook("poststop")]}}),
    );
    let out = lab.runc(&["run", "--bundle", b.to_str().unwrap(), "r1"]);
    assert_eq!(code(&out), 3, "run: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "started r1\nhello\n");
    assert_eq!(text(&out.stderr), "oops\n");
    assert!(!lab.root().join("r1").exists(), "run deletes the container");
    let hooks = fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = hooks.lines().collect();
    assert_eq!(lines.len(), 4, "{hooks}");
    for (line, name) in lines
        .iter()
        .zip(["prestart", "createRuntime", "poststart", "poststop"])
    {
        let (n, state) = line.split_once(' ').unwrap();
        assert_eq!(n, name);
        let state: Value = serde_json::from_str(state).unwrap();
        assert_eq!(state["id"], "r1");
    }
    let first: Value = serde_json::from_str(lines[0].split_once(' ').unwrap().1).unwrap();
    assert_eq!(first["status"], "created");
    assert!(first["pid"].as_i64().unwrap() > 0);
    let last: Value = serde_json::from_str(lines[3].split_once(' ').unwrap().1).unwrap();
    assert_eq!(last["status"], "stopped");
}

/// crx-runc starts from a VM template (ADR 0017): its rootfs share is a slot of the template,
/// so the first `run` of the shape builds it and restores, and the next restores too, each
/// container seeing its own bundle's rootfs through its own virtiofsd.
#[test]
fn lab_oci_run_restores_from_a_template() {
    let lab = Lab::new();
    let templates = lab.dir.path().join("templates");
    for round in 0..2 {
        let id = format!("t{round}");
        let b = lab.bundle(&id, &["cat", "/round"], json!({}));
        fs::write(b.join("rootfs/round"), format!("round {round}\n")).unwrap();
        let out = runc_cmd(&lab.root(), &["run", "--bundle", b.to_str().unwrap(), &id])
            .env("CRX_TEMPLATE_DIR", &templates)
            .env("CRX_TRACE", "1")
            .env_remove("CRX_TEMPLATES")
            .env_remove("CRX_COLD")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = text(&out.stderr);
        assert_eq!(code(&out), 0, "round {round}: {err}");
        assert_eq!(text(&out.stdout), format!("round {round}\n"), "{err}");
        assert!(err.contains("template: restoring"), "round {round}: {err}");
        assert_eq!(err.contains("template: building"), round == 0, "{err}");
    }
}

/// kill KILL: the monitor dies by SIGKILL too; delete --force of a running container.
#[test]
fn lab_oci_sigkill_and_force_delete() {
    let lab = Lab::new();
    let b = lab.bundle("b3", &["sleep", "1000"], json!({}));
    let b_s = b.to_str().unwrap();
    let _ = b_s;
    for id in ["k1", "k2"] {
        assert!(lab.create(&b, id, &lab.dir.path().join(id)).success());
        assert_eq!(code(&lab.runc(&["start", id])), 0);
    }
    let pid = lab.state("k1")["pid"].as_i64().unwrap() as i32;
    assert_eq!(code(&lab.runc(&["kill", "k1", "9"])), 0);
    assert_eq!(
        wait_child(pid),
        WaitStatus::Signaled(Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL, false)
    );
    assert_eq!(code(&lab.runc(&["delete", "k1"])), 0);
    // delete --force: the VM goes at once.
    let pid2 = lab.state("k2")["pid"].as_i64().unwrap() as i32;
    let d = lab.runc(&["delete", "--force", "k2"]);
    assert_eq!(code(&d), 0, "delete -f: {}", text(&d.stderr));
    let _ = wait_child(pid2);
    assert!(!lab.root().join("k2").exists());
    assert_eq!(
        code(&lab.runc(&["delete", "--force", "k2"])),
        0,
        "missing + force: ok"
    );
    assert_eq!(text(&lab.runc(&["list", "-q"]).stdout), "");

    // Created, its VM not booted yet (it boots at start): `kill TERM` ends it as it ends
    // runc's waiting init (the monitor dies by the signal, the state says stopped), `exec`
    // says why it cannot, and `delete` of another created one leaves no process.
    for id in ["k3", "k4"] {
        assert!(lab.create(&b, id, &lab.dir.path().join(id)).success());
        assert_eq!(lab.state(id)["status"], "created");
    }
    let e = lab.runc(&["exec", "k3", "true"]);
    assert_eq!(code(&e), 1);
    assert!(
        text(&e.stderr).contains("k3 is created"),
        "{}",
        text(&e.stderr)
    );
    let pids = pids_of(&lab.root(), "k3");
    assert_eq!(pids.len(), 2, "monitor and virtiofsd, no VMM: {pids:?}");
    let pid3 = pids[0];
    let k = lab.runc(&["kill", "k3", "TERM"]);
    assert_eq!(code(&k), 0, "kill: {}", text(&k.stderr));
    assert_eq!(
        wait_child(pid3),
        WaitStatus::Signaled(
            Pid::from_raw(pid3),
            nix::sys::signal::Signal::SIGTERM,
            false
        )
    );
    wait_dead(&pids);
    assert_eq!(lab.state("k3")["status"], "stopped");
    assert_eq!(
        code(&lab.runc(&["start", "k3"])),
        1,
        "a stopped one does not start"
    );
    assert_eq!(code(&lab.runc(&["delete", "k3"])), 0);
    let pids = pids_of(&lab.root(), "k4");
    let d = lab.runc(&["delete", "k4"]);
    assert_eq!(code(&d), 0, "delete: {}", text(&d.stderr));
    let _ = wait_child(pids[0]);
    wait_dead(&pids);
    assert_eq!(text(&lab.runc(&["list", "-q"]).stdout), "");
}

/// virtio-fs: a bind-mounted host directory and a bind-mounted single file written on both
/// sides while the container runs, all binds served by one virtiofsd; read-only bind mounts
/// (directory and file) and
/// `root.readonly` refuse writes; delete leaves no host mount behind.
#[test]
fn lab_oci_bind_mount_and_readonly_root() {
    let lab = Lab::new();
    let data = lab.dir.path().join("data");
    let ro = lab.dir.path().join("ro");
    fs::create_dir_all(&data).unwrap();
    fs::create_dir_all(&ro).unwrap();
    fs::write(data.join("from-host"), "hello-host\n").unwrap();
    let single = lab.dir.path().join("single");
    let single_ro = lab.dir.path().join("single-ro");
    fs::write(&single, "file-host\n").unwrap();
    fs::write(&single_ro, "ro-file\n").unwrap();
    let script = "cat /data/from-host; cat /etc/single; echo file-guest >> /etc/single; \
        cat /etc/single-ro; echo x >> /etc/single-ro 2>/dev/null && echo file-writable || echo file-ro; \
        echo guest > /data/from-guest; \
        touch /x 2>/dev/null && echo root-writable || echo root-ro; \
        touch /ro/x 2>/dev/null && echo bind-writable || echo bind-ro; \
        while [ ! -e /data/go ]; do sleep 0.1; done; cat /data/go; sleep 1.5; cat /etc/single";
    let b = lab.bundle(
        "b4",
        &["sh", "-c", script],
        json!({"root": {"path": "rootfs", "readonly": true}, "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/data", "type": "bind", "source": data, "options": ["rbind", "rw"]},
            {"destination": "/ro", "type": "bind", "source": ro, "options": ["rbind", "ro"]},
            {"destination": "/etc/single", "type": "bind", "source": single, "options": ["rbind", "rw"]},
            {"destination": "/etc/single-ro", "type": "bind", "source": single_ro, "options": ["rbind", "ro"]}
        ]}),
    );
    let out = lab.dir.path().join("out4");
    assert!(lab.create(&b, "v1", &out).success());
    let pid = lab.state("v1")["pid"].as_i64().unwrap() as i32;
    // Two virtiofsd for the rootfs and four binds: `root`, and `binds` for all of them.
    assert_eq!(children_named(pid, "virtiofsd"), 2);
    assert_eq!(code(&lab.runc(&["start", "v1"])), 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    while fs::read_to_string(data.join("from-guest")).unwrap_or_default() != "guest\n" {
        assert!(
            Instant::now() < deadline,
            "the guest's write never showed on the host"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        fs::read_to_string(&single).unwrap(),
        "file-host\nfile-guest\n"
    );
    let mut f = fs::OpenOptions::new().append(true).open(&single).unwrap();
    std::io::Write::write_all(&mut f, b"file-late\n").unwrap();
    fs::write(data.join("go"), "host-late\n").unwrap();
    assert_eq!(wait_child(pid), WaitStatus::Exited(Pid::from_raw(pid), 0));
    assert_eq!(
        fs::read_to_string(&out).unwrap(),
        "hello-host\nfile-host\nro-file\nfile-ro\nroot-ro\nbind-ro\nhost-late\n\
         file-host\nfile-guest\nfile-late\n"
    );
    assert!(!b.join("rootfs/x").exists() && !ro.join("x").exists());
    assert_eq!(fs::read_to_string(&single_ro).unwrap(), "ro-file\n");
    assert_eq!(code(&lab.runc(&["delete", "v1"])), 0);
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains("/v1/binds/"),
        "host bind mounts left: {mounts}"
    );
}

/// How many children of `pid` are named `comm`.
fn children_named(pid: i32, comm: &str) -> usize {
    let stats = fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| fs::read_to_string(e.path().join("stat")).ok());
    stats
        .filter(|s| {
            let Some((name, rest)) = s.split_once(" (").and_then(|(_, r)| r.rsplit_once(") "))
            else {
                return false;
            };
            name == comm && rest.split_whitespace().nth(1) == Some(&pid.to_string())
        })
        .count()
}

/// Namespaces given by `path` (podman's pod: uts, ipc and network shared with the infra
/// container) and a cpuset with a small quota: the container starts, its hostname applies in
/// a private UTS namespace of the guest, and the cpuset `0-1` is its affinity (the VM has the
/// vCPUs for it, whatever the quota says).
#[test]
fn lab_oci_namespace_paths_and_cpus() {
    let lab = Lab::new();
    // A network namespace of its own (with only lo): the host's is refused (oci_cli).
    let netns = TestNetns::add("crx-lab-oci-ns1");
    let b = lab.bundle(
        "b-ns",
        &["sh", "-c", "hostname; cat /proc/self/status"],
        json!({"hostname": "pod-member", "linux": {
            "namespaces": [{"type": "pid"}, {"type": "mount"},
                {"type": "uts", "path": "/proc/self/ns/uts"},
                {"type": "ipc", "path": "/proc/self/ns/ipc"},
                {"type": "network", "path": netns.path()}],
            "resources": {"cpu": {"cpus": "0-1", "quota": 20000, "period": 100000}}}}),
    );
    let out = lab.runc(&["run", "--bundle", b.to_str().unwrap(), "ns1"]);
    let stdout = text(&out.stdout);
    assert_eq!(code(&out), 0, "run: {} {stdout}", text(&out.stderr));
    assert!(stdout.starts_with("pod-member\n"), "{stdout}");
    assert!(stdout.contains("Cpus_allowed_list:\t0-1\n"), "{stdout}");
    assert!(!lab.root().join("ns1").exists());
}

/// A named network namespace (`ip netns add`), deleted when dropped.
struct TestNetns(String);

impl TestNetns {
    fn add(name: &str) -> TestNetns {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        let ok = Command::new("ip").args(["netns", "add", name]).status();
        assert!(ok.unwrap().success(), "ip netns add {name}");
        TestNetns(name.to_owned())
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Bind mounts as the guest's mountinfo shows them: the root of each ends in its source's own
/// name; a tmpfs mounted under a source is a mount in the guest too (written through to the
/// host's tmpfs); `rro` makes it read-only with its parent (plain `ro`: the top alone, as runc).
/// On the way (no second VM): the host cgroup's limits, read by a `poststart` hook on the host
/// (the lab is cgroup v2).
#[test]
fn lab_oci_bind_names_and_recursive_attrs() {
    let lab = Lab::new();
    let cgroup = "/sys/fs/cgroup/crx-bind-test/m1";
    let limits = lab.dir.path().join("limits");
    let (vol, rvol) = (lab.dir.path().join("vol"), lab.dir.path().join("rvol"));
    for v in [&vol, &rvol] {
        fs::create_dir_all(v.join("sub")).unwrap();
        let mount = Command::new("mount")
            .args(["-t", "tmpfs", "tmpfs"])
            .arg(v.join("sub"))
            .status()
            .unwrap();
        assert!(mount.success());
        fs::write(v.join("sub/hello"), "in-tmpfs\n").unwrap();
    }
    let script = "cat /data/sub/hello; echo g > /data/sub/from-guest && echo sub-rw; \
        touch /rro/sub/x 2>/dev/null && echo rro-sub-writable || echo rro-sub-ro; \
        touch /rro/x 2>/dev/null && echo rro-top-writable || echo rro-top-ro; \
        echo ---; cat /proc/self/mountinfo";
    let b = lab.bundle(
        "b9",
        &["sh", "-c", script],
        json!({"mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/data", "type": "bind", "source": vol, "options": ["rbind", "rw"]},
            {"destination": "/rro", "type": "bind", "source": rvol, "options": ["rbind", "rro"]}
        ], "linux": {"cgroupsPath": "/crx-bind-test/m1", "resources": {
            "memory": {"limit": 64 << 20}, "cpu": {"quota": 50000, "period": 100000}}},
        "hooks": {"poststart": [{"path": "/bin/sh", "args": ["sh", "-c", format!(
            "cat {cgroup}/memory.max {cgroup}/cpu.max > {}", limits.display())]}]}}),
    );
    let out = lab.runc(&["run", "--bundle", b.to_str().unwrap(), "m1"]);
    let from_guest = fs::read_to_string(vol.join("sub/from-guest"));
    for v in [&vol, &rvol] {
        let _ = Command::new("umount").arg(v.join("sub")).status();
    }
    let stdout = text(&out.stdout);
    assert_eq!(code(&out), 0, "run: {}\n{stdout}", text(&out.stderr));
    let (said, mountinfo) = stdout.split_once("---\n").unwrap();
    assert_eq!(
        said, "in-tmpfs\nsub-rw\nrro-sub-ro\nrro-top-ro\n",
        "{mountinfo}"
    );
    assert_eq!(from_guest.unwrap(), "g\n");
    // mountinfo: ID PARENT MAJ:MIN ROOT MOUNT-POINT OPTIONS ...
    let mount = |point: &str| {
        mountinfo
            .lines()
            .map(|l| l.split(' ').collect::<Vec<_>>())
            .rfind(|f| f.len() > 5 && f[4] == point)
            .unwrap_or_else(|| panic!("{point} is not a mount in the guest:\n{mountinfo}"))
    };
    assert!(mount("/data")[3].ends_with("/vol"), "{mountinfo}");
    assert!(mount("/rro")[3].ends_with("/rvol"), "{mountinfo}");
    assert!(mount("/data/sub")[3].ends_with("/vol/sub"), "{mountinfo}");
    let rro_sub = mount("/rro/sub");
    assert!(rro_sub[5].split(',').any(|o| o == "ro"), "{mountinfo}");
    assert!(
        !mount("/data/sub")[5].split(',').any(|o| o == "ro"),
        "{mountinfo}"
    );
    let host = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !host.contains("/m1/binds/"),
        "host bind mounts left: {host}"
    );
    // The VM's RAM (limit + 96 MiB) and 128 MiB for its host processes; the quota and a
    // quarter CPU.
    let want = format!("{}\n75000 100000\n", (64 + 96 + 128) << 20);
    assert_eq!(fs::read_to_string(&limits).unwrap(), want);
    assert!(!Path::new(cgroup).exists(), "cgroup removed");
    let _ = fs::remove_dir("/sys/fs/cgroup/crx-bind-test");
}

/// A dead backend is noticed: the rootfs's virtiofsd SIGKILLed while the container and an
/// exec into it read from the share; the monitor reaps it, records the container `failed`
/// (reported `stopped`) and stops the VM; the exec ends (a host-side SIGTERM is enough, if it
/// has not ended already). And the container's state on the host is private.
#[test]
fn lab_oci_dead_virtiofsd_is_noticed() {
    use nix::sys::signal::{kill, Signal};
    use std::os::unix::fs::MetadataExt;
    let lab = Lab::new();
    let root = lab.root();
    let reader = "while true; do cat /etc/motd > /dev/null; sleep 0.2; done";
    let b = lab.bundle("b9", &["sh", "-c", reader], json!({}));
    assert!(lab
        .create(&b, "v1", &lab.dir.path().join("v1.out"))
        .success());
    assert_eq!(code(&lab.runc(&["start", "v1"])), 0);
    let mode = |name: &str| fs::metadata(root.join(name)).unwrap().mode() & 0o777;
    assert_eq!(mode("v1"), 0o700);
    // The VMM's jail (owned by the sandbox's own user), ADR 0011.
    assert_eq!(mode("v1/vm"), 0o700);
    for f in [
        "config.json",
        "state.json",
        "vm/vsock.sock",
        "console.log",
        "vmm.log",
    ] {
        assert_eq!(mode(&format!("v1/{f}")), 0o600, "{f}");
    }
    let pids = pids_of(&root, "v1");
    assert_eq!(pids.len(), 3, "monitor, VMM, virtiofsd: {pids:?}");
    let (monitor, virtiofsd) = (pids[0], pids[2]);
    let script = format!("touch /tmp/exec-started; {reader}");
    let mut exec = runc_cmd(&root, &["exec", "v1", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !b.join("rootfs/tmp/exec-started").exists() {
        assert!(Instant::now() < deadline, "the exec did not start");
        std::thread::sleep(Duration::from_millis(100));
    }

    kill(Pid::from_raw(virtiofsd), Signal::SIGKILL).unwrap();
    // Reaped by the monitor (not left a zombie), and the container reported stopped.
    let deadline = Instant::now() + Duration::from_secs(60);
    while Path::new(&format!("/proc/{virtiofsd}")).exists()
        || lab.state("v1")["status"] != "stopped"
    {
        assert!(
            Instant::now() < deadline,
            "not noticed: {}",
            lab.state("v1")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let rec: Value =
        serde_json::from_slice(&fs::read(root.join("v1/state.json")).unwrap()).unwrap();
    assert_eq!(rec["phase"], "failed", "{rec}");
    assert!(
        rec["error"].as_str().unwrap_or("").contains("virtiofsd"),
        "{rec}"
    );
    match wait_child(monitor) {
        WaitStatus::Exited(_, c) => assert_ne!(c, 0, "the monitor reports a failure"),
        other => panic!("monitor: {other:?}"),
    }
    // The exec does not wait on the dead share forever.
    let _ = kill(Pid::from_raw(exec.id() as i32), Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(60);
    while exec.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "exec still waiting");
        std::thread::sleep(Duration::from_millis(100));
    }
    let d = lab.runc(&["delete", "v1"]);
    assert_eq!(code(&d), 0, "delete: {}", text(&d.stderr));
    wait_dead(&pids);
}
