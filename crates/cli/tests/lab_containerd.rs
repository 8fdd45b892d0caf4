//! containerd (Debian's package) running containers through its runc v2 shim with an OCI
//! runtime binary given by `ctr run --runc-binary`: the same scenario with `runc` (the
//! baseline, which proves the harness) and with `crx-runc` (every container in a microVM).
//! Inside the nested lab (tier 3): `cargo xtask lab -- target/debug/deps/lab_containerd-HASH lab_`.
//!
//! One containerd for the whole binary, on its own socket and directories; the image is the
//! offline busybox image as an OCI archive (`ctr image import`), no registry needed.

mod tools;

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use tools::{assert_ran_where_expected, busybox_archive, runtimes, text};

const IMAGE: &str = "docker.io/library/busybox:latest";

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

/// The shared containerd (started on first use, busybox imported) and the one-test lock.
fn containerd() -> (&'static Containerd, MutexGuard<'static, ()>) {
    let guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let c = CONTAINERD.get_or_init(start_containerd);
    (c, guard)
}

fn start_containerd() -> Containerd {
    // Under /var (the lab's ext4 root): overlayfs snapshots need a filesystem that has them.
    let dir = tempfile::Builder::new()
        .prefix("crx-containerd-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let address = dir.path().join("containerd.sock");
    let log = std::fs::File::create(dir.path().join("containerd.log")).unwrap();
    let child = Command::new("containerd")
        .arg("--root")
        .arg(dir.path().join("root"))
        .arg("--state")
        .arg(dir.path().join("state"))
        .arg("--address")
        .arg(&address)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("containerd (Debian package containerd) must be installed in the lab");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !address.exists() {
        assert!(
            Instant::now() < deadline,
            "containerd did not listen within 60 s: {}",
            std::fs::read_to_string(dir.path().join("containerd.log")).unwrap_or_default()
        );
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
    let archive = busybox_archive(t.path(), IMAGE);
    let out = ctr(
        c,
        &["image", "import", "--no-unpack"],
        &[archive.to_str().unwrap()],
    );
    assert!(out.status.success(), "import: {}", text(&out.stderr));
    let out = ctr(c, &["image", "ls", "-q"], &[]);
    assert!(text(&out.stdout).contains(IMAGE), "{}", text(&out.stdout));
}

fn ctr(c: &Containerd, args: &[&str], more: &[&str]) -> Output {
    Command::new("ctr")
        .arg("--address")
        .arg(&c.address)
        .args(args)
        .args(more)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `ctr run --rm --runc-binary BIN IMAGE ID CMD...`
fn ctr_run(c: &Containerd, bin: &str, id: &str, cmd: &[&str]) -> Output {
    let mut args = vec!["run", "--rm", "--runc-binary", bin, IMAGE, id];
    args.extend_from_slice(cmd);
    ctr(c, &args, &[])
}

#[test]
fn lab_containerd_ctr_run_output_and_exit_code() {
    let (c, _g) = containerd();
    for (name, bin) in runtimes() {
        let out = ctr_run(
            c,
            &bin,
            &format!("run-{name}"),
            &["sh", "-c", "echo hello from $0; cat /proc/cmdline; exit 3"],
        );
        assert_eq!(out.status.code(), Some(3), "{name}: {}", text(&out.stderr));
        assert!(
            text(&out.stdout).contains("hello from sh"),
            "{name}: {}",
            text(&out.stdout)
        );
        assert_ran_where_expected(name, &text(&out.stdout));
    }
}

#[test]
fn lab_containerd_task_exec_and_kill() {
    let (c, _g) = containerd();
    for (name, bin) in runtimes() {
        let id = format!("bg-{name}");
        let mut run = Command::new("ctr")
            .arg("--address")
            .arg(&c.address)
            .args([
                "run",
                "--rm",
                "--runc-binary",
                &bin,
                IMAGE,
                &id,
                "sleep",
                "600",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let ls = ctr(c, &["task", "ls"], &[]);
            let listing = text(&ls.stdout);
            if listing
                .lines()
                .any(|l| l.starts_with(&id) && l.contains("RUNNING"))
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: task never ran: {listing}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let exec = ctr(
            c,
            &["task", "exec", "--exec-id", "e1", &id],
            &["sh", "-c", "echo in-$0; exit 5"],
        );
        assert_eq!(
            exec.status.code(),
            Some(5),
            "{name}: {}",
            text(&exec.stderr)
        );
        assert!(
            text(&exec.stdout).contains("in-sh"),
            "{name}: {}",
            text(&exec.stdout)
        );

        let kill = ctr(c, &["task", "kill", "--signal", "SIGKILL", &id], &[]);
        assert!(kill.status.success(), "{name}: {}", text(&kill.stderr));
        let status = run.wait().unwrap();
        assert_eq!(
            status.code(),
            Some(137),
            "{name}: ctr run after SIGKILL: {status}"
        );
        let ls = ctr(c, &["container", "ls", "-q"], &[]);
        assert!(
            !text(&ls.stdout).contains(&id),
            "{name}: container left behind"
        );
    }
}
