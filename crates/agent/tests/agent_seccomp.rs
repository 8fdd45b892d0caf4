//! Host tier: the OCI spec's `linux.seccomp` is enforced (libcontainer with libseccomp, linked
//! statically into crx-init) for the container's process, and a container without a profile is
//! not filtered. (Exec'd processes are not filtered yet: libcontainer 0.7's tenant builder drops
//! `linux.seccomp`; see crates/agent/README.md.) crx-init runs as an ordinary root process (tests/common).

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
    let rootfs = || Rootfs {
        device: root.display().to_string(),
        fs_type: "none".into(),
        writable: WritableLayer::Tmpfs { size_bytes: None },
    };
    let run = |c: &mut Client<_>, w: &mut Client<_>, id: &str, spec| {
        c.call(Request::CreateContainer {
            id: id.into(),
            spec,
            rootfs: rootfs(),
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
            rootfs: rootfs(),
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
