//! Shared by `tests/lab_agent.rs` and `examples/agent_bench.rs`: boots crx-init under crx-vmm
//! (inside the nested lab, `cargo xtask lab`) and talks to it through the hybrid vsock socket.
//!
//! Everything here panics with a message saying what is missing: lab tests never skip.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crx_initrd::{parse_spec, WriteOptions};
use crx_proto::{
    read_message, write_message, Client, Response, ResponseFrame, StreamHeader, StreamKind,
    AGENT_VSOCK_PORT, PROTOCOL_VERSION,
};

/// Where `cargo xtask boot` publishes the guest kernel and the base initrd.
pub const BOOT_DIR: &str = "/var/cache/crx/boot";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The boot files, checked: a missing one (or a missing /dev/kvm) is a failure, never a skip.
pub fn boot_files() -> (PathBuf, PathBuf) {
    let dir = std::env::var_os("CRX_BOOT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(BOOT_DIR));
    let kernel = dir.join("vmlinux");
    let base = dir.join("base.cpio");
    for f in [&kernel, &base] {
        assert!(
            f.is_file(),
            "{} is missing: run `cargo xtask boot` first (lab tests need the guest kernel and base initrd)",
            f.display()
        );
    }
    assert!(
        Path::new("/dev/kvm").exists(),
        "/dev/kvm is missing: run lab tests inside the nested lab (`target/debug/xtask lab -- TEST-BINARY lab_`)"
    );
    (kernel, base)
}

/// The crx-vmm binary: `$CRX_VMM`, else `target/debug/crx-vmm` (`cargo build -p crx-vmm`).
pub fn vmm_binary() -> PathBuf {
    let p = std::env::var_os("CRX_VMM")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/debug/crx-vmm"));
    assert!(
        p.is_file(),
        "{} is missing: `cargo build -p crx-vmm` (or set CRX_VMM)",
        p.display()
    );
    p
}

/// The busybox debug layer (`crates/initrd/layers/debug.spec`, BUSYBOX=/bin/busybox) in `dir`.
pub fn debug_layer(dir: &Path) -> PathBuf {
    assert!(
        Path::new("/bin/busybox").is_file(),
        "/bin/busybox is missing (apt package busybox-static)"
    );
    let layers = workspace().join("crates/initrd/layers");
    let text = std::fs::read_to_string(layers.join("debug.spec")).unwrap();
    let defs = BTreeMap::from([("BUSYBOX".to_string(), "/bin/busybox".to_string())]);
    let a = parse_spec(&text, &layers, &defs).unwrap();
    let out = dir.join("debug.cpio");
    std::fs::write(&out, a.to_bytes(WriteOptions::default()).unwrap()).unwrap();
    out
}

/// A busybox tree (`/bin/busybox` plus applet links) in `dir/rootfs`.
pub fn busybox_tree(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    for d in ["proc", "dev", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for a in ["sh", "echo", "cat", "sleep", "hostname", "touch"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).unwrap();
    }
    root
}

/// An ext4 image of `tree` (mke2fs -d, e2fsprogs).
pub fn ext4_image(tree: &Path, out: &Path) {
    let st = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-d"])
        .arg(tree)
        .arg(out)
        .arg("16M")
        .status()
        .expect("mke2fs (apt package e2fsprogs)");
    assert!(st.success(), "mke2fs failed");
}

/// A running crx-vmm; killed when dropped (so a failing test leaves no VM behind).
pub struct Vm {
    pub child: Child,
    pub spawned: Instant,
    pub console: PathBuf,
    pub stderr: PathBuf,
    pub uds: PathBuf,
}

/// What a VM needs beyond the kernel and base initrd.
#[derive(Default)]
pub struct VmOpts {
    pub initrds: Vec<PathBuf>,
    pub init_args: Option<String>,
    pub disks: Vec<String>,
    pub vsock: bool,
    /// `--net` flags (`tap=NAME,mac=..`).
    pub net: Vec<String>,
}

impl Vm {
    pub fn spawn(dir: &Path, opts: VmOpts) -> Vm {
        let (kernel, base) = boot_files();
        let console = dir.join("console.log");
        let stderr = dir.join("vmm.stderr");
        let uds = dir.join("v.sock");
        let mut cmd = Command::new(vmm_binary());
        cmd.args(["--memory-mib", "256", "--vcpus", "1", "--boot-timer"])
            .arg("--kernel")
            .arg(&kernel)
            .arg("--initrd")
            .arg(&base);
        for i in &opts.initrds {
            cmd.arg("--initrd").arg(i);
        }
        if let Some(a) = &opts.init_args {
            cmd.arg("--init-args").arg(a);
        }
        for n in &opts.net {
            cmd.arg("--net").arg(n);
        }
        for d in &opts.disks {
            cmd.arg("--disk").arg(d);
        }
        if opts.vsock {
            cmd.args(["--vsock-cid", "3", "--vsock-uds"]).arg(&uds);
        }
        cmd.arg("--serial")
            .arg(format!("file:{}", console.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap());
        let spawned = Instant::now();
        let child = cmd.spawn().expect("spawning crx-vmm");
        Vm {
            child,
            spawned,
            console,
            stderr,
            uds,
        }
    }

    pub fn console_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.console).unwrap_or_default()).into_owned()
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Console and VMM stderr, for failure messages.
    pub fn logs(&self) -> String {
        format!(
            "--- console ---\n{}\n--- crx-vmm stderr ---\n{}",
            self.console_text(),
            self.stderr_text()
        )
    }

    /// Waits for the VMM to exit; kills it and panics after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let end = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > end {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "crx-vmm still running after {timeout:?} (killed)\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The `t=` (microseconds since the VMM's main) of boot-timer mark `code`, if printed.
    pub fn boot_mark(&self, code: u8) -> Option<u64> {
        let prefix = format!("boot-timer: code={code} t=");
        self.stderr_text()
            .lines()
            .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
    }

    /// Opens guest port 1024, retrying until the agent listens (or `timeout`).
    pub fn connect(&mut self, timeout: Duration) -> UnixStream {
        let end = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                panic!(
                    "crx-vmm exited ({st}) before the agent answered\n{}",
                    self.logs()
                );
            }
            match connect_port(&self.uds, AGENT_VSOCK_PORT) {
                Ok(s) => return s,
                Err(e) if Instant::now() > end => {
                    panic!(
                        "agent not reachable after {timeout:?}: {e}\n{}",
                        self.logs()
                    )
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    /// A control connection with the handshake done.
    pub fn client(&mut self, timeout: Duration) -> Client<UnixStream> {
        let s = self.connect(timeout);
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        Client::handshake(s).expect("Hello")
    }

    /// A stdio stream connection for container `id` (exec `exec_id`), accepted by the agent.
    pub fn stream(&mut self, id: &str, exec_id: Option<&str>, kind: StreamKind) -> UnixStream {
        let mut s = self.connect(Duration::from_secs(5));
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        write_message(
            &mut s,
            &StreamHeader {
                version: PROTOCOL_VERSION,
                id: id.into(),
                exec_id: exec_id.map(Into::into),
                stream: kind,
            },
        )
        .unwrap();
        let r: ResponseFrame = read_message(&mut s).unwrap().expect("stream answer");
        assert_eq!(r.response, Response::Ok, "stream {id}/{exec_id:?} {kind:?}");
        s
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Connects to the hybrid vsock socket: `CONNECT <port>\n`, then `OK <n>\n`.
pub fn connect_port(uds: &Path, port: u32) -> std::io::Result<UnixStream> {
    let mut s = UnixStream::connect(uds)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    // One byte at a time: what follows the line is the guest's.
    while line.len() < 64 {
        match s.read(&mut b)? {
            0 => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    "closed during CONNECT",
                ))
            }
            _ if b[0] == b'\n' => break,
            _ => line.push(b[0]),
        }
    }
    if !line.starts_with(b"OK ") {
        return Err(std::io::Error::other(format!(
            "CONNECT answered {:?}",
            String::from_utf8_lossy(&line)
        )));
    }
    Ok(s)
}

/// Reads from `s` until the text holds `needle` or the stream ends; returns what was read.
pub fn read_until(s: &mut UnixStream, needle: &str) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(needle) {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// A minimal OCI runtime spec for the busybox image, running `sh -c CMD`.
pub fn spec(cmd: &str) -> serde_json::Value {
    serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": ["/bin/sh", "-c", cmd],
            "env": ["PATH=/bin"],
            "cwd": "/"
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": "ctr",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "mode=755", "size=65536k"]}
        ],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]}
    })
}

/// The OCI `process` of an exec: `sh -c CMD`.
pub fn exec_process(cmd: &str) -> serde_json::Value {
    serde_json::json!({
        "terminal": false,
        "user": {"uid": 0, "gid": 0},
        "args": ["/bin/sh", "-c", cmd],
        "env": ["PATH=/bin"],
        "cwd": "/"
    })
}

/// The rootfs of the busybox ext4 image on /dev/vda with a tmpfs writable layer.
pub fn rootfs_vda() -> crx_proto::Rootfs {
    crx_proto::Rootfs {
        device: "/dev/vda".into(),
        fs_type: "ext4".into(),
        writable: crx_proto::WritableLayer::Tmpfs { size_bytes: None },
    }
}
