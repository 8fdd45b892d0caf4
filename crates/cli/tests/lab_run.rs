//! End-to-end `crx` runs that boot real microVMs: they need a KVM that boots Linux, so they
//! run inside the nested lab (`cargo xtask test`, tier 3; or
//! `cargo xtask lab -- target/debug/deps/lab_run-HASH lab_`). The boot artefacts are found the
//! way crx finds them (`$CRX_BOOT_DIR`, `$CRX_CACHE/boot`, `/var/cache/crx/boot`); the busybox
//! image is imported from the lab's /bin/busybox (Debian's busybox-static).
//!
//! One VM at a time (a lock): the lab has two slow emulated cores.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

struct Lab {
    root: PathBuf,
    _dir: tempfile::TempDir,
}

static LAB: OnceLock<Lab> = OnceLock::new();
static ONE_VM: Mutex<()> = Mutex::new(());

/// The shared state root with busybox:latest loaded, and the one-VM lock.
fn lab() -> (&'static Path, MutexGuard<'static, ()>) {
    let guard = ONE_VM.lock().unwrap_or_else(|e| e.into_inner());
    let lab = LAB.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let out = crx(&root, &["load", "--busybox"]);
        assert!(
            out.status.success(),
            "load --busybox: {}",
            text(&out.stderr)
        );
        Lab { root, _dir: dir }
    });
    (&lab.root, guard)
}

fn crx(root: &Path, args: &[&str]) -> Output {
    crx_stdin(root, args, b"")
}

fn crx_stdin(root: &Path, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_crx"))
        .arg("--root")
        .arg(root)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

/// Polls `crx ps -a` until the line of `name` contains `want`.
fn wait_status(root: &Path, name: &str, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let ps = text(&crx(root, &["ps", "-a"]).stdout);
        let line = ps
            .lines()
            .find(|l| l.contains(name))
            .unwrap_or("")
            .to_owned();
        if line.contains(want) {
            return line;
        }
        assert!(
            Instant::now() < deadline,
            "{name} never became {want:?}: {ps}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn lab_run_echo() {
    let (root, _g) = lab();
    let out = crx(
        root,
        &["run", "--rm", "busybox:latest", "echo", "hello", "crx"],
    );
    assert_eq!(code(&out), 0, "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello crx\n");
    // Our stdout closed early (`crx run ... | head -c 3`): the rest is drained, the run ends.
    let mut child = Command::new(env!("CARGO_BIN_EXE_crx"))
        .arg("--root")
        .arg(root)
        .args([
            "run",
            "--rm",
            "busybox",
            "sh",
            "-c",
            "yes | head -c 300000; exit 5",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 3];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut first).unwrap();
    drop(child.stdout.take());
    assert_eq!(child.wait().unwrap().code(), Some(5));
}

#[test]
fn lab_run_exit_codes() {
    let (root, _g) = lab();
    // The image's default command (busybox: `sh`, reading end-of-file at once).
    let out = crx(root, &["run", "--rm", "busybox"]);
    assert_eq!(code(&out), 0, "stderr: {}", text(&out.stderr));
    let out = crx(
        root,
        &["run", "--rm", "busybox", "sh", "-c", "echo err >&2; exit 3"],
    );
    assert_eq!(code(&out), 3, "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "err\n");
}

/// 137 when the container's init is SIGKILLed (`crx kill` of a foreground run), and SIGTERM
/// to `crx run` forwarded to the container. (`sh -c 'kill -9 $$'` exits 0, as under Docker:
/// the container's init is PID 1 of its PID namespace, which ignores SIGKILL sent from inside.)
#[test]
fn lab_run_sigkill_137_and_sigterm_forwarded() {
    let (root, _g) = lab();
    for (name, how, want) in [("fg-kill", "kill", 137), ("fg-term", "term", 42)] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_crx"))
            .arg("--root")
            .arg(root)
            .args(["run", "--rm", "--name", name, "busybox", "sh", "-c"])
            .arg("trap 'exit 42' TERM; echo up; while true; do sleep 1; done")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let mut line = [0u8; 3];
        std::io::Read::read_exact(&mut stdout, &mut line).unwrap();
        assert_eq!(&line, b"up\n");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        if how == "kill" {
            let out = crx(root, &["kill", name]);
            assert_eq!(code(&out), 0, "stderr: {}", text(&out.stderr));
        } else {
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        }
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(want), "{name}");
    }
}

#[test]
fn lab_run_env_workdir_user() {
    let (root, _g) = lab();
    let out = crx(
        root,
        &[
            "run",
            "--rm",
            "-e",
            "FOO=bar baz",
            "-w",
            "/tmp",
            "-u",
            "5:6",
            "busybox",
            "sh",
            "-c",
            "echo \"$FOO\"; pwd; id -u; id -g",
        ],
    );
    assert_eq!(code(&out), 0, "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "bar baz\n/tmp\n5\n6\n");
}

#[test]
fn lab_run_stdin() {
    let (root, _g) = lab();
    let out = crx_stdin(
        root,
        &[
            "run",
            "--rm",
            "-i",
            "busybox",
            "sh",
            "-c",
            "read x; echo got $x; cat | wc -l",
        ],
        b"hello\na\nb\n",
    );
    assert_eq!(code(&out), 0, "stderr: {}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).split_whitespace().collect::<Vec<_>>(),
        ["got", "hello", "2"]
    );
}

#[test]
fn lab_run_and_exec_with_a_terminal() {
    let (root, _g) = lab();
    // Our stdin and stdout are pipes here: the terminal is the guest's.
    let out = crx(root, &["run", "-t", "--rm", "busybox", "tty"]);
    assert_eq!(code(&out), 0, "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "/dev/pts/0\r\n");
    // Input through the terminal (echoed by the guest's line discipline); the end of ours is a
    // ^D (cat ends); exit code through.
    let out = crx_stdin(
        root,
        &[
            "run",
            "-i",
            "-t",
            "--rm",
            "busybox",
            "sh",
            "-c",
            "tty; read x; echo got:$x; cat; exit 3",
        ],
        b"hi\nmore\n",
    );
    assert_eq!(code(&out), 3, "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    // (Our input may be echoed before `tty` runs: it is sent at once.)
    assert!(stdout.contains("/dev/pts/0\r\n"), "{stdout:?}");
    assert!(stdout.contains("got:hi\r\n"), "{stdout:?}");
    // Echoed, then written by cat.
    assert_eq!(stdout.matches("more\r\n").count(), 2, "{stdout:?}");
    // `exec -t`: a terminal of its own in a running container.
    let out = crx(
        root,
        &["run", "-d", "--name", "tt", "busybox", "sleep", "600"],
    );
    assert_eq!(code(&out), 0, "stderr: {}", text(&out.stderr));
    wait_status(root, "tt", "running");
    let out = crx(root, &["exec", "-t", "tt", "sh", "-c", "tty; exit 4"]);
    let stdout = text(&out.stdout);
    assert_eq!(code(&out), 4, "stderr: {}", text(&out.stderr));
    assert!(stdout.starts_with("/dev/pts/"), "{stdout:?}");
    let out = crx(root, &["exec", "tt", "tty"]);
    assert_eq!(
        code(&out),
        1,
        "without -t: no terminal: {}",
        text(&out.stdout)
    );
    let out = crx(root, &["rm", "-f", "tt"]);
    assert_eq!(code(&out), 0, "stderr: {}", text(&out.stderr));
}

/// Reads `master` until `needle` has come (panics after 120 s or at end of file).
fn read_pty_until(master: &mut std::fs::File, got: &mut String, needle: &str) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut buf = [0u8; 1024];
    while !got.contains(needle) {
        assert!(Instant::now() < deadline, "no {needle:?} in {got:?}");
        let mut fds = [PollFd::new(master.as_fd(), PollFlags::POLLIN)];
        if poll(&mut fds, PollTimeout::from(1000u16)).unwrap() == 0 {
            continue;
        }
        let n = std::io::Read::read(master, &mut buf).unwrap_or(0);
        assert!(n > 0, "end of file before {needle:?}: {got:?}");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

#[test]
fn lab_run_tty_on_our_terminal_raw_resize_restore() {
    use crx_runtime::tty::{set_window_size, WinSize};
    use nix::sys::termios::{tcgetattr, LocalFlags};
    let (root, _g) = lab();
    // Our terminal: a fresh (cooked) pty pair, crx's stdin and stdout the slave.
    let pty = nix::pty::openpty(None, None).unwrap();
    set_window_size(
        &pty.master,
        WinSize {
            rows: 40,
            cols: 120,
        },
    )
    .unwrap();
    let slave = || Stdio::from(pty.slave.try_clone().unwrap());
    let child = Command::new(env!("CARGO_BIN_EXE_crx"))
        .arg("--root")
        .arg(root)
        .args([
            "run",
            "-i",
            "-t",
            "--rm",
            "busybox",
            "sh",
            "-c",
            "stty size; read x; stty size; echo got:$x; exit 6",
        ])
        .stdin(slave())
        .stdout(slave())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut master = std::fs::File::from(pty.master.try_clone().unwrap());
    let mut got = String::new();
    // The size at start.
    read_pty_until(&mut master, &mut got, "40 120");
    // Ours is raw while the container runs (the guest's terminal echoes and edits).
    let t = tcgetattr(&pty.slave).unwrap();
    assert!(!t
        .local_flags
        .intersects(LocalFlags::ICANON | LocalFlags::ECHO));
    // A resize reaches the guest (looked at 4 times a second), then a line ends the read.
    set_window_size(
        &pty.master,
        WinSize {
            rows: 50,
            cols: 132,
        },
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    std::io::Write::write_all(&mut master, b"ok\r").unwrap();
    read_pty_until(&mut master, &mut got, "got:ok");
    assert!(got.contains("50 132"), "{got:?}");
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), 6, "stderr: {}", text(&out.stderr));
    // Restored.
    let t = tcgetattr(&pty.slave).unwrap();
    assert!(t
        .local_flags
        .contains(LocalFlags::ICANON | LocalFlags::ECHO));
}

#[test]
fn lab_detached_exec_kill_rm() {
    let (root, _g) = lab();
    let out = crx(
        root,
        &[
            "run",
            "-d",
            "--name",
            "bg",
            "-e",
            "WHO=bg",
            "busybox",
            "sh",
            "-c",
            "while true; do sleep 1; done",
        ],
    );
    assert_eq!(code(&out), 0, "stderr: {}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_owned();
    assert_eq!(id.len(), 12, "{id}");
    wait_status(root, "bg", "running");
    let logs = text(&crx(root, &["logs", "bg"]).stdout);
    assert!(logs.contains("crx-init"), "{logs}");
    // A second instance of the same image shares its read-only disk.
    let out = crx(
        root,
        &["run", "-d", "--name", "bg2", "busybox", "sleep", "600"],
    );
    assert_eq!(code(&out), 0, "stderr: {}", text(&out.stderr));
    let a: serde_json::Value =
        serde_json::from_slice(&crx(root, &["inspect", "bg"]).stdout).unwrap();
    let b: serde_json::Value =
        serde_json::from_slice(&crx(root, &["inspect", "bg2"]).stdout).unwrap();
    assert_eq!(a["state"]["manifest_digest"], b["state"]["manifest_digest"]);
    // What confines its VMM (ADR 0011): the jail, seccomp, a cgroup of its own holding it.
    let c = &a["confinement"];
    assert_eq!(c["seccomp"], true, "{c}");
    assert!(c["jail"]["uid"].as_u64().unwrap() >= 0x5000_0000, "{c}");
    let cgroup = Path::new(c["cgroup"]["path"].as_str().expect("a cgroup in the lab"));
    let procs = std::fs::read_to_string(cgroup.join("cgroup.procs")).unwrap();
    // crx-vmm alone: the jailer became it (ADR 0018).
    assert_eq!(procs.lines().count(), 1, "crx-vmm alone: {procs}");
    assert_ne!(a["confinement"]["cgroup"], b["confinement"]["cgroup"]);
    // The measured boot: the digests the boot files were verified against, as `inspect` shows.
    let sums = std::fs::read_to_string(
        Path::new(a["boot"]["kernel"]["path"].as_str().unwrap())
            .with_file_name(crx_runtime::boot_files::MANIFEST),
    )
    .unwrap();
    for (key, name) in [("kernel", "vmlinux"), ("initrd", "base.cpio")] {
        let sha = a["boot"][key]["sha256"].as_str().unwrap();
        assert!(
            sums.contains(&format!("{sha}  {name}\n")),
            "{key} {sha}: {sums}"
        );
    }
    assert_eq!(a["boot"], b["boot"]);
    let out = crx(root, &["exec", "bg2", "hostname"]);
    assert_eq!(code(&out), 0, "stderr: {}", text(&out.stderr));
    let out = crx(root, &["rm", "-f", "bg2"]);
    assert_eq!(code(&out), 0, "stderr: {}", text(&out.stderr));
    assert!(!text(&crx(root, &["ps", "-a"]).stdout).contains("bg2"));
    let out = crx(root, &["exec", "bg", "sh", "-c", "echo in $WHO; exit 4"]);
    assert_eq!(code(&out), 4, "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "in bg\n");
    // SIGTERM to `crx exec` reaches the exec'd process.
    let mut child = Command::new(env!("CARGO_BIN_EXE_crx"))
        .arg("--root")
        .arg(root)
        .args([
            "exec",
            "bg",
            "sh",
            "-c",
            "trap 'exit 9' TERM; echo up; while true; do sleep 1; done",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut up = [0u8; 3];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut up).unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(9));
    let rm = crx(root, &["rm", "bg"]);
    assert_eq!(
        code(&rm),
        125,
        "a running instance is not removed without -f"
    );
    assert!(
        text(&rm.stderr).contains("crx rm -f"),
        "{}",
        text(&rm.stderr)
    );
    let out = crx(root, &["kill", "bg"]);
    assert_eq!(code(&out), 0, "stderr: {}", text(&out.stderr));
    wait_status(root, "bg", "exited (137)");
    let out = crx(root, &["rm", "bg"]);
    assert_eq!(code(&out), 0, "stderr: {}", text(&out.stderr));
    assert!(!text(&crx(root, &["ps", "-a"]).stdout).contains(&id));
    assert!(!root.join("instances").join(&id).exists());
}

#[test]
fn lab_gc_after_vmm_sigkill() {
    let (root, _g) = lab();
    let out = crx(
        root,
        &["run", "-d", "--name", "victim", "busybox", "sleep", "600"],
    );
    assert_eq!(code(&out), 0, "stderr: {}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_owned();
    let inspect: serde_json::Value =
        serde_json::from_slice(&crx(root, &["inspect", "victim"]).stdout).unwrap();
    let pid = inspect["state"]["vmm_pid"].as_i64().unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_status(root, "victim", "dead");
    let out = crx(root, &["gc"]);
    assert_eq!(code(&out), 0, "stderr: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(&format!("removed instance {id}")),
        "{}",
        text(&out.stdout)
    );
    assert!(!root.join("instances").join(&id).exists());
}

/// A foreground `crx run` that is SIGKILLed takes its VMM along (parent-death signal); `gc`
/// then removes the home.
#[test]
fn lab_gc_after_crx_sigkill() {
    let (root, _g) = lab();
    let mut child = Command::new(env!("CARGO_BIN_EXE_crx"))
        .arg("--root")
        .arg(root)
        .args([
            "run",
            "--name",
            "orphan",
            "busybox",
            "sh",
            "-c",
            "echo up; sleep 600",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = [0u8; 3];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut line).unwrap();
    assert_eq!(&line, b"up\n");
    child.kill().unwrap();
    child.wait().unwrap();
    wait_status(root, "orphan", "dead");
    let out = crx(root, &["gc"]);
    assert_eq!(code(&out), 0, "stderr: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("removed instance"),
        "{}",
        text(&out.stdout)
    );
    assert!(!text(&crx(root, &["ps", "-a"]).stdout).contains("orphan"));
}

#[test]
fn lab_unknown_image() {
    let (root, _g) = lab();
    let out = crx(root, &["run", "--rm", "no-such-image:1", "true"]);
    assert_eq!(code(&out), 125);
    let err = text(&out.stderr);
    assert!(
        err.contains("not found") && err.contains("crx images"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        !root.join("instances").exists()
            || std::fs::read_dir(root.join("instances")).unwrap().count() == 0
            || {
                // Other tests' instances may exist; none is for this image.
                !text(&crx(root, &["ps", "-a"]).stdout).contains("no-such-image")
            }
    );
}

/// `crx vm run CONFIG`: a system VM (kernel and base initrd filled in); the exit status is
/// crx-init's report (127: the program does not exist).
#[test]
fn lab_vm_run_exit_status() {
    let (root, _g) = lab();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vm.toml");
    std::fs::write(
        &config,
        "memory_mib = 256\ninit_args = \"crxrun=/no/such/program\"\n",
    )
    .unwrap();
    let out = crx(root, &["vm", "run", config.to_str().unwrap()]);
    assert_eq!(
        code(&out),
        127,
        "stdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(text(&out.stdout).contains("crx-init: exit status 127"));
}

/// `run -d --rm`: the monitor records the exit, stops the VM and removes the home.
#[test]
fn lab_detached_rm_cleans_up() {
    let (root, _g) = lab();
    let out = crx(
        root,
        &["run", "-d", "--rm", "busybox", "sh", "-c", "sleep 1"],
    );
    assert_eq!(code(&out), 0, "stderr: {}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_owned();
    let home = root.join("instances").join(&id);
    let deadline = Instant::now() + Duration::from_secs(120);
    while home.exists() {
        assert!(Instant::now() < deadline, "{} still there", home.display());
        std::thread::sleep(Duration::from_millis(200));
    }
}
