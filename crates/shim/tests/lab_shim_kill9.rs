//! Violence against a pod of `containerd-shim-crx-v2` (issue 15): `kill -9` of its crx-vmm and
//! of its shim while a pod of two (its sandbox and a `sleep` container, `ctr run -d` with the
//! CRI annotations) runs. containerd's view must stay true (the tasks stop, with the status of
//! a killed VM, instead of hanging) and clean-up must leave nothing: no crx-vmm, virtiofsd or
//! shim process, no mount of the pod's share or of a bundle's rootfs, no pod directory, no shim
//! socket (counted). Inside the nested lab (tier 3):
//! `cargo xtask lab -- target/debug/deps/lab_shim_kill9-HASH lab_ --test-threads=1`.

mod common;

use std::time::{Duration, Instant};

use common::{
    assert_nothing_left, containerd, pids_of, run_detached, status_of, wait_log, wait_tasks,
    Containerd, Left,
};
use crx_testkit::text;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long containerd may take to see a pod's tasks end once its VM or shim is killed (the
/// shim notices a dead VM within a second; kubelet's view must not wait on a timeout).
const SEEN_WITHIN: Duration = Duration::from_secs(20);

/// Starts pod `pod`: its sandbox, then container `POD-c` running `sleep 600`; one VM.
fn start_pod(c: &Containerd, pod: &str) -> String {
    let started = Instant::now();
    let child = format!("{pod}-c");
    run_detached(c, pod, "sandbox", pod, &["sleep", "600"]);
    run_detached(c, pod, "container", &child, &["sleep", "600"]);
    wait_tasks(c, "both running", Duration::from_secs(60), |t| {
        status_of(t, pod) == Some("RUNNING") && status_of(t, &child) == Some("RUNNING")
    });
    let left = Left::now(c, &[pod]);
    // (virtiofsd in its namespace sandbox is two processes: a parent waiting for the server.)
    assert!(
        (left.vmms, left.shims, left.pods) == (1, 1, 1) && (1..=2).contains(&left.virtiofsds),
        "one VM (one crx-vmm process counted, jailer or not), one virtiofsd, one shim: {left:?}"
    );
    eprintln!("{pod}: started in {:?}", started.elapsed());
    child
}

/// The one live process named `name`.
fn the_one(name: &str) -> Pid {
    let pids = pids_of(&[name]);
    assert_eq!(pids.len(), 1, "{name}: {pids:?}");
    Pid::from_raw(pids[0] as i32)
}

/// `ctr task rm` of `id`: its exit status as `ctr` warns it (`exit code N`), or `None` when
/// containerd no longer has the task.
fn task_rm(c: &Containerd, id: &str) -> Option<String> {
    let out = c.ctr(&["task", "rm", id]);
    let err = text(&out.stderr);
    if !out.status.success() {
        assert!(
            err.contains("not found"),
            "task rm {id}: {err}\n{}",
            c.log()
        );
        return None;
    }
    Some(
        err.split("exit code ")
            .nth(1)
            .map(|s| s.trim().trim_end_matches('"').to_owned())
            .unwrap_or_else(|| "0".into()),
    )
}

fn container_rm(c: &Containerd, ids: &[&str]) {
    let mut args = vec!["container", "rm"];
    args.extend_from_slice(ids);
    let out = c.ctr(&args);
    assert!(
        out.status.success(),
        "container rm {ids:?}: {}\n{}",
        text(&out.stderr),
        c.log()
    );
    let ls = text(&c.ctr(&["container", "ls", "-q"]).stdout);
    for id in ids {
        assert!(!ls.lines().any(|l| l == *id), "{id} still listed: {ls}");
    }
}

/// crx-vmm killed: every task of the pod is reported stopped with the status of a killed VM
/// (137) within a bound, not hanging; deleting them leaves nothing.
#[test]
fn lab_shim_kill9_of_the_vmm_stops_every_task_of_the_pod() {
    let (c, _g) = containerd();
    let test = Instant::now();
    let pod = "k9vmm";
    let child = start_pod(c, pod);
    kill(the_one("crx-vmm"), Signal::SIGKILL).unwrap();
    let seen = wait_tasks(c, "both stopped after crx-vmm died", SEEN_WITHIN, |t| {
        status_of(t, pod) == Some("STOPPED") && status_of(t, &child) == Some("STOPPED")
    });
    eprintln!("{pod}: crx-vmm killed, both tasks STOPPED after {seen:?}");
    assert_eq!(
        task_rm(c, &child).as_deref(),
        Some("137"),
        "{child}'s status"
    );
    assert_eq!(task_rm(c, pod).as_deref(), Some("137"), "{pod}'s status");
    container_rm(c, &[&child, pod]);
    assert_nothing_left(c, &[pod]);
    eprintln!("{pod}: whole test {:?}", test.elapsed());
}

/// The shim killed: its crx-vmm and virtiofsd die with it, containerd runs the shim's
/// `delete` action for each of the pod's tasks (which must succeed) and forgets the tasks;
/// the containers can be removed and nothing is left.
#[test]
fn lab_shim_kill9_of_the_shim_is_cleaned_by_delete() {
    let (c, _g) = containerd();
    let test = Instant::now();
    let pod = "k9shim";
    let child = start_pod(c, pod);
    let failed_before = c
        .log()
        .matches("failed to clean up after shim disconnected")
        .count();
    kill(the_one("containerd-shim"), Signal::SIGKILL).unwrap();
    let seen = wait_tasks(c, "no task running after the shim died", SEEN_WITHIN, |t| {
        [pod, child.as_str()]
            .iter()
            .all(|id| status_of(t, id).is_none_or(|s| s == "STOPPED"))
    });
    eprintln!("{pod}: shim killed, no task running after {seen:?}");
    wait_log(
        c,
        "the shim's delete run by containerd",
        SEEN_WITHIN,
        |log| log.contains("cleaning up after shim disconnected"),
    );
    for id in [child.as_str(), pod] {
        if let Some(status) = task_rm(c, id) {
            assert_eq!(status, "137", "{id}'s status after its shim died");
        }
    }
    container_rm(c, &[&child, pod]);
    assert_nothing_left(c, &[pod]);
    let log = c.log();
    assert_eq!(
        log.matches("failed to clean up after shim disconnected")
            .count(),
        failed_before,
        "the shim's delete action failed:\n{log}"
    );
    eprintln!("{pod}: whole test {:?}", test.elapsed());
}
