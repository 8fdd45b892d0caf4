//! The containerd harness of the shim's lab tests (the pattern of `lab_shim_ctr.rs`): one
//! containerd (Debian's 1.6) per test binary with busybox imported, `ctr` bounded by a
//! timeout, task states from `ctr task ls`, and what a pod leaves on the host, counted.
//!
//! The install step is the README's: containerd finds `containerd-shim-crx-v2` on its PATH,
//! here `target/debug` prepended (crx-vmm and crx-jailer are found beside the shim).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crx_testkit::text;

pub const IMAGE: &str = "docker.io/library/busybox:latest";
pub const RUNTIME: &str = "io.containerd.crx.v2";
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// The namespace `ctr` works in.
pub const NAMESPACE: &str = "default";
/// The shim's state root (`containerd-shim-crx-v2`'s `STATE_ROOT`).
pub const STATE_ROOT: &str = "/run/crx-shim";

pub struct Containerd {
    pub address: PathBuf,
    child: Mutex<Child>,
    dir: tempfile::TempDir,
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

/// The binary's containerd (started by the first caller), held by one test at a time.
pub fn containerd() -> (&'static Containerd, MutexGuard<'static, ()>) {
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
        dir,
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

/// `ctr` bounded by `timeout` (a hung shim fails the test instead of hanging it), to spawn.
pub fn ctr_cmd(c: &Containerd, args: &[&str]) -> Command {
    let mut cmd = Command::new("timeout");
    cmd.args(["-k", "5", "240", "ctr"]);
    cmd.arg("--address").arg(&c.address).args(args);
    cmd.stdin(Stdio::null());
    cmd
}

/// `ctr` bounded by `timeout`, run to its end.
pub fn ctr(c: &Containerd, args: &[&str]) -> Output {
    ctr_cmd(c, args).output().unwrap()
}

impl Containerd {
    /// containerd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// The shim socket of pod `pod` (containerd's name for it: `/run/containerd/s/HASH`).
    pub fn shim_socket(&self, pod: &str) -> PathBuf {
        use sha2::Digest;
        let key = format!("{}/{NAMESPACE}/{pod}", self.address.display());
        let hash: String = sha2::Sha256::digest(key.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        PathBuf::from("/run/containerd/s").join(hash)
    }
}

/// The tasks `ctr task ls` lists: id -> status (`RUNNING`, `STOPPED`...); its error when
/// the listing fails (a task whose shim just died may fail it for a moment).
pub fn tasks(c: &Containerd) -> Result<Vec<(String, String)>, String> {
    let out = ctr(c, &["task", "ls"]);
    if !out.status.success() {
        return Err(text(&out.stderr));
    }
    Ok(text(&out.stdout)
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((f.first()?.to_string(), f.last()?.to_string()))
        })
        .collect())
}

/// Polls `ctr task ls` until `done(tasks)` holds, for at most `limit`; how long it took.
pub fn wait_tasks(
    c: &Containerd,
    what: &str,
    limit: Duration,
    done: impl Fn(&[(String, String)]) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        let t = tasks(c);
        if t.as_deref().is_ok_and(&done) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{what}: not within {limit:?}; tasks {t:?}\n{}",
            c.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Polls containerd's log until `done(log)` holds, for at most `limit`.
pub fn wait_log(c: &Containerd, what: &str, limit: Duration, done: impl Fn(&str) -> bool) {
    let start = Instant::now();
    loop {
        let log = c.log();
        if done(&log) {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "{what}: not within {limit:?}\n{log}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The status `ctr task ls` gives task `id` (None when not listed).
pub fn status_of<'a>(tasks: &'a [(String, String)], id: &str) -> Option<&'a str> {
    tasks.iter().find(|(t, _)| t == id).map(|(_, s)| s.as_str())
}

/// `ctr run -d` of busybox `args` as container `id` of pod `pod` (`kind`: `sandbox` or
/// `container`); it returns once the task started.
pub fn run_detached(c: &Containerd, pod: &str, kind: &str, id: &str, args: &[&str]) {
    let sandbox = format!("{SANDBOX_ID}={pod}");
    let kind = format!("{CONTAINER_TYPE}={kind}");
    let mut all = vec![
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--annotation",
        &sandbox,
        "--annotation",
        &kind,
        IMAGE,
        id,
    ];
    all.extend_from_slice(args);
    let out = ctr(c, &all);
    assert!(
        out.status.success(),
        "ctr run -d {id}: {}\n{}",
        text(&out.stderr),
        c.log()
    );
}

/// Live processes (zombies are not: they hold nothing) whose command name is one of `names`.
pub fn pids_of(names: &[&str]) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat
                .rsplit_once(") ")
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .unwrap_or("X");
            names.contains(&comm.trim()) && !matches!(state, "Z" | "X")
        })
        .collect()
}

/// What pods leave on the host.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Left {
    /// crx-vmm and crx-jailer processes.
    pub vmms: usize,
    pub virtiofsds: usize,
    /// Shim processes (`containerd-shim-crx-v2`'s command name is cut to 15 bytes).
    pub shims: usize,
    /// Mount points under the shim's state root or containerd's directories (a bundle's
    /// rootfs).
    pub mounts: Vec<String>,
    /// Pod directories under the shim's state root.
    pub pods: usize,
    /// Shim sockets of the pods named.
    pub sockets: Vec<PathBuf>,
}

impl Left {
    pub fn now(c: &Containerd, pods: &[&str]) -> Left {
        let ours =
            |m: &str| m.starts_with(STATE_ROOT) || m.starts_with(&*c.dir.path().to_string_lossy());
        let mounts = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| ours(m))
            .map(str::to_owned)
            .collect();
        Left {
            vmms: pids_of(&["crx-vmm", "crx-jailer"]).len(),
            virtiofsds: pids_of(&["virtiofsd"]).len(),
            shims: pids_of(&["containerd-shim"]).len(),
            mounts,
            pods: std::fs::read_dir(STATE_ROOT).map_or(0, |d| d.count()),
            sockets: pods
                .iter()
                .map(|p| c.shim_socket(p))
                .filter(|s| s.exists())
                .collect(),
        }
    }
}

/// Waits until nothing of the pods `pods` is left (a shim exits a moment after `ctr`'s last
/// request); fails with what is left after 30 s.
pub fn assert_nothing_left(c: &Containerd, pods: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = Left::now(c, pods);
        if left == Left::default() {
            return;
        }
        assert!(Instant::now() < deadline, "left: {left:?}\n{}", c.log());
        std::thread::sleep(Duration::from_millis(200));
    }
}
