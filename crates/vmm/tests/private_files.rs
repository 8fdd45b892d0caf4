//! crx-vmm creates its files private (0600: the vsock socket, the console) whatever the
//! caller's umask: it runs with umask 0177 from its first instruction. Seen from outside while
//! it blocks reading its config from a FIFO (no KVM needed).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The `Umask:` line of `/proc/PID/status`.
fn umask_of(pid: u32) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .map(|v| v.trim().to_owned())
}

fn mkfifo(p: &Path) {
    let st = Command::new("mkfifo").arg(p).status().unwrap();
    assert!(st.success());
}

#[test]
fn the_vmm_runs_with_a_private_umask() {
    let t = tempfile::tempdir().unwrap();
    let fifo = t.path().join("config.toml");
    mkfifo(&fifo);
    let mut vmm = Command::new(env!("CARGO_BIN_EXE_crx-vmm"))
        .arg("--config")
        .arg(&fifo)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // It blocks opening the FIFO, so its umask stays what main set; until then it is ours
    // (a liveness bound, not a timing assertion).
    let end = Instant::now() + Duration::from_secs(30);
    let mut seen = umask_of(vmm.id());
    while Instant::now() < end && seen.as_deref() != Some("0177") {
        std::thread::sleep(Duration::from_millis(10));
        seen = umask_of(vmm.id());
    }
    // Unblock it: an empty config, which it refuses.
    drop(std::fs::OpenOptions::new().write(true).open(&fifo).unwrap());
    let _ = vmm.wait();
    assert_eq!(seen.as_deref(), Some("0177"));
}
