//! What the CLI's lab tests share (`lab_oci`, `lab_oci_terminal`, `lab_kill9`): a lab
//! ([`crx_testkit::Lab`]: a state root, one VM at a time, a child subreaper) driving `crx` and
//! `crx-runc`, and waits on the processes they leave.
#![allow(dead_code)] // each test binary uses its part

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crx_testkit::{busybox, code, text};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use serde_json::Value;

pub const CRX: &str = env!("CARGO_BIN_EXE_crx");
pub const RUNC: &str = env!("CARGO_BIN_EXE_crx-runc");

/// The lab of one test.
pub struct Lab(crx_testkit::Lab);

impl std::ops::Deref for Lab {
    type Target = crx_testkit::Lab;
    fn deref(&self) -> &crx_testkit::Lab {
        &self.0
    }
}

impl Lab {
    pub fn new() -> Lab {
        Lab(crx_testkit::Lab::new())
    }
    /// A busybox bundle `name` running `args`, `patch` merged into its config
    /// ([`busybox::bundle`]).
    pub fn bundle(&self, name: &str, args: &[&str], patch: Value) -> PathBuf {
        busybox::bundle(&self.dir.path().join(name), args, patch)
    }
    pub fn crx(&self, args: &[&str]) -> Output {
        self.run(CRX, args)
    }
    pub fn runc(&self, args: &[&str]) -> Output {
        self.run(RUNC, args)
    }
    /// `create` with stdout and stderr to `out` (the monitor keeps them open while the
    /// container runs: pipes would not reach end-of-file).
    pub fn create(&self, bundle: &Path, id: &str, out: &Path) -> std::process::ExitStatus {
        runc_cmd(
            &self.root(),
            &["create", "--bundle", bundle.to_str().unwrap(), id],
        )
        .stdin(Stdio::null())
        .stdout(fs::File::create(out).unwrap())
        .stderr(Stdio::inherit())
        .status()
        .unwrap()
    }
    /// `crx-runc state ID`, which must succeed.
    pub fn state(&self, id: &str) -> Value {
        let out = self.runc(&["state", id]);
        assert_eq!(code(&out), 0, "state: {}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }
    /// The offline busybox image in our root.
    pub fn load_busybox(&self) {
        let out = self.crx(&["load", "--busybox"]);
        assert_eq!(code(&out), 0, "load: {}", text(&out.stderr));
    }
    /// `crx ps -a`'s line for `name` once it contains `want`.
    pub fn wait_ps(&self, name: &str, want: &str) {
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
    /// `crx inspect NAME`.
    pub fn inspect(&self, name: &str) -> Value {
        serde_json::from_slice(&self.crx(&["inspect", name]).stdout).unwrap()
    }
}

/// `crx-runc --root ROOT args`.
pub fn runc_cmd(root: &Path, args: &[&str]) -> Command {
    crx_testkit::command(RUNC, root, args)
}

pub fn alive(pid: i32) -> bool {
    crx_runtime::record::pid_alive(pid as u32)
}

pub fn sigkill(pid: i32) {
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
}

/// Waits for our (adopted) child `pid` to exit.
pub fn wait_child(pid: i32) -> WaitStatus {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(s) => return s,
            Err(e) => panic!("waitpid {pid}: {e}"),
        }
        assert!(Instant::now() < deadline, "{pid} did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until none of `pids` runs, reaping those that are our (adopted) children.
pub fn wait_dead(pids: &[i32]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for p in pids {
            let _ = waitpid(Pid::from_raw(*p), Some(WaitPidFlag::WNOHANG));
        }
        if !pids.iter().any(|p| alive(*p)) {
            return;
        }
        assert!(Instant::now() < deadline, "still alive: {pids:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The recorded pids of container `id` (monitor, VMM, the rootfs's virtiofsd), from its
/// directory.
pub fn pids_of(root: &Path, id: &str) -> Vec<i32> {
    let dir = root.join(id);
    let rec: Value = serde_json::from_slice(&fs::read(dir.join("state.json")).unwrap()).unwrap();
    let mut v: Vec<i32> = ["monitor_pid", "vmm_pid"]
        .iter()
        .filter_map(|k| rec[*k].as_i64().map(|p| p as i32))
        .collect();
    if let Ok(p) = fs::read_to_string(dir.join("root.fs.sock.pid")) {
        v.extend(p.trim().parse::<i32>().ok());
    }
    v
}
