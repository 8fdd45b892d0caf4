//! podman (Debian's package) running containers with `--runtime BIN`: the same scenarios with
//! `runc` (the baseline, which proves the harness) and with `crx-runc` (every container in a
//! microVM). Inside the nested lab (tier 3):
//! `cargo xtask lab -- target/debug/deps/lab_podman-HASH lab_`.
//!
//! podman runs with its own storage root, cgroupfs (the lab has no systemd), file events and
//! no network; the image is the offline busybox image loaded from an OCI archive.

mod tools;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use tools::{assert_ran_where_expected, busybox_archive, runtimes, text};

const IMAGE: &str = "localhost/busybox:latest";

struct Podman {
    root: PathBuf,
    runroot: PathBuf,
    dir: tempfile::TempDir,
}

static PODMAN: OnceLock<Podman> = OnceLock::new();
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn podman_env() -> (&'static Podman, MutexGuard<'static, ()>) {
    let guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let p = PODMAN.get_or_init(|| {
        // Under /var (the lab's ext4 root): overlay storage needs a filesystem that has it.
        let dir = tempfile::Builder::new()
            .prefix("crx-podman-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let p = Podman {
            root: dir.path().join("root"),
            runroot: dir.path().join("run"),
            dir,
        };
        load_busybox(&p);
        p
    });
    (p, guard)
}

fn load_busybox(p: &Podman) {
    let archive = busybox_archive(p.dir.path(), IMAGE);
    let out = podman(p, "runc", &["load", "-i"], &[archive.to_str().unwrap()]);
    assert!(out.status.success(), "load: {}", text(&out.stderr));
    let out = podman(
        p,
        "runc",
        &["images", "--format", "{{.Repository}}:{{.Tag}}"],
        &[],
    );
    assert!(
        text(&out.stdout).contains("busybox"),
        "{}",
        text(&out.stdout)
    );
}

fn podman_cmd(p: &Podman, runtime: &str) -> Command {
    let mut c = Command::new("podman");
    c.arg("--root")
        .arg(&p.root)
        .arg("--runroot")
        .arg(&p.runroot)
        .args(["--runtime", runtime])
        .args(["--cgroup-manager", "cgroupfs", "--events-backend", "file"])
        .args(["--storage-driver", "overlay"]);
    c
}

fn podman(p: &Podman, runtime: &str, args: &[&str], more: &[&str]) -> Output {
    podman_cmd(p, runtime)
        .args(args)
        .args(more)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn lab_podman_run_rm_output_and_exit_code() {
    let (p, _g) = podman_env();
    for (name, rt) in runtimes() {
        let out = podman(
            p,
            &rt,
            &["run", "--rm", "--network", "none", IMAGE],
            &[
                "sh",
                "-c",
                "echo out-$0; echo err-$0 >&2; cat /proc/cmdline; exit 4",
            ],
        );
        assert_eq!(out.status.code(), Some(4), "{name}: {}", text(&out.stderr));
        assert!(
            text(&out.stdout).contains("out-sh"),
            "{name}: {}",
            text(&out.stdout)
        );
        assert!(
            text(&out.stderr).contains("err-sh"),
            "{name}: {}",
            text(&out.stderr)
        );
        assert_ran_where_expected(name, &text(&out.stdout));
    }
}

#[test]
fn lab_podman_it_gives_a_terminal() {
    let (p, _g) = podman_env();
    for (name, rt) in runtimes() {
        // `script` gives podman a terminal on its stdin/stdout, as a user's shell would.
        let mut inner = podman_cmd(p, &rt);
        inner.args(["run", "--rm", "-it", "--network", "none", IMAGE, "sh", "-c"]);
        inner.arg("tty; exit 6");
        let line = std::iter::once(inner.get_program())
            .chain(inner.get_args())
            .map(|a| shell_quote(&a.to_string_lossy()))
            .collect::<Vec<_>>()
            .join(" ");
        let out = Command::new("script")
            .args(["-qec", &line, "/dev/null"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(6),
            "{name}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        assert!(
            text(&out.stdout).contains("/dev/pts/"),
            "{name}: {}",
            text(&out.stdout)
        );
    }
}

#[test]
fn lab_podman_exec_volume_and_stop() {
    let (p, _g) = podman_env();
    for (name, rt) in runtimes() {
        let vol = tempfile::tempdir_in("/var/tmp").unwrap();
        std::fs::write(vol.path().join("from-host"), "host data\n").unwrap();
        let cname = format!("stop-{name}");
        let out = podman(
            p,
            &rt,
            &["run", "-d", "--name", &cname, "--network", "none"],
            &[
                "-v",
                &format!("{}:/data", vol.path().display()),
                IMAGE,
                "sleep",
                "600",
            ],
        );
        assert!(
            out.status.success(),
            "{name}: run -d: {}",
            text(&out.stderr)
        );

        let exec = podman(
            p,
            &rt,
            &["exec", &cname],
            &[
                "sh",
                "-c",
                "cat /data/from-host; echo guest data > /data/from-guest; exit 2",
            ],
        );
        assert_eq!(
            exec.status.code(),
            Some(2),
            "{name}: {}",
            text(&exec.stderr)
        );
        assert!(
            text(&exec.stdout).contains("host data"),
            "{name}: {}",
            text(&exec.stdout)
        );
        assert_eq!(
            std::fs::read_to_string(vol.path().join("from-guest")).unwrap_or_default(),
            "guest data\n",
            "{name}: a write in the container must reach the host directory"
        );

        let started = Instant::now();
        let stop = podman(p, &rt, &["stop", "-t", "2", &cname], &[]);
        assert!(
            stop.status.success(),
            "{name}: stop: {}",
            text(&stop.stderr)
        );
        assert!(started.elapsed() < Duration::from_secs(120));
        let state = podman(
            p,
            &rt,
            &["inspect", "--format", "{{.State.Status}}", &cname],
            &[],
        );
        assert_eq!(text(&state.stdout).trim(), "exited", "{name}");
        let rm = podman(p, &rt, &["rm", &cname], &[]);
        assert!(rm.status.success(), "{name}: rm: {}", text(&rm.stderr));
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}
