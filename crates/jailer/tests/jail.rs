//! crx-jailer as root (tier 1; CI runs the tiers as root): a busybox shell jailed as nobody,
//! checked from the host (/proc/PID/status, /proc/PID/root, /proc/PID/ns) and from inside.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const NOBODY: &str = "65534";
const BUSYBOX: &str = "/bin/busybox";

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        assert!(
            nix::unistd::geteuid().is_root(),
            "crx-jailer tests need root (namespaces, mounts); run the tiers as root"
        );
        assert!(
            Path::new(BUSYBOX).is_file(),
            "{BUSYBOX} is missing: apt-get install -y busybox-static"
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("jail")).unwrap();
        Self { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("jail")
    }

    fn jailer(&self, extra: &[&str], script: &str) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_crx-jailer"));
        c.arg("--root")
            .arg(self.root())
            .args(["--uid", NOBODY, "--gid", NOBODY, "--hostname", "jailed"])
            .args(["--bind", &format!("{BUSYBOX}:/bin/busybox:ro")])
            .args(extra)
            .args(["--", "/bin/busybox", "sh", "-c", script]);
        c
    }

    fn run(&self, extra: &[&str], script: &str) -> Output {
        self.jailer(extra, script).output().unwrap()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The jailed program: the jailer's only child.
fn jailed_pid(jailer: &Child) -> u32 {
    let children =
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", jailer.id())).unwrap();
    children.split_whitespace().next().unwrap().parse().unwrap()
}

fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_owned()
}

/// `pid` has namespaces of its own (mount, PID, IPC, UTS, network) and its `/` holds only
/// what the jail put there.
fn assert_isolated(pid: u32) {
    for ns in ["mnt", "pid", "ipc", "uts", "net"] {
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        assert_ne!(
            theirs, ours,
            "the jailed program shares the host's {ns} namespace"
        );
    }
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/root"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["bin", "dev", "proc"]);
}

fn started(mut child: Child) -> (Child, BufReader<std::process::ChildStdout>) {
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready", "the jailed shell did not start");
    (child, out)
}

#[test]
fn the_jailed_program_holds_no_privilege_and_sees_only_its_jail() {
    let f = Fixture::new();
    let child = f
        .jailer(&[], "echo ready; exec /bin/busybox sleep 60")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut child, _out) = started(child);
    let pid = jailed_pid(&child);
    let ids = format!("{NOBODY}\t{NOBODY}\t{NOBODY}\t{NOBODY}");
    assert_eq!(status_field(pid, "Uid"), ids);
    assert_eq!(status_field(pid, "Gid"), ids);
    assert_eq!(status_field(pid, "Groups"), NOBODY);
    for caps in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status_field(pid, caps), "0000000000000000", "{caps}");
    }
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    // PID 1 of its own PID namespace.
    assert!(
        status_field(pid, "NSpid").ends_with("\t1"),
        "{}",
        status_field(pid, "NSpid")
    );
    assert_isolated(pid);
    // Killing the jailer kills the jail.
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            Instant::now() < deadline,
            "the jailed program outlived a killed jailer"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn inside_the_jail_only_its_files_processes_devices_and_loopback_exist() {
    let f = Fixture::new();
    let script = "cd /; echo root: *; echo proc: /proc/[0-9]*; echo dev: $(cd /dev && echo *) \
        $(/bin/busybox stat -c '%F %u' /dev/kvm); echo host: $(/bin/busybox hostname); \
        echo id: $(/bin/busybox id -u); /bin/busybox touch /bin/x 2>/dev/null; echo ro: $?; \
        echo net: $(/bin/busybox cat /proc/net/dev | /bin/busybox tail -n +3 | \
        /bin/busybox cut -d: -f1); exit 7";
    let out = f.run(&["--device", "kvm"], script);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(7), "{stdout}{}", text(&out.stderr));
    let want = [
        "root: bin dev proc",
        "proc: /proc/1",
        &format!("dev: kvm character special file {NOBODY}"),
        "host: jailed",
        &format!("id: {NOBODY}"),
        "ro: 1",
        "net: lo",
    ];
    let got: Vec<String> = stdout
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(got, want);
    // The device node lived in the jail's private /dev: nothing is left on the host.
    let dev = f.root().join("dev");
    assert_eq!(std::fs::read_dir(dev).unwrap().count(), 0);
}

#[test]
fn termination_signals_reach_the_jailed_program() {
    let f = Fixture::new();
    let child = f
        .jailer(
            &[],
            "trap 'exit 9' TERM; echo ready; while :; do /bin/busybox sleep 1; done",
        )
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut child, _out) = started(child);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(9));
}

#[test]
fn a_jail_that_cannot_be_made_safely_is_refused_before_anything_runs() {
    let f = Fixture::new();
    let marker = f.dir.path().join("ran");
    let script = format!("/bin/busybox touch {}", marker.display());
    let refused = |c: &mut Command, why: &str| {
        let out = c.output().unwrap();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{err}");
        assert!(
            err.starts_with("crx-jailer: ") && err.contains(why),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
    };
    // As root.
    let mut c = f.jailer(&[], &script);
    let args: Vec<String> = c
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut as_root = Command::new(c.get_program());
    as_root.args(args.iter().map(|a| if a == NOBODY { "0" } else { a }));
    refused(&mut as_root, "must not be 0");
    // A root directory others may write.
    std::fs::set_permissions(f.root(), std::fs::Permissions::from_mode(0o777)).unwrap();
    refused(&mut c, "must not be writable");
    std::fs::set_permissions(f.root(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // A bind of something that does not exist.
    refused(
        &mut f.jailer(&["--bind", "/nonexistent:/x"], &script),
        "does not exist",
    );
    assert!(!marker.exists());
    // And the same jail, made right, runs.
    let out = f.run(&[], "exit 0");
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// Spawns `cmd` as PID 1 of a new PID namespace, as crx-runtime does for `--as-init`
/// (`crx_runtime::jail::spawn_as_init`; the jailer crate is a leaf, so the dance is repeated
/// here), with a parent-death signal armed when `die_with_us`.
fn spawn_as_init(cmd: &mut Command, die_with_us: bool) -> Child {
    use nix::sched::{setns, unshare, CloneFlags};
    if die_with_us {
        // SAFETY: runs in the forked child before exec; prctl is async-signal-safe.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(cmd, || {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
                Ok(())
            });
        }
    }
    let own = std::fs::File::open("/proc/thread-self/ns/pid").unwrap();
    unshare(CloneFlags::CLONE_NEWPID).unwrap();
    let child = cmd.spawn();
    setns(&own, CloneFlags::CLONE_NEWPID).unwrap();
    child.unwrap()
}

/// `--as-init`: no jailer stays; the spawned process is the jailed program itself, PID 1 of
/// its namespace, as confined as a forked one.
#[test]
fn as_init_the_jailer_becomes_the_program_with_the_same_confinement() {
    let f = Fixture::new();
    let mut cmd = f.jailer(&["--as-init"], "echo ready; exec /bin/busybox sleep 60");
    cmd.stdout(Stdio::piped());
    let (mut child, _out) = started(spawn_as_init(&mut cmd, false));
    let pid = child.id();
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert!(exe.ends_with("busybox"), "{}", exe.display());
    let ids = format!("{NOBODY}\t{NOBODY}\t{NOBODY}\t{NOBODY}");
    assert_eq!(status_field(pid, "Uid"), ids);
    assert_eq!(status_field(pid, "Gid"), ids);
    for caps in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status_field(pid, caps), "0000000000000000", "{caps}");
    }
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    assert!(status_field(pid, "NSpid").ends_with("\t1"));
    assert_isolated(pid);
    child.kill().unwrap();
    child.wait().unwrap();
    // Inside: its own /proc, the same view as a forked jail's.
    let mut cmd = f.jailer(&["--as-init"], "cd /; echo $$ /proc/[0-9]*; exit 3");
    let out = spawn_as_init(cmd.stdout(Stdio::piped()), false)
        .wait_with_output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "1 /proc/1");
}

/// `--as-init` where the jailer is not PID 1 of a new namespace is refused, nothing run.
#[test]
fn as_init_outside_a_new_pid_namespace_is_refused() {
    let f = Fixture::new();
    let out = f.run(&["--as-init"], "echo ran");
    assert_eq!(out.status.code(), Some(125));
    let err = text(&out.stderr);
    assert!(err.contains("not PID 1"), "{err}");
    assert!(out.stdout.is_empty());
}

const PARENT_ENV: &str = "CRX_JAILER_TEST_PARENT";

/// `--as-init` with a parent-death signal armed by the caller: the uid change clears it and
/// the jailer arms it again, so the jailed program dies with the caller. Run twice: as the
/// test, it starts this test binary again as a caller, which starts the jail, prints its pid
/// and exits.
#[test]
fn as_init_the_program_dies_with_its_caller() {
    if let Some(dir) = std::env::var_os(PARENT_ENV) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_crx-jailer"));
        cmd.arg("--as-init")
            .arg("--root")
            .arg(Path::new(&dir).join("jail"))
            .args(["--uid", NOBODY, "--gid", NOBODY])
            .args(["--bind", &format!("{BUSYBOX}:/bin/busybox:ro")])
            .args([
                "--",
                "/bin/busybox",
                "sh",
                "-c",
                "echo ready; exec /bin/busybox sleep 60",
            ])
            .stdout(Stdio::piped());
        let (child, _out) = started(spawn_as_init(&mut cmd, true));
        println!("PID {}", child.id());
        std::process::exit(0);
    }
    let f = Fixture::new();
    let mut caller = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "as_init_the_program_dies_with_its_caller",
            "--nocapture",
        ])
        .env(PARENT_ENV, f.dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid: u32 = BufReader::new(caller.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("PID ").and_then(|p| p.trim().parse().ok()))
        .expect("the caller printed the jailed program's pid");
    caller.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.is_empty() || stat.contains(") Z") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the jailed program outlived its caller"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
