//! Without a VM: descriptor passing, the host pty pair, raw mode, and the pump with a
//! socketpair standing in for the guest's `pty` stream.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::mpsc;
use std::time::Duration;

use crx_proto::{read_message, write_message, Request, RequestFrame, Response, ResponseFrame};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::termios::{self, LocalFlags};

use super::*;

/// Reads from `f` until `want` bytes came (each read waits at most 5 s).
fn read_n(f: &mut (impl Read + AsFd), want: usize) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while got.len() < want {
        let mut fds = [PollFd::new(f.as_fd(), PollFlags::POLLIN)];
        assert!(
            poll(&mut fds, PollTimeout::from(5000u16)).unwrap() > 0,
            "timed out; got {got:?}"
        );
        let n = f.read(&mut buf).unwrap();
        assert!(n > 0, "end of file; got {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    got
}

#[test]
fn master_travels_over_a_console_socket_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("console.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let pair = open_pty().unwrap();
    send_console(&path, &pair.master, PTMX_NAME).unwrap();
    let (conn, _) = listener.accept().unwrap();
    let (name, master) = recv_fd(&conn).unwrap();
    assert_eq!(name, "/dev/ptmx");
    // The received descriptor is the same master: bytes reach the slave, unchanged (raw).
    drop(pair.master);
    let mut master = File::from(master);
    master.write_all(b"a\rb\n").unwrap();
    let mut slave = File::from(pair.slave.try_clone().unwrap());
    assert_eq!(read_n(&mut slave, 4), b"a\rb\n");
}

#[test]
fn recv_without_a_descriptor_is_an_error() {
    let (mut a, b) = UnixStream::pair().unwrap();
    a.write_all(b"/dev/ptmx").unwrap();
    assert!(matches!(recv_fd(&b), Err(TtyError::NoFd)));
    assert!(matches!(
        send_console(Path::new("/nonexistent/console.sock"), &a, PTMX_NAME),
        Err(TtyError::ConnectConsole { .. })
    ));
}

#[test]
fn window_size_and_raw_mode() {
    let pair = open_pty().unwrap();
    let (r, _w) = nix::unistd::pipe().unwrap();
    assert_eq!(window_size(&r), None);
    let s = WinSize {
        rows: 33,
        cols: 111,
    };
    set_window_size(&pair.master, s).unwrap();
    assert_eq!(window_size(&pair.slave), Some(s));

    // A cooked terminal goes raw and comes back.
    let mut t = termios::tcgetattr(&pair.slave).unwrap();
    t.local_flags |= LocalFlags::ICANON | LocalFlags::ECHO;
    termios::tcsetattr(&pair.slave, SetArg::TCSANOW, &t).unwrap();
    {
        let _raw = RawMode::enter(&pair.slave).unwrap();
        let now = termios::tcgetattr(&pair.slave).unwrap();
        assert!(!now.local_flags.contains(LocalFlags::ICANON));
        assert!(!now.local_flags.contains(LocalFlags::ECHO));
    }
    let back = termios::tcgetattr(&pair.slave).unwrap();
    assert!(back
        .local_flags
        .contains(LocalFlags::ICANON | LocalFlags::ECHO));
}

#[test]
fn pump_relays_a_host_pty_and_its_window_size() {
    let pair = open_pty().unwrap();
    set_window_size(&pair.master, WinSize { rows: 24, cols: 80 }).unwrap();
    let (near, mut far) = UnixStream::pair().unwrap();
    let (tx, rx) = mpsc::channel();
    let slave = pair.slave;
    let (i, o) = (slave.try_clone().unwrap(), slave.try_clone().unwrap());
    let pumping = std::thread::spawn(move || {
        pump(Some(i), o, near, Some(slave), |s| {
            let _ = tx.send(s);
        })
    });
    let wait = Duration::from_secs(5);
    assert_eq!(rx.recv_timeout(wait), Ok(WinSize { rows: 24, cols: 80 }));

    // Host pty -> guest stream, byte for byte.
    let mut master = File::from(pair.master.try_clone().unwrap());
    master.write_all(b"ls -l\r\x03").unwrap();
    let got = read_n(&mut far, 7);
    assert_eq!(got, b"ls -l\r\x03");
    // Guest stream -> host pty.
    far.write_all(b"out\r\n").unwrap();
    assert_eq!(read_n(&mut master, 5), b"out\r\n");
    // The owner of the master resizes: reported once.
    set_window_size(
        &pair.master,
        WinSize {
            rows: 50,
            cols: 132,
        },
    )
    .unwrap();
    assert_eq!(
        rx.recv_timeout(wait),
        Ok(WinSize {
            rows: 50,
            cols: 132
        })
    );
    assert!(rx.recv_timeout(SIZE_POLL * 3).is_err());

    // The guest ends the stream: the pump returns.
    drop(far);
    pumping.join().unwrap().unwrap();
}

#[test]
fn pump_ends_with_the_guest_even_when_our_output_is_gone() {
    let (near, mut far) = UnixStream::pair().unwrap();
    let (r, w) = nix::unistd::pipe().unwrap();
    drop(r); // writes to `w` fail (EPIPE): the stream is read and dropped.
    let pumping = std::thread::spawn(move || pump(None, w, near, None, |_| {}));
    far.write_all(&vec![b'x'; 256 * 1024]).unwrap();
    drop(far);
    pumping.join().unwrap().unwrap();
}

#[test]
fn relay_console_hands_a_master_over_and_relays_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("console.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let (near, mut far) = UnixStream::pair().unwrap();
    let (tx, rx) = mpsc::channel();
    let p = path.clone();
    let relaying = std::thread::spawn(move || {
        relay_console(&p, near, |s| {
            let _ = tx.send(s);
        })
    });
    // What containerd's shim does with runc's console socket.
    let (conn, _) = listener.accept().unwrap();
    let (name, master) = recv_fd(&conn).unwrap();
    assert_eq!(name, PTMX_NAME);
    set_window_size(&master, WinSize { rows: 25, cols: 90 }).unwrap();
    // The fresh pair's 0x0 is not reported; ours is.
    let wait = Duration::from_secs(5);
    assert_eq!(rx.recv_timeout(wait), Ok(WinSize { rows: 25, cols: 90 }));
    let mut master = File::from(master);
    master.write_all(b"x\r").unwrap();
    assert_eq!(read_n(&mut far, 2), b"x\r");
    far.write_all(b"y\r\n").unwrap();
    assert_eq!(read_n(&mut master, 3), b"y\r\n");
    // The guest ends the stream: the relay returns.
    drop(far);
    relaying.join().unwrap().unwrap();
}

#[test]
fn end_of_input_is_a_veof_and_the_output_goes_on() {
    let (near, mut far) = UnixStream::pair().unwrap();
    let (r, w) = nix::unistd::pipe().unwrap();
    let (out_r, out_w) = nix::unistd::pipe().unwrap();
    let pumping = std::thread::spawn(move || pump(Some(r), out_w, near, None, |_| {}));
    File::from(w).write_all(b"hi\n").unwrap(); // and closed
    assert_eq!(read_n(&mut far, 4), b"hi\n\x04");
    far.write_all(b"bye").unwrap();
    assert_eq!(read_n(&mut File::from(out_r), 3), b"bye");
    drop(far);
    pumping.join().unwrap().unwrap();
}

#[test]
fn resizes_become_resize_pty_requests() {
    // A stand-in for the VMM's hybrid vsock socket and the agent behind it.
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("vsock.sock");
    let listener = UnixListener::bind(&uds).unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert_eq!(line, "CONNECT 1024\n");
        let mut w = s;
        w.write_all(b"OK 1\n").unwrap();
        while let Ok(Some(f)) = read_message::<RequestFrame, _>(&mut r) {
            let response = match f.request {
                Request::Hello { version } => Response::HelloOk { version },
                other => {
                    tx.send(other).unwrap();
                    Response::Ok
                }
            };
            write_message(&mut w, &ResponseFrame { id: f.id, response }).unwrap();
        }
    });
    let mut resize = agent_resizer(Agent::new(&uds), "c1".into(), Some("e1".into()));
    resize(WinSize { rows: 7, cols: 9 });
    resize(WinSize { rows: 8, cols: 10 });
    let wait = Duration::from_secs(5);
    for (rows, cols) in [(7, 9), (8, 10)] {
        assert_eq!(
            rx.recv_timeout(wait).unwrap(),
            Request::ResizePty {
                id: "c1".into(),
                exec_id: Some("e1".into()),
                rows,
                cols
            }
        );
    }
}
