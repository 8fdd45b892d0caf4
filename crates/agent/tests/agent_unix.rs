//! Host tier: crx-init runs as an ordinary process serving the agent protocol on a Unix socket.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crx_proto::*;

mod common;
use common::{connect, shut_down, Agent};

fn start(sock: &Path) -> Agent {
    let child = Command::new(env!("CARGO_BIN_EXE_crx-init"))
        .arg("--agent")
        .arg("--listen")
        .arg(format!("unix:{}", sock.display()))
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn crx-init");
    let agent = Agent(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while UnixStream::connect(sock).is_err() {
        assert!(
            Instant::now() < deadline,
            "agent did not listen on {}",
            sock.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    agent
}

fn raw_call(s: &mut UnixStream, payload: &[u8]) -> ResponseFrame {
    write_frame(s, payload).unwrap();
    read_message(s)
        .unwrap()
        .expect("agent closed the connection")
}

#[test]
fn hello_ping_malformed_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let agent = start(&sock);

    // Requests before the handshake are refused; a wrong version is refused.
    let mut s = connect(&sock);
    let r = raw_call(&mut s, br#"{"id":5,"request":{"op":"ping"}}"#);
    assert_eq!(r.id, 5);
    assert!(matches!(r.response, Response::Error(e) if e.kind == ErrorKind::HandshakeRequired));
    let r = raw_call(
        &mut s,
        br#"{"id":6,"request":{"op":"hello","version":999}}"#,
    );
    assert!(matches!(r.response, Response::Error(e) if e.kind == ErrorKind::VersionMismatch));

    // Handshake and ping through the client.
    let mut c = Client::handshake(s).unwrap();
    assert_eq!(c.call(Request::Ping).unwrap(), Response::Pong);
    let mut s = c.into_inner();

    // Malformed payloads get an error reply (with the id when it can be read) and the session
    // goes on.
    for (payload, id) in [
        (&b"not json"[..], 0),
        (br#"{"id":9,"request":{"op":"frobnicate"}}"#, 9),
        (br#"{"id":10}"#, 10),
        (b"", 0),
        (&[0xff, 0xfe, 0x00][..], 0),
    ] {
        let r = raw_call(&mut s, payload);
        assert_eq!(r.id, id);
        assert!(matches!(r.response, Response::Error(e) if e.kind == ErrorKind::Malformed));
    }
    // Container requests reach the container helper, which knows no such container.
    let r = raw_call(&mut s, br#"{"id":11,"request":{"op":"start","id":"c1"}}"#);
    assert!(matches!(r.response, Response::Error(e) if e.kind == ErrorKind::NotFound));
    // A resize of a process without a terminal: a typed error, not a hang-up.
    let r = raw_call(
        &mut s,
        br#"{"id":13,"request":{"op":"resize_pty","id":"c1","exec_id":null,"rows":1,"cols":2}}"#,
    );
    assert_eq!(r.id, 13);
    assert!(matches!(r.response, Response::Error(e) if e.kind == ErrorKind::NotFound));
    let r = raw_call(&mut s, br#"{"id":12,"request":{"op":"ping"}}"#);
    assert_eq!(
        r,
        ResponseFrame {
            id: 12,
            response: Response::Pong
        }
    );

    // An oversized frame: an error, then the connection closes; the agent lives on.
    let mut bad = connect(&sock);
    bad.write_all(&u32::MAX.to_be_bytes()).unwrap();
    let r: ResponseFrame = read_message(&mut bad).unwrap().unwrap();
    assert!(matches!(r.response, Response::Error(e) if e.kind == ErrorKind::Malformed));
    let mut rest = Vec::new();
    assert_eq!(bad.read_to_end(&mut rest).unwrap(), 0);
    // A connection cut mid-frame does not hurt either.
    let mut cut = connect(&sock);
    cut.write_all(&[0, 0, 0, 50, b'{']).unwrap();
    drop(cut);

    // Stdio and pty stream connections: accepted and kept for their container.
    for (kind, ok) in [(StreamKind::Stdout, true), (StreamKind::Pty, true)] {
        let mut st = connect(&sock);
        let h = StreamHeader {
            version: PROTOCOL_VERSION,
            id: "c9".into(),
            exec_id: None,
            stream: kind,
        };
        write_message(&mut st, &h).unwrap();
        let r: ResponseFrame = read_message(&mut st).unwrap().unwrap();
        assert_eq!(r.response == Response::Ok, ok, "{kind:?}: {r:?}");
    }

    let mut c = Client::handshake(connect(&sock)).unwrap();
    assert_eq!(c.call(Request::Ping).unwrap(), Response::Pong);
    // The agent waits (up to 1 s) for the host to close this connection before it exits.
    shut_down(agent, c);
}

#[test]
fn run_mode_reports_exit_status() {
    let bin = env!("CARGO_BIN_EXE_crx-init");
    let out = Command::new(bin)
        .args(["--run", "/bin/sh", "-c", "echo hello; exit 3"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3));
    assert!(stdout.contains("hello\n"), "{stdout}");
    assert!(stdout.ends_with("crx-init: exit status 3\n"), "{stdout}");

    let out = Command::new(bin)
        .args(["--run", "/bin/sh", "-c", "kill -9 $$"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.ends_with("crx-init: exit status 137\n"), "{stdout}");

    let out = Command::new(bin)
        .args(["--run", "/nonexistent/prog"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.ends_with("crx-init: exit status 127\n"), "{stdout}");
    assert_eq!(out.status.code(), Some(127));
}

#[test]
fn refuses_to_run_without_a_mode() {
    let out = Command::new(env!("CARGO_BIN_EXE_crx-init"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not PID 1"));
}

/// A port-forward connection (`PortHeader`): joined to that port on the agent's loopback, both
/// ways with half closes; a port nothing listens on is refused with `NotFound`.
#[test]
fn a_port_header_joins_the_connection_to_that_loopback_port() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let agent = start(&sock);
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let echo = std::thread::spawn(move || {
        let (mut s, _) = server.accept().unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        s.write_all(b"echo: ").unwrap();
        s.write_all(&got).unwrap();
    });
    let open = |forward_port| {
        let mut s = connect(&sock);
        let h = PortHeader {
            version: PROTOCOL_VERSION,
            forward_port,
        };
        write_message(&mut s, &h).unwrap();
        let r: ResponseFrame = read_message(&mut s).unwrap().unwrap();
        (s, r.response)
    };
    let (mut s, r) = open(port);
    assert_eq!(r, Response::Ok);
    s.write_all(b"ping").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).unwrap();
    assert_eq!(back, b"echo: ping");
    echo.join().unwrap();
    let free = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (mut s, r) = open(free);
    assert!(matches!(r, Response::Error(e) if e.kind == ErrorKind::NotFound));
    assert_eq!(
        s.read(&mut [0u8; 1]).unwrap(),
        0,
        "closed after the refusal"
    );
    shut_down(agent, Client::handshake(connect(&sock)).unwrap());
}
