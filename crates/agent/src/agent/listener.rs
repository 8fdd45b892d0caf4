//! The agent's transports: vsock in the guest, Unix sockets for host-tier tests.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use nix::sys::socket::{
    accept, bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, VsockAddr,
};

/// Where the agent listens: `vsock:PORT` (any CID) or `unix:PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Vsock(u32),
    Unix(PathBuf),
}

impl std::str::FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(p) = s.strip_prefix("unix:") {
            return Ok(ListenAddr::Unix(p.into()));
        }
        if let Some(p) = s.strip_prefix("vsock:") {
            return p
                .parse()
                .map(ListenAddr::Vsock)
                .map_err(|_| format!("bad vsock port {p:?}"));
        }
        Err(format!("{s:?}: expected vsock:PORT or unix:PATH"))
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Vsock(p) => write!(f, "vsock:{p}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// A listening socket.
pub enum Listener {
    Vsock(OwnedFd),
    Unix(UnixListener),
}

impl Listener {
    /// Binds and listens.
    pub fn bind(addr: &ListenAddr) -> io::Result<Listener> {
        match addr {
            ListenAddr::Unix(p) => {
                let _ = std::fs::remove_file(p);
                UnixListener::bind(p).map(Listener::Unix)
            }
            ListenAddr::Vsock(port) => {
                let fd = socket(
                    AddressFamily::Vsock,
                    SockType::Stream,
                    SockFlag::SOCK_CLOEXEC,
                    None,
                )?;
                use std::os::fd::AsRawFd;
                bind(fd.as_raw_fd(), &VsockAddr::new(libc::VMADDR_CID_ANY, *port))?;
                listen(&fd, Backlog::new(16).unwrap_or(Backlog::MAXCONN))?;
                Ok(Listener::Vsock(fd))
            }
        }
    }

    /// Waits for the next connection. Either kind is returned as a `File` over the connected
    /// socket (read/write on a stream socket are recv/send), so it can also be handed on as a
    /// descriptor (stdio streams).
    pub fn accept(&self) -> io::Result<File> {
        match self {
            Listener::Unix(l) => Ok(File::from(OwnedFd::from(l.accept()?.0))),
            Listener::Vsock(fd) => Ok(File::from(accept(fd)?)),
        }
    }
}
