//! Host tier: the OCI spec's `linux.seccomp` is enforced (libcontainer with libseccomp, linked
//! statically into crx-init) for the container's process, and a container without a profile is
//! not filtered. Exec'd processes are filtered by the container's profile too (libcontainer 0.7's
//! tenant builder drops `linux.seccomp`; the agent installs it itself, see
//! containers/exec_seccomp.rs). crx-init runs as an ordinary root process (tests/common).

use crx_proto::*;
use serde_json::json;

mod common;
use common::*;

/// A busybox container running `cmd` without a terminal, filtered by `seccomp` when given.
fn spec(cmd: &str, seccomp: Option<serde_json::Value>) -> serde_json::Value {
    let mut linux = json!({"namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]});
    if let Some(s) = seccomp {
        linux["seccomp"] = s;
    }
    json!({
        "ociVersion": "1.0.2",
        "process": process(cmd, false),
        "root": {"path": "rootfs", "readonly": false},
        "hostname": "ctr",
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": linux
    })
}

/// mkdir fails with EPERM, sethostname kills the process (SIGSYS), everything else is allowed.
fn profile() -> serde_json::Value {
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
            {"names": ["sethostname"], "action": "SCMP_ACT_KILL_PROCESS"}
        ]
    })
}

#[test]
fn seccomp_profiles_filter_the_container() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let root = busybox_tree(dir.path());
    let agent = start(&sock);
    let mut c = client(&sock);
    let mut w = client(&sock);
    let pid = std::process::id();
    let run = |c: &mut Client<_>, w: &mut Client<_>, id: &str, spec| {
        c.call(Request::CreateContainer {
            id: id.into(),
            spec,
            rootfs: tree_rootfs(&root),
        })
        .unwrap();
        c.call(Request::Start { id: id.into() }).unwrap();
        exited(
            w.call(Request::Wait {
                id: id.into(),
                exec_id: None,
            })
            .unwrap(),
        )
    };

    // Without a profile, mkdir works.
    let open = format!("open{pid}");
    assert_eq!(
        run(&mut c, &mut w, &open, spec("mkdir /tmp/d || exit 42", None)),
        0
    );

    // With it, mkdir gets EPERM...
    let denied = format!("sec{pid}");
    let spec_denied = spec("mkdir /tmp/d || exit 42", Some(profile()));
    assert_eq!(run(&mut c, &mut w, &denied, spec_denied), 42);
    // ... and sethostname kills the process with SIGSYS.
    let killed = format!("kill{pid}");
    let mut spec_killed = spec("", Some(profile()));
    spec_killed["process"]["args"] = json!(["/bin/hostname", "x"]);
    assert_eq!(
        run(&mut c, &mut w, &killed, spec_killed),
        128 + libc::SIGSYS
    );

    // A profile that does not parse: create fails with a typed error, the agent lives on.
    let e = c
        .call(Request::CreateContainer {
            id: format!("bad{pid}"),
            spec: spec("true", Some(json!({"defaultAction": "SCMP_ACT_BOGUS"}))),
            rootfs: tree_rootfs(&root),
        })
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Agent(a) if a.kind == ErrorKind::InvalidRequest),
        "{e:?}"
    );
    assert_eq!(c.call(Request::Ping).unwrap(), Response::Pong);
    for id in [open, denied, killed] {
        c.call(Request::Remove { id, force: true }).unwrap();
    }
    drop(w);
    shut_down(agent, c);
}

#[test]
fn exec_processes_get_the_container_profile() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let root = busybox_tree(dir.path());
    let agent = start(&sock);
    let mut c = client(&sock);
    let mut w = client(&sock);
    let pid = std::process::id();
    let filtered = format!("xsec{pid}");
    let open = format!("xopen{pid}");
    for (id, profile) in [(&filtered, Some(profile())), (&open, None)] {
        c.call(Request::CreateContainer {
            id: id.clone(),
            spec: spec("sleep 1000", profile),
            rootfs: tree_rootfs(&root),
        })
        .unwrap();
        c.call(Request::Start { id: id.clone() }).unwrap();
    }
    let exec = |c: &mut Client<_>, w: &mut Client<_>, id: &str, exec_id: &str, process| {
        c.call(Request::Exec {
            id: id.into(),
            exec_id: exec_id.into(),
            process,
        })
        .unwrap();
        exited(
            w.call(Request::Wait {
                id: id.into(),
                exec_id: Some(exec_id.into()),
            })
            .unwrap(),
        )
    };
    let mkdir = "mkdir /tmp/e || exit 42";
    // Root with every capability (CAP_SYS_ADMIN): filtered, no_new_privs left unset.
    let nnp_unset = "mkdir /tmp/e 2>/dev/null && exit 1; grep -q 'NoNewPrivs:.0' /proc/self/status || exit 3; exit 42";
    assert_eq!(
        exec(&mut c, &mut w, &filtered, "e1", process(nnp_unset, false)),
        42
    );
    // Without CAP_SYS_ADMIN and without noNewPrivileges: still filtered (no_new_privs set first).
    let mut no_admin = process(mkdir, false);
    let caps = json!(["CAP_KILL", "CAP_CHOWN"]);
    no_admin["capabilities"] = json!({"bounding": caps, "effective": caps, "permitted": caps});
    assert_eq!(exec(&mut c, &mut w, &filtered, "e2", no_admin), 42);
    // A kill rule kills the exec'd process.
    let mut hostname = process("", false);
    hostname["args"] = json!(["/bin/hostname", "x"]);
    assert_eq!(
        exec(&mut c, &mut w, &filtered, "e3", hostname),
        128 + libc::SIGSYS
    );
    // The container without a profile: its exec'd process is not filtered.
    assert_eq!(exec(&mut c, &mut w, &open, "e1", process(mkdir, false)), 0);

    for id in [filtered, open] {
        c.call(Request::Remove { id, force: true }).unwrap();
    }
    drop(w);
    shut_down(agent, c);
}
