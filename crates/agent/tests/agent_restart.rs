//! Host tier: a container helper that dies is restarted, and the containers it left are
//! killed. Its own test binary: the restarted helper kills every container under the `/crx`
//! cgroup, which on the host tier is shared by all agents running at the same time.

use crx_proto::*;
use serde_json::json;

mod common;
use common::*;

/// The pid of the agent's container helper (its child running `--container-helper`).
fn helper_pid(agent: u32) -> i32 {
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        // "pid (comm) state ppid ...": the comm may hold spaces, so split after the ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().nth(1));
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if ppid == Some(&agent.to_string())
            && String::from_utf8_lossy(&cmd).contains("--container-helper")
        {
            return pid;
        }
    }
    panic!("no container helper under agent {agent}");
}

#[test]
fn a_dead_helper_is_restarted_and_its_containers_killed() {
    let mut f = Fixture::new();
    let id = format!("rst{}", std::process::id());
    let spec = |cmd: &str| {
        json!({
            "ociVersion": "1.0.2",
            "process": process(cmd, false),
            "root": {"path": "rootfs", "readonly": false},
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
            "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}]}
        })
    };
    f.create_start(&id, spec("sleep 1000"));
    let helper = helper_pid(f.agent.0.id());
    // SAFETY: kill(2) on a pid we just read; no memory is involved.
    assert_eq!(unsafe { libc::kill(helper, libc::SIGKILL) }, 0);

    // The agent lives on; within a few calls a new helper answers, knows nothing of the old
    // container, and runs one with the same id.
    assert_eq!(f.c.call(Request::Ping).unwrap(), Response::Pong);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        match f.create(&id, spec("exit 6")) {
            Ok(_) => break,
            Err(e) => assert!(std::time::Instant::now() < deadline, "no new helper: {e:?}"),
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_ne!(helper_pid(f.agent.0.id()), helper);
    f.c.call(Request::Start { id: id.clone() }).unwrap();
    assert_eq!(f.wait(&id, None), 6);
    f.remove(&id);
    f.shut_down();
}
