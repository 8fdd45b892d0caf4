//! SIGKILL at lifecycle steps, for both front-ends: whatever dies (the CLI, the monitor,
//! crx-vmm), the state left is reported truthfully (`crx ps`, `crx-runc state`/`list`) and
//! `gc` / `delete` clean it completely (no directory, no process). Real microVMs: they run
//! inside the nested lab (tier 3), one VM at a time. The test process is a child subreaper
//! (as conmon and containerd's shim are): monitors whose starter exited become our children.

mod cli_lab;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cli_lab::{alive, pids_of, runc_cmd, sigkill, wait_child, wait_dead, Lab};
use crx_testkit::{code, text};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use serde_json::{json, Value};

/// A busybox bundle running `args`: /proc alone mounted, fresh pid, uts (its hostname),
/// mount and network namespaces.
fn kill9_bundle(lab: &Lab, args: &[&str]) -> PathBuf {
    let only = json!({
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "uts"}, {"type": "mount"},
            {"type": "network"}]}
    });
    lab.bundle("bundle", args, only)
}

/// The parent of `pid` (field 4 of its stat line), while it exists.
fn ppid(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.get(stat.rfind(')')? + 2..)?;
    after.split_whitespace().nth(1)?.parse().ok()
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
    let b = kill9_bundle(&lab, &["sleep", "600"]);
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

/// `create` SIGKILLed during the boot, and a monitor SIGKILLed while its container runs: the
/// state stays readable and consistent, `delete` cleans, and no process is left (monitor, VMM,
/// virtiofsd).
#[test]
fn lab_kill9_runc_create_and_monitor() {
    let lab = Lab::new();
    let root = lab.root();
    let b = lab.bundle("b6", &["sleep", "1000"], json!({}));
    let mut create = runc_cmd(&root, &["create", "--bundle", b.to_str().unwrap(), "x1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(400));
    create.kill().unwrap();
    create.wait().unwrap();
    // Killed before its directory was made: no container; else its state reads consistently.
    let out = lab.runc(&["state", "x1"]);
    if code(&out) == 1 {
        assert!(
            text(&out.stderr).contains("does not exist"),
            "{}",
            text(&out.stderr)
        );
    } else {
        let s: Value = serde_json::from_slice(&out.stdout).unwrap();
        let status = s["status"].as_str().unwrap().to_owned();
        assert!(
            ["creating", "created", "stopped"].contains(&status.as_str()),
            "{s}"
        );
    }
    // The monitor, if it was started, finishes the create by itself.
    let deadline = Instant::now() + Duration::from_secs(120);
    while code(&out) == 0 && lab.state("x1")["status"] == "creating" {
        assert!(Instant::now() < deadline, "stuck creating");
        std::thread::sleep(Duration::from_millis(200));
    }
    let pids = if root.join("x1/state.json").exists() {
        pids_of(&root, "x1")
    } else {
        Vec::new()
    };
    let d = lab.runc(&["delete", "--force", "x1"]);
    assert_eq!(code(&d), 0, "delete: {}", text(&d.stderr));
    assert!(!root.join("x1").exists());
    wait_dead(&pids);

    assert!(lab
        .create(&b, "x2", &lab.dir.path().join("x2.out"))
        .success());
    assert_eq!(code(&lab.runc(&["start", "x2"])), 0);
    let pids = pids_of(&root, "x2");
    assert_eq!(pids.len(), 3, "monitor, VMM, virtiofsd: {pids:?}");
    let monitor = pids[0];
    sigkill(monitor);
    assert_eq!(
        wait_child(monitor),
        WaitStatus::Signaled(
            Pid::from_raw(monitor),
            nix::sys::signal::Signal::SIGKILL,
            false
        )
    );
    wait_dead(&pids); // the VMM dies with its parent, virtiofsd with its VMM
    assert_eq!(lab.state("x2")["status"], "stopped");
    assert_eq!(code(&lab.runc(&["delete", "x2"])), 0);
    assert!(!root.join("x2").exists());
}
