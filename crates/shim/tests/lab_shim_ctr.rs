//! containerd (Debian's 1.6) running busybox through `containerd-shim-crx-v2` (`ctr run
//! --runtime io.containerd.crx.v2`): output and exit code, exec, kill, two containers of one
//! pod in one VM, and nothing left once they are removed (counted). Inside the nested lab
//! (tier 3): `cargo xtask lab -- target/debug/deps/lab_shim_ctr-HASH lab_ --test-threads=1`.
//!
//! The install step is the README's: containerd finds `containerd-shim-crx-v2` on its PATH,
//! here `target/debug` prepended (crx-vmm and crx-jailer are found beside the shim).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crx_testkit::text;

const IMAGE: &str = "docker.io/library/busybox:latest";
const RUNTIME: &str = "io.containerd.crx.v2";
const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";

struct Containerd {
    address: PathBuf,
    child: Mutex<Child>,
    _dir: tempfile::TempDir,
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let mut c = self.child.lock().unwrap_or_else(|e| e.into_inner());
        let _ = c.kill();
        let _ = c.wait();
    }
}

static CONTAINERD: OnceLock<Containerd> = OnceLock::new();
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn containerd() -> (&'static Containerd, MutexGuard<'static, ()>) {
    let guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    (CONTAINERD.get_or_init(start_containerd), guard)
}

/// The directory of the shim binary: what the README's install step puts on PATH.
fn shim_dir() -> PathBuf {
    let shim = PathBuf::from(env!("CARGO_BIN_EXE_containerd-shim-crx-v2"));
    assert!(shim.ends_with("containerd-shim-crx-v2"));
    shim.parent().unwrap().to_owned()
}

fn start_containerd() -> Containerd {
    let dir = tempfile::Builder::new()
        .prefix("crx-shim-containerd-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let address = dir.path().join("containerd.sock");
    let log = std::fs::File::create(dir.path().join("containerd.log")).unwrap();
    let path = format!(
        "{}:{}",
        shim_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let child = Command::new("containerd")
        .arg("--root")
        .arg(dir.path().join("root"))
        .arg("--state")
        .arg(dir.path().join("state"))
        .arg("--address")
        .arg(&address)
        .env("PATH", path)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("containerd (Debian package containerd) must be installed in the lab");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !address.exists() {
        assert!(Instant::now() < deadline, "containerd did not listen");
        std::thread::sleep(Duration::from_millis(100));
    }
    let c = Containerd {
        address,
        child: Mutex::new(child),
        _dir: dir,
    };
    import_busybox(&c);
    c
}

fn import_busybox(c: &Containerd) {
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("layout");
    crx_image::busybox::build_busybox_layout(
        Path::new(crx_image::busybox::DEFAULT_BUSYBOX),
        &layout,
        IMAGE,
    )
    .unwrap();
    let archive = t.path().join("busybox.tar");
    let tar = Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&archive)
        .arg(".")
        .status()
        .unwrap();
    assert!(tar.success());
    let out = ctr(c, &["image", "import", archive.to_str().unwrap()]);
    assert!(out.status.success(), "import: {}", text(&out.stderr));
}

/// `ctr` bounded by `timeout` (a hung shim fails the test instead of hanging it).
fn ctr_cmd(c: &Containerd, args: &[&str]) -> Command {
    let mut cmd = Command::new("timeout");
    cmd.args(["-k", "5", "240", "ctr"]);
    cmd.arg("--address").arg(&c.address).args(args);
    cmd.stdin(Stdio::null());
    cmd
}

fn ctr(c: &Containerd, args: &[&str]) -> Output {
    ctr_cmd(c, args).output().unwrap()
}

fn log_of(c: &Containerd) -> String {
    std::fs::read_to_string(c._dir.path().join("containerd.log")).unwrap_or_default()
}

/// Processes whose command name is one of `names`.
fn count_procs(names: &[&str]) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("comm")).ok())
        .filter(|comm| names.contains(&comm.trim()))
        .count()
}

/// Running virtiofsd daemons: in its namespace sandbox a daemon is two processes (a parent
/// waiting for the server), so a virtiofsd whose parent is one is not counted again.
fn count_virtiofsd_daemons() -> usize {
    let comm = |pid: &str| std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let ppid = |pid: &str| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // pid (comm) state ppid ...: the comm may hold spaces, so split after its ')'.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        rest.split_whitespace().nth(1).unwrap_or("0").to_owned()
    };
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|pid| pid.parse::<u32>().is_ok())
        .filter(|pid| comm(pid).trim() == "virtiofsd" && comm(&ppid(pid)).trim() != "virtiofsd")
        .count()
}

/// What a pod leaves: VMMs, virtiofsd daemons, shims, mounts under the shim's state, pods.
fn leftovers() -> (usize, usize, usize, usize, usize) {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains("/run/crx-shim/"))
        .count();
    let pods = std::fs::read_dir("/run/crx-shim").map_or(0, |d| d.count());
    (
        count_procs(&["crx-vmm", "crx-jailer"]),
        count_virtiofsd_daemons(),
        count_procs(&["containerd-shim"]),
        mounts,
        pods,
    )
}

/// Waits until nothing is left (the shim exits after `Shutdown`, a moment after `ctr`).
fn assert_nothing_left(c: &Containerd) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = leftovers();
        if left == (0, 0, 0, 0, 0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "left (vmm, virtiofsd, shim, mounts, pods): {left:?}\n{}",
            log_of(c)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn wait_running(c: &Containerd, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let listing = text(&ctr(c, &["task", "ls"]).stdout);
        if listing
            .lines()
            .any(|l| l.starts_with(id) && l.contains("RUNNING"))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{id} never ran: {listing}\n{}",
            log_of(c)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn lab_shim_ctr_run_output_and_exit_code() {
    let (c, _g) = containerd();
    let started = Instant::now();
    let out = ctr(
        c,
        &[
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            IMAGE,
            "run1",
            "sh",
            "-c",
            "echo hi from $0; cat /proc/cmdline; exit 3",
        ],
    );
    eprintln!(
        "ctr run --rm (boot, run, exit, remove): {:?}",
        started.elapsed()
    );
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{stdout}\n{}\n{}",
        text(&out.stderr),
        log_of(c)
    );
    assert!(stdout.contains("hi from sh"), "{stdout}");
    assert!(
        stdout.contains("virtio_mmio.device=") && !stdout.contains("crxlab."),
        "not in a microVM? {stdout}"
    );
    assert_nothing_left(c);
}

#[test]
fn lab_shim_task_exec_and_kill() {
    let (c, _g) = containerd();
    let id = "bg1";
    let mut run = ctr_cmd(
        c,
        &[
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            IMAGE,
            id,
            "sleep",
            "600",
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    wait_running(c, id);
    let exec = ctr(
        c,
        &[
            "task",
            "exec",
            "--exec-id",
            "e1",
            id,
            "sh",
            "-c",
            "echo in-$0; exit 5",
        ],
    );
    assert_eq!(exec.status.code(), Some(5), "{}", text(&exec.stderr));
    assert!(
        text(&exec.stdout).contains("in-sh"),
        "{}",
        text(&exec.stdout)
    );
    let ps = ctr(c, &["task", "ps", id]);
    assert!(ps.status.success(), "{}", text(&ps.stderr));
    let kill = ctr(c, &["task", "kill", "--signal", "SIGKILL", id]);
    assert!(kill.status.success(), "{}", text(&kill.stderr));
    let status = run.wait().unwrap();
    assert_eq!(status.code(), Some(137), "ctr run after SIGKILL: {status}");
    let ls = ctr(c, &["container", "ls", "-q"]);
    assert!(!text(&ls.stdout).contains(id), "container left behind");
    assert_nothing_left(c);
}

/// Two containers given one sandbox id (as CRI gives a pod's) land in ONE VM: one crx-vmm,
/// one virtiofsd, one shim; both see the same kernel (one boot id), and the second's exit
/// code comes back while the first keeps running.
#[test]
fn lab_shim_two_containers_of_one_pod_share_one_vm() {
    let (c, _g) = containerd();
    let (pod, second) = ("pod1", "pod1-c2");
    let ann = |v: &str| format!("{SANDBOX_ID}={v}");
    let mut first = ctr_cmd(
        c,
        &[
            "run",
            "--runtime",
            RUNTIME,
            "--annotation",
            &ann(pod),
            IMAGE,
            pod,
            "sleep",
            "600",
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    wait_running(c, pod);
    let out = ctr(
        c,
        &[
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            "--annotation",
            &ann(pod),
            "--annotation",
            &format!("{CONTAINER_TYPE}=container"),
            IMAGE,
            second,
            "sh",
            "-c",
            "cat /proc/sys/kernel/random/boot_id; exit 4",
        ],
    );
    let boot2 = text(&out.stdout);
    assert_eq!(out.status.code(), Some(4), "{boot2}\n{}", text(&out.stderr));
    let exec = ctr(
        c,
        &[
            "task",
            "exec",
            "--exec-id",
            "b",
            pod,
            "cat",
            "/proc/sys/kernel/random/boot_id",
        ],
    );
    assert_eq!(
        text(&exec.stdout).trim(),
        boot2.lines().next().unwrap_or_default().trim(),
        "not one VM"
    );
    let (vmms, fsds, shims, _, pods) = leftovers();
    assert_eq!(
        (vmms, fsds, shims, pods),
        (1, 1, 1, 1),
        "one VM for the pod"
    );
    let kill = ctr(c, &["task", "kill", "--signal", "SIGKILL", pod]);
    assert!(kill.status.success(), "{}", text(&kill.stderr));
    assert_eq!(first.wait().unwrap().code(), Some(137));
    let rm = ctr(c, &["task", "rm", pod]);
    assert!(
        rm.status.success() || text(&rm.stderr).contains("not found"),
        "{}",
        text(&rm.stderr)
    );
    let rm = ctr(c, &["container", "rm", pod]);
    assert!(rm.status.success(), "{}", text(&rm.stderr));
    assert_nothing_left(c);
}
