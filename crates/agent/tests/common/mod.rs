//! Host-tier scaffolding shared by the agent's container tests: crx-init as an ordinary root
//! process on a Unix socket, in a private mount namespace with cgroup2 on /sys/fs/cgroup (the
//! helper is cgroup v2 only; a hybrid host has cgroup2 under `unified`) and a tmpfs on /run.
//! Needs root, util-linux `unshare` and busybox-static.
#![allow(dead_code)]

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crx_proto::*;

/// Kills the agent if the test fails before it exits by itself.
pub struct Agent(pub Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn start(sock: &Path) -> Agent {
    let script = format!(
        "mount --make-rprivate / && \
         {{ [ \"$(stat -fc %T /sys/fs/cgroup)\" = cgroup2fs ] || \
           mount -t cgroup2 cgroup2 /sys/fs/cgroup; }} && \
         mount -t tmpfs tmpfs /run && exec {} --agent --listen unix:{}",
        env!("CARGO_BIN_EXE_crx-init"),
        sock.display()
    );
    let child = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn unshare (util-linux) for crx-init");
    let mut agent = Agent(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while UnixStream::connect(sock).is_err() {
        if let Some(st) = agent.0.try_wait().unwrap() {
            panic!("the agent exited before listening: {st} (root and unshare -m needed)");
        }
        assert!(Instant::now() < deadline, "agent did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    agent
}

pub fn connect(sock: &Path) -> UnixStream {
    let s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

pub fn client(sock: &Path) -> Client<UnixStream> {
    Client::handshake(connect(sock)).unwrap()
}

/// The rootfs of a container from directory `root` (a [`busybox_tree`]) under a tmpfs layer.
pub fn tree_rootfs(root: &Path) -> Rootfs {
    Rootfs {
        device: root.display().to_string(),
        fs_type: "none".into(),
        writable: WritableLayer::Tmpfs { size_bytes: None },
    }
}

/// A busybox tree (static `/bin/busybox` and applet links) in `dir/rootfs`.
pub fn busybox_tree(dir: &Path) -> PathBuf {
    assert!(
        Path::new("/bin/busybox").is_file(),
        "/bin/busybox is missing (apt package busybox-static)"
    );
    let root = dir.join("rootfs");
    for d in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for a in [
        "sh", "echo", "cat", "sleep", "tty", "stty", "mkdir", "hostname", "true",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).unwrap();
    }
    root
}

pub fn process(cmd: &str, terminal: bool) -> serde_json::Value {
    serde_json::json!({
        "terminal": terminal,
        "user": {"uid": 0, "gid": 0},
        "args": ["/bin/sh", "-c", cmd],
        "env": ["PATH=/bin", "TERM=xterm"],
        "cwd": "/"
    })
}

pub fn exited(r: Response) -> i32 {
    match r {
        Response::Exited(st) => st.code,
        other => panic!("expected an exit, got {other:?}"),
    }
}

/// Asks the agent to shut down and waits for it to exit cleanly.
pub fn shut_down(mut agent: Agent, mut c: Client<UnixStream>) {
    assert_eq!(c.call(Request::Shutdown).unwrap(), Response::Ok);
    drop(c);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(st) = agent.0.try_wait().unwrap() {
            assert!(st.success(), "agent exit: {st}");
            return;
        }
        assert!(Instant::now() < deadline, "agent did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One test's agent: a [`busybox_tree`] in a temporary directory, crx-init listening on a
/// socket there, a client for calls (`c`) and one for waits (`w`, so a blocking wait holds no
/// call back).
pub struct Fixture {
    pub c: Client<UnixStream>,
    pub w: Client<UnixStream>,
    pub agent: Agent,
    pub sock: PathBuf,
    pub root: PathBuf,
    _dir: tempfile::TempDir,
}

impl Fixture {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("agent.sock");
        let root = busybox_tree(dir.path());
        let agent = start(&sock);
        Fixture {
            c: client(&sock),
            w: client(&sock),
            agent,
            sock,
            root,
            _dir: dir,
        }
    }

    /// Creates container `id` from `spec` on the busybox tree.
    pub fn create(&mut self, id: &str, spec: serde_json::Value) -> Result<Response, ClientError> {
        self.c.call(Request::CreateContainer {
            id: id.into(),
            spec,
            rootfs: tree_rootfs(&self.root),
        })
    }

    /// Creates and starts container `id`.
    pub fn create_start(&mut self, id: &str, spec: serde_json::Value) {
        self.create(id, spec)
            .unwrap_or_else(|e| panic!("create {id}: {e:?}"));
        self.c.call(Request::Start { id: id.into() }).unwrap();
    }

    /// Waits for container `id` (or its exec `exec_id`); its exit code.
    pub fn wait(&mut self, id: &str, exec_id: Option<&str>) -> i32 {
        exited(
            self.w
                .call(Request::Wait {
                    id: id.into(),
                    exec_id: exec_id.map(Into::into),
                })
                .unwrap(),
        )
    }

    /// Creates, starts and waits for container `id`; its exit code.
    pub fn run(&mut self, id: &str, spec: serde_json::Value) -> i32 {
        self.create_start(id, spec);
        self.wait(id, None)
    }

    /// Runs `process` as exec `exec_id` in container `id` and waits for it; its exit code.
    pub fn exec(&mut self, id: &str, exec_id: &str, process: serde_json::Value) -> i32 {
        self.c
            .call(Request::Exec {
                id: id.into(),
                exec_id: exec_id.into(),
                process,
            })
            .unwrap_or_else(|e| panic!("exec {exec_id}: {e:?}"));
        self.wait(id, Some(exec_id))
    }

    /// Removes container `id`, killing it if it runs.
    pub fn remove(&mut self, id: &str) {
        self.c
            .call(Request::Remove {
                id: id.into(),
                force: true,
            })
            .unwrap();
    }

    /// Closes the wait client and shuts the agent down ([`shut_down`]).
    pub fn shut_down(self) {
        drop(self.w);
        shut_down(self.agent, self.c);
    }
}
