//! A private containerd for lab tests: its root, state, socket and log under one new directory
//! of `/var/tmp` (overlayfs snapshots need the lab's ext4 root), killed when dropped; `ctr`
//! against it, bounded in time (a hung shim fails the test instead of hanging it).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The longest one `ctr` command may take, in seconds (then `timeout` kills it).
const CTR_LIMIT_S: &str = "240";

/// A running containerd of a test binary's own.
#[derive(Debug)]
pub struct Containerd {
    /// Its socket (`ctr --address`).
    pub address: PathBuf,
    child: Mutex<Child>,
    dir: tempfile::TempDir,
}

impl Containerd {
    /// Starts containerd in a new directory named `prefix...`, with `path_first` ahead of its
    /// `PATH` (the directory of a shim it must find), and waits for its socket (60 s at most).
    pub fn start(prefix: &str, path_first: Option<&Path>) -> Containerd {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in("/var/tmp")
            .expect("a directory in /var/tmp");
        Containerd::start_in(dir, path_first, None)
    }

    /// [`Containerd::start`] in `dir` (made by the caller, who may have put more there),
    /// reading `config` when given, which must place containerd's root, state and socket
    /// where this does: `DIR/root`, `DIR/state`, `DIR/containerd.sock`.
    pub fn start_in(
        dir: tempfile::TempDir,
        path_first: Option<&Path>,
        config: Option<&Path>,
    ) -> Containerd {
        let address = dir.path().join("containerd.sock");
        let log = std::fs::File::create(dir.path().join("containerd.log")).unwrap();
        let mut cmd = Command::new("containerd");
        match config {
            Some(config) => cmd.arg("--config").arg(config),
            None => cmd
                .arg("--root")
                .arg(dir.path().join("root"))
                .arg("--state")
                .arg(dir.path().join("state"))
                .arg("--address")
                .arg(&address),
        };
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some(first) = path_first {
            let path =
                std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into());
            cmd.env("PATH", format!("{}:{path}", first.display()));
        }
        let child = cmd
            .spawn()
            .expect("containerd (Debian package containerd) must be installed in the lab");
        let c = Containerd {
            address,
            child: Mutex::new(child),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !c.address.exists() {
            assert!(
                Instant::now() < deadline,
                "containerd did not listen within 60 s: {}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    /// Its directory (root, state, socket and log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir().join("containerd.log")).unwrap_or_default()
    }

    /// `ctr --address ADDRESS ARGS`, stdin closed, killed past the time limit: to spawn.
    pub fn ctr_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("timeout");
        cmd.args(["-k", "5", CTR_LIMIT_S, "ctr"]);
        cmd.arg("--address").arg(&self.address).args(args);
        cmd.stdin(Stdio::null());
        cmd
    }

    /// [`Containerd::ctr_cmd`], run to its end.
    pub fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_cmd(args).output().expect("running ctr")
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let mut c = self.child.lock().unwrap_or_else(|e| e.into_inner());
        let _ = c.kill();
        let _ = c.wait();
    }
}
