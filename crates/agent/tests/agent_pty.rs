//! Host tier: terminals. crx-init runs as an ordinary root process on a Unix socket and creates
//! real containers (libcontainer) from a busybox directory, in a private mount namespace with
//! cgroup2 on /sys/fs/cgroup (the helper is cgroup v2 only; a hybrid host like this project's
//! has cgroup2 under `unified`, mounted there for the agent) and a tmpfs on /run (the agent's
//! state). Needs root and util-linux `unshare`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crx_proto::*;

mod common;
use common::*;

/// A pty stream connection for `id` (or its exec), accepted by the agent.
fn pty_stream(sock: &Path, id: &str, exec_id: Option<&str>) -> UnixStream {
    let mut s = connect(sock);
    let h = StreamHeader {
        version: PROTOCOL_VERSION,
        id: id.into(),
        exec_id: exec_id.map(Into::into),
        stream: StreamKind::Pty,
    };
    write_message(&mut s, &h).unwrap();
    let r: ResponseFrame = read_message(&mut s).unwrap().unwrap();
    assert_eq!(r.response, Response::Ok);
    s
}

/// Reads until `needle` has been seen (panics at end of stream or timeout).
fn read_until(s: &mut UnixStream, got: &mut String, needle: &str) {
    let mut buf = [0u8; 4096];
    while !got.contains(needle) {
        let n = s
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("waiting for {needle:?}: {e}; got {got:?}"));
        assert!(n > 0, "end of stream before {needle:?}; got {got:?}");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

fn read_to_end(s: &mut UnixStream, got: &mut String) {
    let mut v = Vec::new();
    s.read_to_end(&mut v).expect("the pty stream ends");
    got.push_str(&String::from_utf8_lossy(&v));
}

fn spec(cmd: &str) -> serde_json::Value {
    serde_json::json!({
        "ociVersion": "1.0.2",
        "process": process(cmd, true),
        "root": {"path": "rootfs", "readonly": false},
        "hostname": "ctr",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}
        ],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]}
    })
}

#[test]
fn terminals_for_init_and_exec_resize_and_hang_up() {
    let mut f = Fixture::new();
    let id = format!("pty{}", std::process::id());

    // terminal: true without a pty stream: refused, nothing created.
    let e = f.create(&id, spec("true")).unwrap_err();
    assert!(
        matches!(&e, ClientError::Agent(a) if a.kind == ErrorKind::InvalidRequest),
        "{e:?}"
    );

    // The init: its terminal sized before it starts; it reads a line from it.
    let mut init = pty_stream(&f.sock, &id, None);
    f.create(
        &id,
        spec("tty; stty size; read line; echo got:$line; exit 7"),
    )
    .unwrap();
    let resize = |c: &mut Client<UnixStream>, exec_id: Option<&str>, rows, cols| {
        c.call(Request::ResizePty {
            id: id.clone(),
            exec_id: exec_id.map(Into::into),
            rows,
            cols,
        })
    };
    resize(&mut f.c, None, 30, 100).unwrap();
    f.c.call(Request::Start { id: id.clone() }).unwrap();
    let mut out = String::new();
    read_until(&mut init, &mut out, "30 100");
    assert!(out.contains("/dev/pts/0"), "{out:?}");

    // An exec with its own terminal, resized while it waits for input.
    let mut ex = pty_stream(&f.sock, &id, Some("e1"));
    f.c.call(Request::Exec {
        id: id.clone(),
        exec_id: "e1".into(),
        process: process("read x; tty; stty size; exit 5", true),
    })
    .unwrap();
    resize(&mut f.c, Some("e1"), 12, 40).unwrap();
    ex.write_all(b"go\n").unwrap();
    let mut exout = String::new();
    read_to_end(&mut ex, &mut exout);
    assert!(exout.contains("/dev/pts/1"), "{exout:?}");
    assert!(exout.contains("12 40"), "{exout:?}");
    assert_eq!(f.wait(&id, Some("e1")), 5);
    // Its terminal is gone with it.
    let e = resize(&mut f.c, Some("e1"), 1, 1).unwrap_err();
    assert!(matches!(&e, ClientError::Agent(a) if a.kind == ErrorKind::NotFound));

    // Output the host reads late is held back (the process blocks), not lost.
    let mut ex3 = pty_stream(&f.sock, &id, Some("e3"));
    f.c.call(Request::Exec {
        id: id.clone(),
        exec_id: "e3".into(),
        process: process("yes | head -c 300000; exit 2", true),
    })
    .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let mut bulk = String::new();
    read_to_end(&mut ex3, &mut bulk);
    // 150000 lines of "y", "\r\n" line ends on a terminal.
    assert_eq!(bulk.len(), 450_000);
    assert_eq!(bulk.matches("y\r\n").count(), 150_000);
    assert_eq!(f.wait(&id, Some("e3")), 2);

    // A host that goes away: the terminal hangs up, SIGHUP ends the process.
    // It goes once the process runs on its terminal (a master closed before libcontainer made
    // the terminal the process's controlling one hangs up nobody).
    let mut ex2 = pty_stream(&f.sock, &id, Some("e2"));
    f.c.call(Request::Exec {
        id: id.clone(),
        exec_id: "e2".into(),
        process: process("echo ready; sleep 1000", true),
    })
    .unwrap();
    read_until(&mut ex2, &mut String::new(), "ready");
    drop(ex2);
    assert_eq!(f.wait(&id, Some("e2")), 128 + 1);

    // close_stdin on a terminal: a pending partial line is delivered, then end-of-file.
    let mut ex4 = pty_stream(&f.sock, &id, Some("e4"));
    f.c.call(Request::Exec {
        id: id.clone(),
        exec_id: "e4".into(),
        process: process(
            "stty -echo; echo ready; echo \"n=$(($(wc -c)))\"; exit 6",
            true,
        ),
    })
    .unwrap();
    let mut e4out = String::new();
    read_until(&mut ex4, &mut e4out, "ready");
    ex4.write_all(b"abc\nde").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    f.c.call(Request::CloseStdin {
        id: id.clone(),
        exec_id: Some("e4".into()),
    })
    .unwrap();
    read_to_end(&mut ex4, &mut e4out);
    assert!(e4out.contains("n=6"), "{e4out:?}");
    assert_eq!(f.wait(&id, Some("e4")), 6);

    // Input reaches the init through its terminal (echoed by the line discipline).
    init.write_all(b"hello\n").unwrap();
    read_to_end(&mut init, &mut out);
    assert!(out.contains("got:hello"), "{out:?}");
    assert_eq!(f.wait(&id, None), 7);
    assert_eq!(f.c.call(Request::Ping).unwrap(), Response::Pong);
    f.remove(&id);

    f.shut_down();
}
