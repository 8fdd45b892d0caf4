//! containerd (Debian's 1.6) running busybox through `containerd-shim-crx-v2` (`ctr run
//! --runtime io.containerd.crx.v2`): output and exit code, exec, kill, two containers of one
//! pod in one VM, and nothing left once they are removed (counted). Inside the nested lab
//! (tier 3): `cargo xtask lab -- target/debug/deps/lab_shim_ctr-HASH lab_ --test-threads=1`.
//!
//! The install step is the README's: containerd finds `containerd-shim-crx-v2` on its PATH,
//! here `target/debug` prepended (crx-vmm and crx-jailer are found beside the shim).

use std::process::Stdio;
use std::time::{Duration, Instant};

use crx_testkit::text;

#[allow(dead_code)] // the harness also serves lab_shim_kill9
mod common;
use common::{containerd, Containerd, CONTAINER_TYPE, IMAGE, RUNTIME, SANDBOX_ID};

/// Processes whose command name is one of `names`.
fn count_procs(names: &[&str]) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("comm")).ok())
        .filter(|comm| names.contains(&comm.trim()))
        .count()
}

/// Running virtiofsd daemons: in its namespace sandbox a daemon is two processes (a parent
/// waiting for the server), so a virtiofsd whose parent is one is not counted again.
fn count_virtiofsd_daemons() -> usize {
    let comm = |pid: &str| std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let ppid = |pid: &str| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // pid (comm) state ppid ...: the comm may hold spaces, so split after its ')'.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        rest.split_whitespace().nth(1).unwrap_or("0").to_owned()
    };
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|pid| pid.parse::<u32>().is_ok())
        .filter(|pid| comm(pid).trim() == "virtiofsd" && comm(&ppid(pid)).trim() != "virtiofsd")
        .count()
}

/// What a pod leaves: VMMs, virtiofsd daemons, shims, mounts under the shim's state, pods.
fn leftovers() -> (usize, usize, usize, usize, usize) {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains("/run/crx-shim/"))
        .count();
    let pods = std::fs::read_dir("/run/crx-shim").map_or(0, |d| d.count());
    (
        count_procs(&["crx-vmm", "crx-jailer"]),
        count_virtiofsd_daemons(),
        count_procs(&["containerd-shim"]),
        mounts,
        pods,
    )
}

/// Waits until nothing is left (the shim exits after `Shutdown`, a moment after `ctr`).
fn assert_nothing_left(c: &Containerd) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = leftovers();
        if left == (0, 0, 0, 0, 0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "left (vmm, virtiofsd, shim, mounts, pods): {left:?}\n{}",
            c.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn wait_running(c: &Containerd, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let listing = text(&c.ctr(&["task", "ls"]).stdout);
        if listing
            .lines()
            .any(|l| l.starts_with(id) && l.contains("RUNNING"))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{id} never ran: {listing}\n{}",
            c.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn lab_shim_ctr_run_output_and_exit_code() {
    let (c, _g) = containerd();
    let started = Instant::now();
    let out = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        IMAGE,
        "run1",
        "sh",
        "-c",
        "echo hi from $0; cat /proc/cmdline; exit 3",
    ]);
    eprintln!(
        "ctr run --rm (boot, run, exit, remove): {:?}",
        started.elapsed()
    );
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{stdout}\n{}\n{}",
        text(&out.stderr),
        c.log()
    );
    assert!(stdout.contains("hi from sh"), "{stdout}");
    assert!(
        stdout.contains("virtio_mmio.device=") && !stdout.contains("crxlab."),
        "not in a microVM? {stdout}"
    );
    assert_nothing_left(c);
}

#[test]
fn lab_shim_task_exec_and_kill() {
    let (c, _g) = containerd();
    let id = "bg1";
    let mut run = c
        .ctr_cmd(&[
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            IMAGE,
            id,
            "sleep",
            "600",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_running(c, id);
    let exec = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        id,
        "sh",
        "-c",
        "echo in-$0; exit 5",
    ]);
    assert_eq!(exec.status.code(), Some(5), "{}", text(&exec.stderr));
    assert!(
        text(&exec.stdout).contains("in-sh"),
        "{}",
        text(&exec.stdout)
    );
    let ps = c.ctr(&["task", "ps", id]);
    assert!(ps.status.success(), "{}", text(&ps.stderr));
    let kill = c.ctr(&["task", "kill", "--signal", "SIGKILL", id]);
    assert!(kill.status.success(), "{}", text(&kill.stderr));
    let status = run.wait().unwrap();
    assert_eq!(status.code(), Some(137), "ctr run after SIGKILL: {status}");
    let ls = c.ctr(&["container", "ls", "-q"]);
    assert!(!text(&ls.stdout).contains(id), "container left behind");
    assert_nothing_left(c);
}

/// Two containers given one sandbox id (as CRI gives a pod's) land in ONE VM: one crx-vmm,
/// one virtiofsd, one shim; both see the same kernel (one boot id), and the second's exit
/// code comes back while the first keeps running.
#[test]
fn lab_shim_two_containers_of_one_pod_share_one_vm() {
    let (c, _g) = containerd();
    let (pod, second) = ("pod1", "pod1-c2");
    let ann = |v: &str| format!("{SANDBOX_ID}={v}");
    let mut first = c
        .ctr_cmd(&[
            "run",
            "--runtime",
            RUNTIME,
            "--annotation",
            &ann(pod),
            IMAGE,
            pod,
            "sleep",
            "600",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_running(c, pod);
    let out = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--annotation",
        &ann(pod),
        "--annotation",
        &format!("{CONTAINER_TYPE}=container"),
        IMAGE,
        second,
        "sh",
        "-c",
        "cat /proc/sys/kernel/random/boot_id; exit 4",
    ]);
    let boot2 = text(&out.stdout);
    assert_eq!(out.status.code(), Some(4), "{boot2}\n{}", text(&out.stderr));
    let exec = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "b",
        pod,
        "cat",
        "/proc/sys/kernel/random/boot_id",
    ]);
    assert_eq!(
        text(&exec.stdout).trim(),
        boot2.lines().next().unwrap_or_default().trim(),
        "not one VM"
    );
    let (vmms, fsds, shims, _, pods) = leftovers();
    assert_eq!(
        (vmms, fsds, shims, pods),
        (1, 1, 1, 1),
        "one VM for the pod"
    );
    let kill = c.ctr(&["task", "kill", "--signal", "SIGKILL", pod]);
    assert!(kill.status.success(), "{}", text(&kill.stderr));
    assert_eq!(first.wait().unwrap().code(), Some(137));
    let rm = c.ctr(&["task", "rm", pod]);
    assert!(
        rm.status.success() || text(&rm.stderr).contains("not found"),
        "{}",
        text(&rm.stderr)
    );
    let rm = c.ctr(&["container", "rm", pod]);
    assert!(rm.status.success(), "{}", text(&rm.stderr));
    assert_nothing_left(c);
}
