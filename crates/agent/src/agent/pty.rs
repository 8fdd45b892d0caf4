//! Terminals of container processes (`process.terminal: true`).
//!
//! The pty is made by libcontainer inside the container (its own devpts, so `tty` in the
//! container names `/dev/pts/N` there), which sends the master over a *console socket*, as runc
//! does for `--console-socket`: the agent listens on a Unix socket under [`CONSOLE_DIR`], the
//! helper gives its path to libcontainer, and once the helper has created the process the agent
//! takes the master from the one connection (SCM_RIGHTS, with the name `/dev/ptmx`). The agent
//! then relays it with the host's `pty` stream ([`super::relay`]) and keeps a duplicate here
//! for `resize_pty` (TIOCSWINSZ).

use std::collections::HashMap;
use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};

/// Where the console sockets live (one per process being created, removed once used).
pub const CONSOLE_DIR: &str = "/run/crx/consoles";

/// How long the agent waits for the master after the helper created the process (it was sent
/// before the helper answered; this only bounds a broken sender).
const MASTER_TIMEOUT: Duration = Duration::from_secs(10);

type Key = (String, Option<String>);

/// The masters of live terminals, by container id and exec id.
#[derive(Default)]
pub struct Ptys {
    map: Mutex<HashMap<Key, Arc<OwnedFd>>>,
}

impl Ptys {
    /// Keeps `master` for `(id, exec_id)` until [`Ptys::forget`].
    pub fn insert(&self, id: &str, exec_id: Option<&str>, master: Arc<OwnedFd>) {
        self.lock()
            .insert((id.to_string(), exec_id.map(str::to_string)), master);
    }

    /// Drops the entry of `(id, exec_id)` if it is still `master`.
    pub fn forget(&self, id: &str, exec_id: Option<&str>, master: &Arc<OwnedFd>) {
        let mut m = self.lock();
        let key = (id.to_string(), exec_id.map(str::to_string));
        if m.get(&key).is_some_and(|x| Arc::ptr_eq(x, master)) {
            m.remove(&key);
        }
    }

    /// Whether `(id, exec_id)` has a terminal.
    pub fn has(&self, id: &str, exec_id: Option<&str>) -> bool {
        self.lock()
            .contains_key(&(id.to_string(), exec_id.map(str::to_string)))
    }

    /// Sets the window size of the terminal of `(id, exec_id)`; `false` if it has none.
    pub fn resize(
        &self,
        id: &str,
        exec_id: Option<&str>,
        rows: u16,
        cols: u16,
    ) -> std::io::Result<bool> {
        let master = self
            .lock()
            .get(&(id.to_string(), exec_id.map(str::to_string)))
            .cloned();
        match master {
            Some(m) => set_window_size(m.as_raw_fd(), rows, cols).map(|()| true),
            None => Ok(false),
        }
    }

    /// Closes the input of the terminal of `(id, exec_id)` as far as a terminal can: writes its
    /// end-of-file character (VEOF, ^D) to the master, twice in canonical mode (the first ends
    /// a pending partial line, the second reads as end-of-file; one more is harmless, as a
    /// closed pipe reads end-of-file again), once in raw mode (where the program decides what
    /// ^D means). `false` if it has no terminal.
    pub fn end_input(&self, id: &str, exec_id: Option<&str>) -> std::io::Result<bool> {
        use nix::sys::termios::{tcgetattr, LocalFlags, SpecialCharacterIndices};
        let master = self
            .lock()
            .get(&(id.to_string(), exec_id.map(str::to_string)))
            .cloned();
        let Some(m) = master else {
            return Ok(false);
        };
        let t = tcgetattr(m.as_fd())?;
        let eof = t.control_chars[SpecialCharacterIndices::VEOF as usize];
        let canonical = t.local_flags.contains(LocalFlags::ICANON);
        let bytes = if canonical { vec![eof, eof] } else { vec![eof] };
        nix::unistd::write(m.as_fd(), &bytes)?;
        Ok(true)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Arc<OwnedFd>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// TIOCSWINSZ on a pty master (or slave).
pub fn set_window_size(fd: RawFd, rows: u16, cols: u16) -> std::io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer, which points to a live local;
    // `fd` is an open descriptor owned by the caller (a bad one only gets EBADF/ENOTTY).
    let r = unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws as *const libc::winsize) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A console socket waiting for one master.
pub struct ConsoleSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ConsoleSocket {
    /// Listens on a fresh path under [`CONSOLE_DIR`].
    pub fn bind() -> std::io::Result<ConsoleSocket> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        std::fs::create_dir_all(CONSOLE_DIR)?;
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = Path::new(CONSOLE_DIR).join(format!("{}-{n}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        Ok(ConsoleSocket { listener, path })
    }

    /// The socket's path, for libcontainer's `with_console_socket`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts the process's connection and receives the master it sends.
    pub fn receive_master(&self) -> std::io::Result<OwnedFd> {
        let timeout = || std::io::Error::new(std::io::ErrorKind::TimedOut, "no console connection");
        if !wait_readable(&self.listener, MASTER_TIMEOUT)? {
            return Err(timeout());
        }
        let (conn, _) = self.listener.accept()?;
        if !wait_readable(&conn, MASTER_TIMEOUT)? {
            return Err(timeout());
        }
        recv_fd(&conn)
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn wait_readable(fd: &impl AsFd, timeout: Duration) -> std::io::Result<bool> {
    let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    Ok(poll(&mut fds, PollTimeout::from(ms))? > 0)
}

/// Receives one descriptor (and its name, which is dropped) from `conn`.
fn recv_fd(conn: &UnixStream) -> std::io::Result<OwnedFd> {
    let mut name = [0u8; 256];
    let mut iov = [IoSliceMut::new(&mut name)];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<UnixAddr>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut got = None;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for fd in fds {
                // SAFETY: SCM_RIGHTS installed `fd` in this process just now; nothing else
                // owns it. Extra descriptors are wrapped too, so that they are closed.
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                got.get_or_insert(owned);
            }
        }
    }
    got.ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the console connection carried no descriptor",
        )
    })
}
