//! Lab tier: crx-init as PID 1 under crx-vmm, with the project's guest kernel and initrds.
//!
//! Run inside the nested lab (a `/dev/kvm` that boots Linux), after `cargo xtask boot` and
//! `cargo build -p crx-vmm`:
//!
//! ```sh
//! cargo build -p crx-init --tests && cargo build -p xtask -p crx-vmm
//! target/debug/xtask lab -- target/debug/deps/lab_agent-HASH lab_ --nocapture --test-threads 1
//! ```
//!
//! Without the boot files or /dev/kvm every test fails with a message saying what is missing.

use std::io::Write;
use std::net::Shutdown;
use std::time::{Duration, Instant};

use crx_proto::{ExitStatus, Request, Response, StreamKind};
use crx_testkit::vm::{Vm, VmOpts};
use crx_testkit::{agent, busybox, vsock};

const BOOT: Duration = Duration::from_secs(120);

/// System-VM mode: the program's output and `crx-init: exit status N` on the console, then the
/// VM resets and crx-vmm exits 0.
#[test]
fn lab_system_vm_reports_exit_status() {
    let dir = tempfile::tempdir().unwrap();
    let debug = busybox::debug_layer(dir.path());
    let t = Instant::now();
    let mut vm = Vm::spawn(
        dir.path(),
        VmOpts {
            initrds: vec![debug],
            init_args: Some(
                r#"crxrun=/bin/busybox crxarg=sh crxarg=-c crxarg="echo hi; exit 7""#.into(),
            ),
            ..VmOpts::default()
        },
    );
    let st = vm.wait(BOOT);
    let console = vm.console_text();
    eprintln!("system VM: {:?} wall", t.elapsed());
    assert!(st.success(), "crx-vmm: {st}\n{}", vm.logs());
    assert!(
        console.lines().any(|l| l.trim_end() == "hi"),
        "{}",
        vm.logs()
    );
    assert!(console.contains("crx-init: exit status 7"), "{}", vm.logs());
    // crx-init's boot-timer marks: started, then ready.
    let (m1, m2) = (vm.boot_mark(1), vm.boot_mark(2));
    assert!(m1.is_some() && m2 >= m1, "{}", vm.logs());
}

/// Agent mode: Hello + Ping over the hybrid vsock, then Shutdown ends the VM (exit 0).
#[test]
fn lab_agent_answers_over_vsock() {
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let mut vm = Vm::spawn(
        dir.path(),
        VmOpts {
            vsock: true,
            ..VmOpts::default()
        },
    );
    let mut c = vm.client(BOOT);
    let ready = t.elapsed();
    assert_eq!(c.call(Request::Ping).unwrap(), Response::Pong);
    assert_eq!(c.call(Request::Ping).unwrap(), Response::Pong);
    assert_eq!(c.call(Request::Shutdown).unwrap(), Response::Ok);
    // Closing our end lets the agent reset at once (it waits up to 1 s for that).
    drop(c);
    let st = vm.wait(Duration::from_secs(60));
    eprintln!(
        "agent: handshake after {ready:?}, exit after {:?}",
        t.elapsed()
    );
    assert!(st.success(), "crx-vmm: {st}\n{}", vm.logs());
    assert!(vm.boot_mark(2).is_some(), "{}", vm.logs());
}

/// Containers from a read-only ext4 image of a busybox tree on virtio-blk (tmpfs overlay):
/// stdout on a host stream and the exit code; stdin from the host and an exec'd process
/// alongside; SIGKILL -> 137; then Shutdown.
#[test]
fn lab_agent_runs_containers_from_a_disk_image() {
    let dir = tempfile::tempdir().unwrap();
    let tree = agent::busybox_tree(dir.path());
    let img = dir.path().join("rootfs.ext4");
    agent::ext4_image(&tree, &img);
    let t = Instant::now();
    let mut vm = Vm::spawn(
        dir.path(),
        VmOpts {
            vsock: true,
            disks: vec![format!("{}:ro", img.display())],
            ..VmOpts::default()
        },
    );
    let mut c = vm.client(BOOT);
    eprintln!("agent ready after {:?}", t.elapsed());
    let create = |id: &str, cmd: &str| Request::CreateContainer {
        id: id.into(),
        spec: agent::spec(cmd),
        rootfs: agent::rootfs_vda(),
    };
    let wait = |id: &str, exec_id: Option<&str>| Request::Wait {
        id: id.into(),
        exec_id: exec_id.map(Into::into),
    };

    // 1. echo, stdout read on the host, exit code.
    let mut out = vm.stream("c0", None, StreamKind::Stdout);
    let t0 = Instant::now();
    assert_eq!(
        c.call(create("c0", "echo hello-from-lab; exit 3")).unwrap(),
        Response::Ok,
        "{}",
        vm.logs()
    );
    assert_eq!(
        c.call(Request::Start { id: "c0".into() }).unwrap(),
        Response::Ok
    );
    let text = vsock::read_until(&mut out, "\n");
    eprintln!("c0: create -> first line {:?}", t0.elapsed());
    assert_eq!(text, "hello-from-lab\n", "{}", vm.logs());
    assert_eq!(
        c.call(wait("c0", None)).unwrap(),
        Response::Exited(ExitStatus {
            code: 3,
            signal: None
        })
    );
    assert_eq!(
        c.call(Request::Remove {
            id: "c0".into(),
            force: false
        })
        .unwrap(),
        Response::Ok
    );

    // 2. stdin from the host; an exec alongside (its own stdout). The init waits for the
    // exec's pid in /tmp/go and then for it to be gone: were it to exit first, the kernel
    // would kill the exec with the rest of the pid namespace.
    let mut stdin = vm.stream("c1", None, StreamKind::Stdin);
    let mut out1 = vm.stream("c1", None, StreamKind::Stdout);
    let mut eout = vm.stream("c1", Some("e1"), StreamKind::Stdout);
    c.call(create(
        "c1",
        "read l; echo got $l from $(hostname); \
         while [ ! -s /tmp/go ]; do sleep 0.1; done; \
         while [ -e /proc/$(cat /tmp/go) ]; do sleep 0.1; done; exit 5",
    ))
    .unwrap();
    c.call(Request::Start { id: "c1".into() }).unwrap();
    stdin.write_all(b"line-from-host\n").unwrap();
    let _ = stdin.shutdown(Shutdown::Write);
    assert_eq!(
        vsock::read_until(&mut out1, "\n"),
        "got line-from-host from ctr\n",
        "{}",
        vm.logs()
    );
    assert_eq!(
        c.call(Request::Exec {
            id: "c1".into(),
            exec_id: "e1".into(),
            process: agent::exec_process("echo $$ > /tmp/go; echo exec-out; exit 4"),
        })
        .unwrap(),
        Response::Ok
    );
    assert_eq!(vsock::read_until(&mut eout, "\n"), "exec-out\n");
    assert_eq!(
        c.call(wait("c1", Some("e1"))).unwrap(),
        Response::Exited(ExitStatus {
            code: 4,
            signal: None
        })
    );
    assert_eq!(
        c.call(wait("c1", None)).unwrap(),
        Response::Exited(ExitStatus {
            code: 5,
            signal: None
        })
    );
    c.call(Request::Remove {
        id: "c1".into(),
        force: false,
    })
    .unwrap();

    // 3. SIGKILL -> 128 + 9.
    c.call(create("c2", "while true; do sleep 1; done"))
        .unwrap();
    c.call(Request::Start { id: "c2".into() }).unwrap();
    c.call(Request::Signal {
        id: "c2".into(),
        exec_id: None,
        signal: 9,
        all: false,
    })
    .unwrap();
    assert_eq!(
        c.call(wait("c2", None)).unwrap(),
        Response::Exited(ExitStatus {
            code: 137,
            signal: Some(9)
        })
    );
    c.call(Request::Remove {
        id: "c2".into(),
        force: false,
    })
    .unwrap();

    assert_eq!(c.call(Request::Shutdown).unwrap(), Response::Ok);
    // Closing our end lets the agent reset at once (it waits up to 1 s for that).
    drop(c);
    let st = vm.wait(Duration::from_secs(60));
    eprintln!("containers: whole VM {:?}", t.elapsed());
    assert!(st.success(), "crx-vmm: {st}\n{}", vm.logs());
}
