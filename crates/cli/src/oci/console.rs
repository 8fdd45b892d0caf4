//! `run` of a container with a terminal and no `--console-socket`: our own terminal becomes
//! the container's, as with runc. We are the console socket: we receive the pty master the
//! monitor sends, give it our window size, and relay our stdin and stdout with it (our
//! terminal raw meanwhile; the guest's terminal does the line discipline).

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use crx_runtime::tty;

/// A console socket of ours, waiting for the master.
pub struct OwnConsole {
    path: PathBuf,
    master: Receiver<Result<OwnedFd, String>>,
}

/// While the container runs: our terminal raw (restored on drop), the relay threads.
pub struct Attached {
    _raw: Option<tty::RawMode>,
    output_done: Receiver<()>,
}

/// Binds a console socket in the temporary directory and accepts one sender on a thread.
pub fn listen() -> Result<OwnConsole> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let path = std::env::temp_dir().join(format!(
        "crx-runc-console-{}-{nanos:x}.sock",
        std::process::id()
    ));
    let listener =
        UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let got = listener
            .accept()
            .map_err(|e| e.to_string())
            .and_then(|(s, _)| tty::recv_fd(&s).map_err(|e| e.to_string()));
        let _ = tx.send(got.map(|(_, fd)| fd));
    });
    Ok(OwnConsole { path, master: rx })
}

impl OwnConsole {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes the master (sent during `create`) and starts relaying it with our stdio.
    pub fn attach(self) -> Result<Attached> {
        let got = self.master.recv_timeout(Duration::from_secs(10));
        let _ = std::fs::remove_file(&self.path);
        let master = got
            .map_err(|_| anyhow!("no pty master arrived on our console socket"))?
            .map_err(|e| anyhow!("receiving the pty master: {e}"))?;
        let stdin = std::io::stdin();
        if let Some(size) = tty::window_size(stdin.as_fd()) {
            let _ = tty::set_window_size(&master, size);
        }
        let raw = if std::io::IsTerminal::is_terminal(&stdin) {
            Some(tty::RawMode::enter(stdin.as_fd())?)
        } else {
            None
        };
        let mut to_master = std::fs::File::from(master.try_clone()?);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut input = std::io::stdin().lock();
            while let Ok(n) = input.read(&mut buf) {
                if n == 0 || to_master.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
        let mut from_master = std::fs::File::from(master);
        let (done_tx, done_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Ends with EIO once the last slave closes (the monitor exited).
            while let Ok(n) = from_master.read(&mut buf) {
                let mut out = std::io::stdout().lock();
                if n == 0 || out.write_all(&buf[..n]).and_then(|()| out.flush()).is_err() {
                    break;
                }
            }
            let _ = done_tx.send(());
        });
        Ok(Attached {
            _raw: raw,
            output_done: done_rx,
        })
    }
}

impl Attached {
    /// Waits (up to two seconds) for the output still in flight once the container exited.
    pub fn drain(&self) {
        let _ = self.output_done.recv_timeout(Duration::from_secs(2));
    }
}
