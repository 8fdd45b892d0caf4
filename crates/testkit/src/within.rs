//! A command run to its end within a time limit: a hang fails the test that met it, soon and
//! with what every process of the lab was doing, instead of the whole test binary at the
//! lab's limit with no word of which step hung.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Runs `cmd` (stdin closed, stdout and stderr captured) to its end. Past `limit` the child is
/// killed and this panics with its output so far, `ps` of every process, and the last lines of
/// each file in `logs`, and of each `*.log` under those of them that are directories (the
/// console and VMM logs of the sandboxes under a runtime's state root, say).
pub fn output_within(cmd: &mut Command, limit: Duration, logs: &[&Path]) -> Output {
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {:?}: {e}", cmd.get_program()));
    let (tx, rx) = mpsc::channel();
    let bufs: [Buffer; 2] = Default::default();
    let out = reader(
        child.stdout.take().map(|r| Box::new(r) as _),
        &bufs[0],
        tx.clone(),
    );
    let err = reader(child.stderr.take().map(|r| Box::new(r) as _), &bufs[1], tx);
    let mut exited = false;
    let mut ended = 0;
    while !exited || ended < 2 {
        let left = limit.saturating_sub(started.elapsed());
        if left.is_zero() {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{} did not finish within {} s (exited: {exited})\n{}",
                describe(cmd),
                limit.as_secs(),
                report(&bufs, ended, logs)
            );
        }
        if !exited {
            exited = child.try_wait().expect("waiting for a child").is_some();
        }
        if rx.recv_timeout(left.min(Duration::from_millis(50))).is_ok() {
            ended += 1;
        }
    }
    let _ = (out.join(), err.join());
    // Reaped by `try_wait` already: this gives the status it kept.
    let status = child.wait().expect("waiting for a child");
    let [stdout, stderr] = bufs.map(|b| std::mem::take(&mut *lock(&b)));
    Output {
        status,
        stdout,
        stderr,
    }
}

type Source = Option<Box<dyn Read + Send>>;
type Buffer = Arc<Mutex<Vec<u8>>>;

fn lock(b: &Buffer) -> std::sync::MutexGuard<'_, Vec<u8>> {
    b.lock().unwrap_or_else(|e| e.into_inner())
}

/// A thread that appends what `source` gives to `buf` as it comes, and says when it ended.
fn reader(source: Source, buf: &Buffer, ended: mpsc::Sender<()>) -> thread::JoinHandle<()> {
    let buf = Arc::clone(buf);
    thread::spawn(move || {
        if let Some(mut s) = source {
            let mut chunk = [0u8; 4096];
            while let Ok(n @ 1..) = s.read(&mut chunk) {
                lock(&buf).extend_from_slice(&chunk[..n]);
            }
        }
        let _ = ended.send(());
    })
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// What a hang report says: the child's output so far, `ps`, and the logs' last lines.
fn report(bufs: &[Buffer; 2], ended: usize, logs: &[&Path]) -> String {
    let mut r = format!("--- output streams ended: {ended} of 2\n");
    for (name, b) in ["stdout", "stderr"].iter().zip(bufs) {
        r.push_str(&format!("--- {name} so far:\n{}\n", crate::text(&lock(b))));
    }
    let ps = Command::new("ps")
        .args(["-eo", "pid,ppid,stat,etime,wchan:24,args"])
        .output()
        .map(|o| crate::text(&o.stdout))
        .unwrap_or_else(|e| format!("ps: {e}"));
    r.push_str(&format!("--- ps:\n{ps}"));
    for log in logs.iter().flat_map(|p| log_files(p, 4)) {
        let text = std::fs::read_to_string(&log).unwrap_or_else(|e| format!("({e})"));
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        r.push_str(&format!("--- {} (last lines):\n{tail}\n", log.display()));
    }
    r
}

/// `path` itself when a file; the `*.log` files under it, `depth` levels down, when a directory.
fn log_files(path: &Path, depth: u32) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(path) else {
        return vec![path.to_owned()];
    };
    let mut found = Vec::new();
    for e in entries.flatten() {
        let p = e.path();
        let dir = e.file_type().is_ok_and(|t| t.is_dir());
        if dir && depth > 0 {
            found.extend(log_files(&p, depth - 1).into_iter().filter(|f| f != &p));
        } else if !dir && p.extension().is_some_and(|x| x == "log") {
            found.push(p);
        }
    }
    found.sort();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_within_its_limit_gives_its_output_and_status() {
        let out = output_within(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(30),
            &[],
        );
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(crate::text(&out.stdout), "out\n");
        assert_eq!(crate::text(&out.stderr), "err\n");
    }

    #[test]
    fn a_command_past_its_limit_is_killed_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sandbox")).unwrap();
        let log = dir.path().join("sandbox/console.log");
        std::fs::write(&log, "first\nlast line of the log\n").unwrap();
        let started = Instant::now();
        let panic = std::panic::catch_unwind(|| {
            output_within(
                Command::new("sh").args(["-c", "echo begun; exec sleep 30"]),
                Duration::from_millis(500),
                &[dir.path()],
            )
        })
        .expect_err("a hang must fail");
        assert!(started.elapsed() < Duration::from_secs(20));
        let said = panic.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(said.contains("did not finish within"), "{said}");
        assert!(said.contains("--- ps:"), "{said}");
        assert!(said.contains("begun"), "{said}");
        assert!(said.contains("last line of the log"), "{said}");
    }
}
