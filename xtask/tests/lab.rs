//! Tests of the lab machinery itself (tier 3, run on the host: each boots the lab).
//! They check exit-status propagation, the lab host's environment, and that no exit path
//! (success, failure, timeout, SIGINT, SIGTERM, SIGKILL at any moment) leaves a QEMU
//! process or a temp file behind.

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lab tests run one at a time: each checks what its lab left behind.
static SERIAL: Mutex<()> = Mutex::new(());

/// Every lab these tests start carries this in its environment, which QEMU inherits: the
/// QEMU processes that count are this test binary's, not those of other work on the machine.
const TAG: &str = "CRX_LAB_TEST_TAG";

fn tag() -> String {
    format!("{TAG}={}", std::process::id())
}

fn xtask() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_xtask"));
    c.env(TAG, std::process::id().to_string());
    c
}

/// Live QEMU processes started by this test binary's labs.
fn qemu_pids() -> BTreeSet<u32> {
    let tag = tag();
    let mut pids = BTreeSet::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // comm is in parentheses; state follows. Zombies are dead already.
        let Some((comm, state)) = stat.split_once(") ") else {
            continue;
        };
        if !comm.ends_with("(qemu-system-x86") || state.starts_with('Z') {
            continue;
        }
        let environ = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        if environ.split(|b| *b == 0).any(|v| v == tag.as_bytes()) {
            pids.insert(pid);
        }
    }
    pids
}

/// What in /var/tmp (where QEMU puts `snapshot=on` overlays) and /tmp could be the lab's or
/// QEMU's (other work on the machine may use both meanwhile).
fn temp_entries() -> BTreeSet<String> {
    let list = |d: &str| {
        fs::read_dir(d)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
    };
    list("/var/tmp")
        .chain(list("/tmp"))
        .filter(|p| {
            let name = p
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .to_lowercase();
            name.starts_with("vl.") || name.contains("qemu") || name.contains("crx-lab")
        })
        .map(|p| p.to_string_lossy().into_owned())
        .collect()
}

/// Asserts that the QEMU processes and temp entries are back to `before` within 10 s.
fn assert_nothing_left(before_qemu: &BTreeSet<u32>, before_tmp: &BTreeSet<String>, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<u32> = qemu_pids().difference(before_qemu).copied().collect();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: QEMU processes left behind: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let new_tmp: Vec<String> = temp_entries().difference(before_tmp).cloned().collect();
    assert!(
        new_tmp.is_empty(),
        "{what}: temp entries left behind: {new_tmp:?}"
    );
}

/// Starts `xtask lab ARGS` with stderr piped; returns the child.
fn start_lab(args: &[&str]) -> Child {
    xtask()
        .arg("lab")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting xtask lab")
}

/// Reads the child's stderr until the lab reports that the command started.
fn wait_until_up(child: &mut Child) {
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.contains("lab host up") {
            // Keep draining so the child never blocks on a full pipe.
            std::thread::spawn(move || lines.for_each(drop));
            return;
        }
    }
    panic!("the lab never came up");
}

#[test]
fn labhost_runs_a_command_as_root_and_returns_its_exit_status() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (qemu, tmp) = (qemu_pids(), temp_entries());
    let script = "set -e; test \"$(id -u)\" = 0; test -c /dev/kvm; \
                  grep -q ' /sys/fs/cgroup cgroup2 ' /proc/mounts; grep -q ' /proc proc ' /proc/mounts; \
                  grep -q ' /tmp tmpfs ' /proc/mounts; test -d /dev/pts; \
                  test -f Cargo.toml; echo \"lab says $CRX_T\"; exit 7";
    let out = xtask()
        .args([
            "lab",
            "--env",
            "CRX_T=hello world",
            "--",
            "sh",
            "-c",
            script,
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(7),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains("lab says hello world"),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        !stdout.contains("CRX-LAB"),
        "markers leak into the output:\n{stdout}"
    );
    assert_nothing_left(&qemu, &tmp, "after a normal exit");
}

#[test]
fn labhost_a_timeout_stops_the_lab() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (qemu, tmp) = (qemu_pids(), temp_entries());
    let out = xtask()
        .args(["lab", "--timeout", "20", "--", "sleep", "600"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(stderr.contains("timed out"), "{stderr}");
    assert_nothing_left(&qemu, &tmp, "after a timeout");
}

#[test]
fn labhost_killing_the_lab_command_at_any_moment_leaves_no_qemu() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (qemu, tmp) = (qemu_pids(), temp_entries());
    // Early kills land before or while QEMU starts and boots; the last ones mid-command.
    for (signal, delay_ms) in [
        (libc::SIGKILL, 50),
        (libc::SIGKILL, 700),
        (libc::SIGTERM, 300),
    ] {
        let mut child = start_lab(&["--", "sleep", "600"]);
        std::thread::sleep(Duration::from_millis(delay_ms));
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, signal) };
        child.wait().unwrap();
        assert_nothing_left(&qemu, &tmp, &format!("signal {signal} after {delay_ms} ms"));
    }
    for signal in [libc::SIGINT, libc::SIGKILL] {
        let mut child = start_lab(&["--", "sleep", "600"]);
        wait_until_up(&mut child);
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, signal) };
        child.wait().unwrap();
        assert_nothing_left(
            &qemu,
            &tmp,
            &format!("signal {signal} while the command ran"),
        );
    }
}

#[test]
fn labhost_a_failing_command_fails_the_lab_with_its_status() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let out = xtask()
        .args(["lab", "--", "sh", "-c", "echo to-stderr >&2; false"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("to-stderr"));
}

/// Runs `script` in the lab with a silence limit of 6 s; its status, stdout and stderr.
fn lab_with_silence_limit(script: &str) -> (std::process::Output, String, String) {
    let out = xtask()
        .args(["lab", "--silence", "6", "--", "sh", "-c", script])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stdout, stderr)
}

#[test]
fn labhost_a_quiet_command_keeps_the_lab_alive_by_its_heartbeat() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Silence limit 6 s: a heartbeat every second; the command is quiet for 15 s.
    let (out, stdout, stderr) = lab_with_silence_limit("printf 'quiet '; sleep 15; echo done");
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert_eq!(stdout, "quiet done\n", "{stderr}");
}

#[test]
fn labhost_a_silent_lab_host_is_stopped_as_stuck() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (qemu, tmp) = (qemu_pids(), temp_entries());
    // Stopping the heartbeat plays a wedged lab host: nothing reaches the console any more
    // (without the watchdog, the lab would end after the sleep with status 0).
    let (out, stdout, stderr) = lab_with_silence_limit(
        "kill $(cat /run/crx-lab-heartbeat.pid); echo beat-stopped; sleep 600",
    );
    assert_eq!(out.status.code(), Some(125), "{stdout}\n{stderr}");
    assert!(stdout.contains("beat-stopped"), "{stdout}\n{stderr}");
    assert!(stderr.contains("THE LAB HOST IS STUCK"), "{stderr}");
    // Before giving up, the watchdog woke the lab host once: its kernel logged the NMI, and
    // no heartbeat came back (it was stopped for good).
    assert!(stderr.contains("sent the lab host an NMI"), "{stderr}");
    assert!(stdout.contains("NMI"), "{stdout}\n{stderr}");
    assert!(!stderr.contains("heartbeat came back"), "{stderr}");
    // Where each vCPU was, a kernel address named from the lab kernel's symbols. Usually both
    // are idle in the kernel, but the sample may catch one in user space (a CI run did): then
    // the address stays bare and its stack has no kernel text.
    for cpu in 0..2 {
        let rip = vcpu_rip(&stderr, cpu).unwrap_or_else(|| panic!("vCPU {cpu}: {stderr}"));
        if rip >= 0xffff_ffff_8000_0000 {
            assert!(
                stderr.contains(&format!("RIP {rip:#x} (")) && stderr.contains("+0x"),
                "vCPU {cpu}'s kernel address unnamed: {stderr}"
            );
        }
    }
    assert_eq!(
        stderr
            .matches("kernel text addresses on its stack: ")
            .count(),
        4,
        "two reports, before and after the wake-up: {stderr}"
    );
    assert_nothing_left(&qemu, &tmp, "after a silent lab");
}

#[test]
fn labhost_a_silent_lab_host_whose_heartbeat_comes_back_after_the_wake_up_goes_on() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Silent for 9 s (the limit is 6 s), then beating again: a host that came back to life
    // after the watchdog's wake-up finishes its command.
    let (out, stdout, stderr) = lab_with_silence_limit(
        "kill $(cat /run/crx-lab-heartbeat.pid); echo beat-stopped; sleep 9; \
         (while sleep 1; do echo CRX-LAB-ALIVE; done) & sleep 3; echo finished",
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stderr.contains("sent the lab host an NMI"), "{stderr}");
    assert!(stderr.contains("heartbeat came back"), "{stderr}");
    assert!(stdout.contains("finished"), "{stdout}\n{stderr}");
}

/// The RIP the stuck-lab report gives for `cpu` (`vCPU N: RIP 0xADDR ...`).
fn vcpu_rip(report: &str, cpu: u32) -> Option<u64> {
    let line = report
        .lines()
        .find_map(|l| l.trim().strip_prefix(&format!("vCPU {cpu}: RIP 0x")))?;
    let hex: String = line.chars().take_while(char::is_ascii_hexdigit).collect();
    u64::from_str_radix(&hex, 16).ok()
}
