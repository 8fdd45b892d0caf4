//! `crx-runc` with a terminal, in the nested lab (see `lab_oci.rs`): the pty master sent to
//! `--console-socket`, and `run` on our own terminal.

mod cli_lab;

use std::fs;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use cli_lab::{runc_cmd, wait_child, Lab};
use crx_testkit::{code, text};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use serde_json::json;

/// Reads `master` on a thread until it fails (the last slave closed); chunks on the channel.
fn read_master(master: std::os::fd::OwnedFd) -> std::sync::mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut f = fs::File::from(master);
        let mut buf = [0u8; 4096];
        while let Ok(n) = std::io::Read::read(&mut f, &mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    rx
}

/// Collects from `rx` until the text contains `want`.
fn until(rx: &std::sync::mpsc::Receiver<Vec<u8>>, seen: &mut String, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !seen.contains(want) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(b) => seen.push_str(&text(&b)),
            Err(_) => panic!("never saw {want:?}: {seen:?}"),
        }
    }
}

/// A console socket: accepts one connection on a thread and receives the pty master.
fn console_socket(path: &Path) -> std::thread::JoinHandle<(String, std::os::fd::OwnedFd)> {
    let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        crx_runtime::tty::recv_fd(&s).unwrap()
    })
}

/// `process.terminal` with `--console-socket`: the pty master arrives there (as runc sends
/// it); the container's terminal is in the guest; `exec -t` gets a terminal of its own.
#[test]
fn lab_oci_terminal_through_the_console_socket() {
    let lab = Lab::new();
    let b = lab.bundle(
        "b5",
        &["sh", "-c", "tty; read x; echo got:$x; read y; exit 6"],
        json!({"process": {"terminal": true}}),
    );
    let root = lab.root();
    // Without a console socket: refused, nothing left.
    let no = lab.runc(&["create", "--bundle", b.to_str().unwrap(), "t0"]);
    assert_eq!(code(&no), 1);
    assert!(
        text(&no.stderr).contains("--console-socket"),
        "{}",
        text(&no.stderr)
    );
    let sock = lab.dir.path().join("console.sock");
    let t = console_socket(&sock);
    let st = runc_cmd(
        &root,
        &[
            "create",
            "--bundle",
            b.to_str().unwrap(),
            "--console-socket",
            sock.to_str().unwrap(),
            "t1",
        ],
    )
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .status()
    .unwrap();
    assert!(st.success());
    let (name, master) = t.join().unwrap();
    assert_eq!(name, "/dev/ptmx");
    let mut input = fs::File::from(master.try_clone().unwrap());
    let rx = read_master(master);
    let pid = lab.state("t1")["pid"].as_i64().unwrap() as i32;
    assert_eq!(code(&lab.runc(&["start", "t1"])), 0);
    let mut seen = String::new();
    until(&rx, &mut seen, "/dev/pts/0");
    std::io::Write::write_all(&mut input, b"hi\n").unwrap();
    until(&rx, &mut seen, "got:hi");

    // exec -t: its own terminal, through its own console socket.
    let sock2 = lab.dir.path().join("console2.sock");
    let t2 = console_socket(&sock2);
    let r2 = root.clone();
    let s2 = sock2.clone();
    let exec = std::thread::spawn(move || {
        runc_cmd(
            &r2,
            &[
                "exec",
                "-t",
                "--console-socket",
                s2.to_str().unwrap(),
                "t1",
                "sh",
                "-c",
                "tty; read z; echo z=$z; exit 5",
            ],
        )
        .stdin(Stdio::null())
        .output()
        .unwrap()
    });
    let (_, m2) = t2.join().unwrap();
    let m2_in = m2.try_clone().unwrap();
    let rx2 = read_master(m2);
    let mut seen2 = String::new();
    until(&rx2, &mut seen2, "/dev/pts/1");
    // (It reads before exiting: output still in flight when the last slave closes may be
    // lost on the master's side.)
    let mut in2 = fs::File::from(m2_in);
    std::io::Write::write_all(&mut in2, b"zz\n").unwrap();
    until(&rx2, &mut seen2, "z=zz");
    let out = exec.join().unwrap();
    assert_eq!(code(&out), 5, "exec -t: {}", text(&out.stderr));

    std::io::Write::write_all(&mut input, b"bye\n").unwrap();
    assert_eq!(wait_child(pid), WaitStatus::Exited(Pid::from_raw(pid), 6));
    assert_eq!(code(&lab.runc(&["delete", "t1"])), 0);
    assert!(!root.join("t0").exists());
}

/// `run` of a container with a terminal and no `--console-socket`: our terminal (here a pty
/// made by the test) is the container's, with its window size; the exit code is the
/// container's.
#[test]
fn lab_oci_run_uses_our_terminal() {
    use crx_runtime::tty;
    let lab = Lab::new();
    let b = lab.bundle(
        "b7",
        &["sh", "-c", "tty; stty size; read x; echo got:$x; exit 7"],
        json!({"process": {"terminal": true}}),
    );
    let pair = tty::open_pty().unwrap();
    tty::set_window_size(
        &pair.master,
        tty::WinSize {
            rows: 30,
            cols: 100,
        },
    )
    .unwrap();
    let mut child = runc_cmd(&lab.root(), &["run", "--bundle", b.to_str().unwrap(), "t7"])
        .stdin(Stdio::from(pair.slave.try_clone().unwrap()))
        .stdout(Stdio::from(pair.slave.try_clone().unwrap()))
        .spawn()
        .unwrap();
    drop(pair.slave);
    let mut input = fs::File::from(pair.master.try_clone().unwrap());
    let rx = read_master(pair.master);
    let mut seen = String::new();
    until(&rx, &mut seen, "/dev/pts/0");
    until(&rx, &mut seen, "30 100");
    std::io::Write::write_all(&mut input, b"hi\n").unwrap();
    until(&rx, &mut seen, "got:hi");
    assert_eq!(child.wait().unwrap().code(), Some(7), "{seen:?}");
    assert!(!lab.root().join("t7").exists());
}
