//! SIGKILL at lifecycle steps, for both front-ends: whatever dies (the CLI, the monitor,
//! crx-vmm), the state left is reported truthfully (`crx ps`, `crx-runc state`/`list`) and
//! `gc` / `delete` clean it completely (no directory, no process). Real microVMs: they run
//! inside the nested lab (tier 3), one VM at a time. The test process is a child subreaper
//! (as conmon and containerd's shim are): monitors whose starter exited become our children.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

static ONE_VM: Mutex<()> = Mutex::new(());

struct Lab {
    dir: tempfile::TempDir,
    _g: MutexGuard<'static, ()>,
}

impl Lab {
    fn new() -> Lab {
        let g = ONE_VM.lock().unwrap_or_else(|e| e.into_inner());
        nix::sys::prctl::set_child_subreaper(true).unwrap();
        Lab {
            dir: tempfile::tempdir().unwrap(),
            _g: g,
        }
    }
    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }
    fn crx(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_crx"))
            .arg("--root")
            .arg(self.root())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
    fn runc(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_crx-runc"))
            .arg("--root")
            .arg(self.root())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
    /// The offline busybox image in our root.
    fn load_busybox(&self) {
        let out = self.crx(&["load", "--busybox"]);
        assert_eq!(code(&out), 0, "load: {}", text(&out.stderr));
    }
    /// A busybox bundle running `args`.
    fn bundle(&self, args: &[&str]) -> PathBuf {
        let b = self.dir.path().join("bundle");
        let rootfs = b.join("rootfs");
        for d in ["bin", "proc", "dev", "tmp"] {
            fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        for applet in ["sh", "sleep"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        let spec = json!({
            "ociVersion": "1.0.2",
            "process": {"terminal": false, "user": {"uid": 0, "gid": 0}, "args": args,
                "env": ["PATH=/bin"], "cwd": "/"},
            "root": {"path": "rootfs"},
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
            "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "network"}]}
        });
        fs::write(b.join("config.json"), spec.to_string()).unwrap();
        b
    }
    /// `crx ps -a`'s line for `name` once it contains `want`.
    fn wait_ps(&self, name: &str, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let ps = text(&self.crx(&["ps", "-a"]).stdout);
            if ps.lines().any(|l| l.contains(name) && l.contains(want)) {
                return;
            }
            assert!(Instant::now() < deadline, "{name} never {want:?}: {ps}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    fn inspect(&self, name: &str) -> Value {
        serde_json::from_slice(&self.crx(&["inspect", name]).stdout).unwrap()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

fn alive(pid: i32) -> bool {
    crx_runtime::record::pid_alive(pid as u32)
}

/// The parent of `pid` (field 4 of its stat line), while it exists.
fn ppid(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.get(stat.rfind(')')? + 2..)?;
    after.split_whitespace().nth(1)?.parse().ok()
}

fn sigkill(pid: i32) {
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
}

/// Waits until none of `pids` runs, reaping those that are our (adopted) children.
fn wait_dead(pids: &[i32]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for p in pids {
            let _ = nix::sys::wait::waitpid(
                Pid::from_raw(*p),
                Some(nix::sys::wait::WaitPidFlag::WNOHANG),
            );
        }
        if !pids.iter().any(|p| alive(*p)) {
            return;
        }
        assert!(Instant::now() < deadline, "still alive: {pids:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The monitors that are our children (adopted: their starter exited).
fn monitors() -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut v = Vec::new();
    for e in fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let is_monitor = String::from_utf8_lossy(&cmdline).contains("__crx-monitor");
        if is_monitor && ppid(pid) == Some(me) {
            v.push(pid);
        }
    }
    v
}

/// `crx gc` removed every instance: no home left.
fn assert_all_collected(lab: &Lab, root: &Path) {
    let out = lab.crx(&["gc"]);
    assert_eq!(code(&out), 0, "gc: {}", text(&out.stderr));
    let left = fs::read_dir(root.join("instances"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.path().is_dir())
                .count()
        })
        .unwrap_or(0);
    assert_eq!(
        left,
        0,
        "homes left: {}",
        text(&lab.crx(&["ps", "-a"]).stdout)
    );
}

/// crx: the monitor of a detached run SIGKILLed: its VMM (its child) dies with it, `ps`
/// says dead, `gc` removes the home.
#[test]
fn lab_kill9_crx_monitor() {
    let lab = Lab::new();
    lab.load_busybox();
    let out = lab.crx(&["run", "-d", "--name", "m1", "busybox", "sleep", "600"]);
    assert_eq!(code(&out), 0, "run -d: {}", text(&out.stderr));
    lab.wait_ps("m1", "running");
    let vmm = lab.inspect("m1")["state"]["vmm_pid"].as_i64().unwrap() as i32;
    let monitor = ppid(vmm).unwrap();
    assert!(monitor > 1, "the VMM's parent is its monitor");
    sigkill(monitor);
    wait_dead(&[monitor, vmm]);
    lab.wait_ps("m1", "dead");
    assert_all_collected(&lab, &lab.root());
}

/// crx: `crx run -d` SIGKILLed while its monitor boots: the monitor finishes by itself (an
/// instance that runs, as `ps` says), and `rm -f` removes it with its processes.
#[test]
fn lab_kill9_crx_cli_during_boot() {
    let lab = Lab::new();
    lab.load_busybox();
    let mut cli = Command::new(env!("CARGO_BIN_EXE_crx"))
        .arg("--root")
        .arg(lab.root())
        .args(["run", "-d", "--name", "c1", "busybox", "sleep", "600"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    cli.kill().unwrap();
    cli.wait().unwrap();
    // Its monitor, if it was started, is ours now: it boots the instance all the same.
    if let Some(monitor) = monitors().first().copied() {
        let deadline = Instant::now() + Duration::from_secs(120);
        while alive(monitor) && !text(&lab.crx(&["ps"]).stdout).contains("c1") {
            assert!(Instant::now() < deadline, "the monitor never started c1");
            std::thread::sleep(Duration::from_millis(200));
        }
        if alive(monitor) {
            lab.wait_ps("c1", "running");
            let vmm = lab.inspect("c1")["state"]["vmm_pid"].as_i64().unwrap() as i32;
            let out = lab.crx(&["rm", "-f", "c1"]);
            assert_eq!(code(&out), 0, "rm -f: {}", text(&out.stderr));
            wait_dead(&[vmm, monitor]);
        }
        wait_dead(&[monitor]);
    }
    assert_all_collected(&lab, &lab.root());
}

/// crx-runc: crx-vmm SIGKILLed under a running container: the monitor sees its VM gone,
/// records the container stopped and exits; `state` and `list` say stopped; `delete` (no
/// --force needed) removes everything.
#[test]
fn lab_kill9_runc_vmm() {
    let lab = Lab::new();
    let b = lab.bundle(&["sleep", "600"]);
    // Its output to a file: the monitor keeps create's stdout and stderr (pipes would not
    // reach end-of-file while the container runs).
    let out = lab.dir.path().join("k1.out");
    let created = Command::new(env!("CARGO_BIN_EXE_crx-runc"))
        .arg("--root")
        .arg(lab.root())
        .args(["create", "--bundle", b.to_str().unwrap(), "k1"])
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out).unwrap())
        .stderr(fs::File::create(&out).unwrap())
        .status()
        .unwrap();
    assert!(
        created.success(),
        "create: {}",
        fs::read_to_string(&out).unwrap()
    );
    assert_eq!(code(&lab.runc(&["start", "k1"])), 0);
    let rec: Value =
        serde_json::from_slice(&fs::read(lab.root().join("k1/state.json")).unwrap()).unwrap();
    let (monitor, vmm) = (
        rec["monitor_pid"].as_i64().unwrap() as i32,
        rec["vmm_pid"].as_i64().unwrap() as i32,
    );
    sigkill(vmm);
    wait_dead(&[vmm, monitor]);
    let state: Value = serde_json::from_slice(&lab.runc(&["state", "k1"]).stdout).unwrap();
    assert_eq!(state["status"], "stopped", "{state}");
    assert_eq!(state["pid"], 0, "{state}");
    let list = text(&lab.runc(&["list"]).stdout);
    assert!(
        list.lines()
            .any(|l| l.starts_with("k1") && l.contains("stopped")),
        "{list}"
    );
    let out = lab.runc(&["delete", "k1"]);
    assert_eq!(code(&out), 0, "delete: {}", text(&out.stderr));
    assert!(!lab.root().join("k1").exists());
}
