//! The vhost-user connection a [`Fs`](super::Fs) device drives: a narrow trait over rust-vmm's
//! `vhost::vhost_user::Frontend` (the real backend, e.g. virtiofsd) so that the device's
//! negotiation and activation are unit-tested against a recording mock.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vmm_sys_util::eventfd::EventFd;

/// What the device needs of a vhost-user frontend connection. Every call is one request (and
/// reply, where the protocol has one) on the backend's socket.
pub trait VhostUserConn: Send {
    /// VHOST_USER_GET_FEATURES.
    fn get_features(&mut self) -> vhost::Result<u64>;
    /// VHOST_USER_SET_FEATURES.
    fn set_features(&mut self, features: u64) -> vhost::Result<()>;
    /// VHOST_USER_GET_PROTOCOL_FEATURES (only if the backend offers `PROTOCOL_FEATURES`).
    fn get_protocol_features(&mut self) -> vhost::Result<u64>;
    /// VHOST_USER_SET_PROTOCOL_FEATURES.
    fn set_protocol_features(&mut self, features: u64) -> vhost::Result<()>;
    /// VHOST_USER_SET_MEM_TABLE, with one fd per region.
    fn set_mem_table(&mut self, regions: &[VhostUserMemoryRegionInfo]) -> vhost::Result<()>;
    /// VHOST_USER_SET_VRING_NUM.
    fn set_vring_num(&mut self, queue: usize, num: u16) -> vhost::Result<()>;
    /// VHOST_USER_SET_VRING_ADDR (addresses in this process's virtual address space).
    fn set_vring_addr(&mut self, queue: usize, config: &VringConfigData) -> vhost::Result<()>;
    /// VHOST_USER_SET_VRING_BASE.
    fn set_vring_base(&mut self, queue: usize, base: u16) -> vhost::Result<()>;
    /// VHOST_USER_GET_VRING_BASE (stops the ring).
    fn get_vring_base(&mut self, queue: usize) -> vhost::Result<u32>;
    /// VHOST_USER_SET_VRING_CALL.
    fn set_vring_call(&mut self, queue: usize, fd: &EventFd) -> vhost::Result<()>;
    /// VHOST_USER_SET_VRING_KICK.
    fn set_vring_kick(&mut self, queue: usize, fd: &EventFd) -> vhost::Result<()>;
    /// VHOST_USER_SET_VRING_ENABLE (only with `PROTOCOL_FEATURES` negotiated).
    fn set_vring_enable(&mut self, queue: usize, enable: bool) -> vhost::Result<()>;
    /// The socket, watched by the event loop for the backend hanging up.
    fn socket_fd(&self) -> Option<RawFd>;
}

/// A connected vhost-user socket (rust-vmm's `Frontend`), owner already set.
pub struct SocketConn {
    frontend: Frontend,
    fd: RawFd,
}

/// How long one request may wait for the backend before it counts as failed: a stuck backend
/// stalls the vCPU that activates the device for at most this long per request.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to a vhost-user backend listening on `path` and sends VHOST_USER_SET_OWNER.
pub fn connect(path: &Path, queues: usize) -> Result<SocketConn, ConnectError> {
    let sock = UnixStream::connect(path).map_err(ConnectError::Connect)?;
    sock.set_read_timeout(Some(REPLY_TIMEOUT))
        .and_then(|()| sock.set_write_timeout(Some(REPLY_TIMEOUT)))
        .map_err(ConnectError::Connect)?;
    let fd = sock.as_raw_fd();
    let frontend = Frontend::from_stream(sock, queues as u64);
    frontend.set_owner().map_err(ConnectError::SetOwner)?;
    Ok(SocketConn { frontend, fd })
}

/// Errors connecting to a vhost-user backend.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The socket could not be connected (is the backend running?).
    #[error("cannot connect to the vhost-user socket (is the backend running?)")]
    Connect(#[source] std::io::Error),
    /// VHOST_USER_SET_OWNER failed.
    #[error("vhost-user SET_OWNER failed")]
    SetOwner(#[source] vhost::Error),
}

impl VhostUserConn for SocketConn {
    fn get_features(&mut self) -> vhost::Result<u64> {
        self.frontend.get_features()
    }
    fn set_features(&mut self, features: u64) -> vhost::Result<()> {
        self.frontend.set_features(features)
    }
    fn get_protocol_features(&mut self) -> vhost::Result<u64> {
        self.frontend.get_protocol_features().map(|f| f.bits())
    }
    fn set_protocol_features(&mut self, features: u64) -> vhost::Result<()> {
        self.frontend
            .set_protocol_features(VhostUserProtocolFeatures::from_bits_truncate(features))
    }
    fn set_mem_table(&mut self, regions: &[VhostUserMemoryRegionInfo]) -> vhost::Result<()> {
        self.frontend.set_mem_table(regions).map(|_| ())
    }
    fn set_vring_num(&mut self, queue: usize, num: u16) -> vhost::Result<()> {
        self.frontend.set_vring_num(queue, num)
    }
    fn set_vring_addr(&mut self, queue: usize, config: &VringConfigData) -> vhost::Result<()> {
        self.frontend.set_vring_addr(queue, config)
    }
    fn set_vring_base(&mut self, queue: usize, base: u16) -> vhost::Result<()> {
        self.frontend.set_vring_base(queue, base)
    }
    fn get_vring_base(&mut self, queue: usize) -> vhost::Result<u32> {
        self.frontend.get_vring_base(queue)
    }
    fn set_vring_call(&mut self, queue: usize, fd: &EventFd) -> vhost::Result<()> {
        self.frontend.set_vring_call(queue, fd)
    }
    fn set_vring_kick(&mut self, queue: usize, fd: &EventFd) -> vhost::Result<()> {
        self.frontend.set_vring_kick(queue, fd)
    }
    fn set_vring_enable(&mut self, queue: usize, enable: bool) -> vhost::Result<()> {
        self.frontend.set_vring_enable(queue, enable)
    }
    fn socket_fd(&self) -> Option<RawFd> {
        Some(self.fd)
    }
}
