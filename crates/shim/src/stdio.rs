//! A process's stdio between containerd's FIFOs (paths in the requests) and the agent's
//! streams: a thread per direction. Output is copied until the stream ends; after the process
//! exits, what is still in flight is copied for [`DRAIN`] at most (the exit event follows).

use std::fs::File;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long output still arriving after the exit is copied.
pub const DRAIN: Duration = Duration::from_secs(2);

/// containerd's FIFO paths for a process (empty: none) and whether it has a terminal.
#[derive(Debug, Clone, Default)]
pub struct Paths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// The running copies of one process.
#[derive(Debug, Default)]
pub struct Copies {
    outputs: Vec<(JoinHandle<()>, Option<UnixStream>)>,
    /// The stream stdin goes to (closed by `CloseIO`).
    stdin: Option<UnixStream>,
}

/// Copies `from` (an agent stream) into the FIFO `path` (opened in the thread: it waits
/// for containerd's reader) until the stream ends; discarded without a path.
fn copy_out(mut from: UnixStream, path: String) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let _ = from.set_read_timeout(None);
        let mut to: Box<dyn Write> = match path.is_empty() {
            true => Box::new(std::io::sink()),
            false => match std::fs::OpenOptions::new().write(true).open(&path) {
                Ok(f) => Box::new(f),
                Err(_) => Box::new(std::io::sink()),
            },
        };
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        // containerd's reader went away: drain, so the process never blocks.
                        to = Box::new(std::io::sink());
                    }
                }
            }
        }
    })
}

/// Copies the FIFO `path` into `to` (an agent stream) until containerd closes it, then
/// ends the stream's input (end of file for the process); at once without a path.
fn copy_in(to: UnixStream, path: String, close_after: bool) {
    std::thread::spawn(move || {
        let _ = to.set_write_timeout(None);
        if !path.is_empty() {
            if let Ok(mut from) = File::open(&path) {
                let mut to = &to;
                let _ = std::io::copy(&mut from, &mut to);
            }
        }
        if close_after {
            let _ = to.shutdown(Shutdown::Write);
        }
    });
}

impl Copies {
    /// Starts the copies of a process with separate streams.
    pub fn stdio(s: crx_runtime::relay::Stdio, p: &Paths) -> Copies {
        let stdin = s.stdin.try_clone().ok();
        copy_in(s.stdin, p.stdin.clone(), true);
        let out = s.stdout.try_clone().ok();
        let err = s.stderr.try_clone().ok();
        Copies {
            outputs: vec![
                (copy_out(s.stdout, p.stdout.clone()), out),
                (copy_out(s.stderr, p.stderr.clone()), err),
            ],
            stdin,
        }
    }

    /// Starts the copies of a process with a terminal (one stream both ways).
    pub fn pty(s: UnixStream, p: &Paths) -> Copies {
        let out = s.try_clone().ok();
        let input = s.try_clone();
        if let Ok(i) = input {
            copy_in(i, p.stdin.clone(), false);
        }
        Copies {
            outputs: vec![(copy_out(s, p.stdout.clone()), out)],
            stdin: None,
        }
    }

    /// Ends the process's stdin (`CloseIO`).
    pub fn close_stdin(&mut self) {
        if let Some(s) = self.stdin.take() {
            let _ = s.shutdown(Shutdown::Write);
        }
    }

    /// Waits for the output copies to end, at most [`DRAIN`]; then ends them.
    pub fn drain(self) {
        let deadline = Instant::now() + DRAIN;
        for (h, stream) in self.outputs {
            while !h.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if let Some(s) = stream {
                let _ = s.shutdown(Shutdown::Both);
            }
            let _ = h.join();
        }
    }
}
