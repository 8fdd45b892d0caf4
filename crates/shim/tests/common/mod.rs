//! The containerd harness of the shim's lab tests (the pattern of `lab_shim_ctr.rs`): one
//! containerd (Debian's 1.6, `crx_testkit::containerd`) per test binary with busybox imported,
//! task states from `ctr task ls`, and what a pod leaves on the host, counted.
//!
//! The install step is the README's: containerd finds `containerd-shim-crx-v2` on its PATH,
//! here `target/debug` prepended (crx-vmm and crx-jailer are found beside the shim).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

pub use crx_testkit::containerd::Containerd;
use crx_testkit::text;

pub const IMAGE: &str = "docker.io/library/busybox:latest";
pub const RUNTIME: &str = "io.containerd.crx.v2";
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// The namespace `ctr` works in.
pub const NAMESPACE: &str = "default";
/// The shim's state root (`containerd-shim-crx-v2`'s `STATE_ROOT`).
pub const STATE_ROOT: &str = "/run/crx-shim";

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
    let c = Containerd::start("crx-shim-containerd-", Some(&shim_dir()));
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
    let out = c.ctr(&["image", "import", archive.to_str().unwrap()]);
    assert!(out.status.success(), "import: {}", text(&out.stderr));
}

/// The shim socket of pod `pod` (containerd's name for it: `/run/containerd/s/HASH`).
fn shim_socket(c: &Containerd, pod: &str) -> PathBuf {
    use sha2::Digest;
    let key = format!("{}/{NAMESPACE}/{pod}", c.address.display());
    let hash: String = sha2::Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    PathBuf::from("/run/containerd/s").join(hash)
}

/// The tasks `ctr task ls` lists: id -> status (`RUNNING`, `STOPPED`...); its error when
/// the listing fails (a task whose shim just died may fail it for a moment).
pub fn tasks(c: &Containerd) -> Result<Vec<(String, String)>, String> {
    let out = c.ctr(&["task", "ls"]);
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
    let out = c.ctr(&all);
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
            |m: &str| m.starts_with(STATE_ROOT) || m.starts_with(&*c.dir().to_string_lossy());
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
                .map(|p| shim_socket(c, p))
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
