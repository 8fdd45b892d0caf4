//! virtio-fs (device type 26) served by a vhost-user backend in another process (virtiofsd).
//!
//! The VMM keeps the virtio-mmio registers and the config space (tag + number of request
//! queues); at DRIVER_OK it hands the backend the guest memory table (memfd regions), each
//! queue's size and ring addresses, the queue notification eventfds (which the VMM registered
//! as ioeventfds, so guest kicks go straight to the backend) and one "call" eventfd per queue.
//! The event loop watches the call eventfds and raises the device's interrupt with
//! InterruptStatus set (virtio-mmio needs the status bit, so the backend cannot signal the
//! irqfd directly), and watches the socket so a backend that dies is logged, not waited for.

mod backend;
#[cfg(test)]
mod tests;

use std::os::fd::{AsRawFd, RawFd};

use vhost::{VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub use backend::{connect, ConnectError, SocketConn, VhostUserConn, REPLY_TIMEOUT};

use std::sync::atomic::Ordering;

use crate::state::DeviceStateError;

use super::{
    read_config_bytes, ActivateError, EventSet, FdOp, Mem, VirtioDevice, VirtioDeviceState,
    TYPE_FS, VIRTIO_F_VERSION_1,
};

/// Longest tag (bytes, no NUL needed when it fills the field), virtio 1.2 5.11.4.
pub const TAG_LEN: usize = 36;
/// Request queues (the hiprio queue comes first and is not counted).
pub const NUM_REQUEST_QUEUES: usize = 1;
/// Maximum size of each queue.
pub const QUEUE_SIZE: u16 = 1024;
/// vhost-user feature bit: the backend speaks protocol features.
pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;
/// Protocol feature bit MQ (several queues); the only one acknowledged.
pub const PROTOCOL_F_MQ: u64 = 1 << 0;
/// Virtio features passed through from the backend to the driver: indirect descriptors,
/// event index, version 1. Others (packed rings, notification data, platform access) need
/// transport support this VMM lacks.
pub const PASSTHROUGH_FEATURES: u64 = (1 << 28) | (1 << 29) | VIRTIO_F_VERSION_1;

const QUEUE_SIZES: [u16; 1 + NUM_REQUEST_QUEUES] = [QUEUE_SIZE; 1 + NUM_REQUEST_QUEUES];

/// Errors creating or activating a virtio-fs device.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The tag is empty, longer than 36 bytes or contains a NUL.
    #[error("tag {0:?} must be 1 to 36 bytes without NUL")]
    BadTag(String),
    /// A vhost-user request failed (the backend died, refused or did not answer in time).
    #[error("vhost-user {0} failed")]
    Request(&'static str, #[source] vhost::Error),
    /// Guest RAM is not backed by a shareable file (the VMM must create it from a memfd).
    #[error("guest RAM is not shareable with the backend (no memfd behind a region)")]
    RamNotShared,
    /// A ring address is not in guest RAM.
    #[error("queue {0} ring address is outside guest RAM")]
    RingOutsideRam(usize),
    /// Creating an eventfd failed.
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    /// The backend hung up earlier.
    #[error("the vhost-user backend has closed its socket")]
    BackendGone,
}

/// A virtio-fs device whose requests a vhost-user backend serves.
pub struct Fs {
    config: [u8; TAG_LEN + 4],
    conn: Box<dyn VhostUserConn>,
    backend_features: u64,
    protocol_features: bool,
    calls: Vec<EventFd>,
    fd_ops: Vec<FdOp>,
    activated: bool,
    backend_gone: bool,
}

fn req<T>(what: &'static str, r: vhost::Result<T>) -> Result<T, FsError> {
    r.map_err(|e| FsError::Request(what, e))
}

impl Fs {
    /// A device for the file system the guest mounts as `tag`, served over `conn` (owner set).
    /// Reads the backend's features now, so they can be offered to the driver.
    pub fn new(tag: &str, mut conn: Box<dyn VhostUserConn>) -> Result<Self, FsError> {
        if tag.is_empty() || tag.len() > TAG_LEN || tag.contains('\0') {
            return Err(FsError::BadTag(tag.to_owned()));
        }
        let mut config = [0u8; TAG_LEN + 4];
        config[..tag.len()].copy_from_slice(tag.as_bytes());
        config[TAG_LEN..].copy_from_slice(&(NUM_REQUEST_QUEUES as u32).to_le_bytes());
        let backend_features = req("GET_FEATURES", conn.get_features())?;
        let protocol_features = backend_features & VHOST_USER_F_PROTOCOL_FEATURES != 0;
        if protocol_features {
            let offered = req("GET_PROTOCOL_FEATURES", conn.get_protocol_features())?;
            req(
                "SET_PROTOCOL_FEATURES",
                conn.set_protocol_features(offered & PROTOCOL_F_MQ),
            )?;
        }
        let mut calls = Vec::new();
        let mut fd_ops = Vec::new();
        for _ in QUEUE_SIZES {
            let evt = EventFd::new(EFD_NONBLOCK).map_err(FsError::EventFd)?;
            fd_ops.push(FdOp::Add(evt.as_raw_fd(), EventSet::IN));
            calls.push(evt);
        }
        if let Some(fd) = conn.socket_fd() {
            // No IN: the backend sends nothing unasked on this socket; hang-ups always report.
            fd_ops.push(FdOp::Add(fd, EventSet::READ_HANG_UP | EventSet::HANG_UP));
        }
        Ok(Self {
            config,
            conn,
            backend_features,
            protocol_features,
            calls,
            fd_ops,
            activated: false,
            backend_gone: false,
        })
    }

    /// How many queues the device has (hiprio + request queues).
    pub fn queue_count() -> usize {
        QUEUE_SIZES.len()
    }

    /// The virtio features the backend offered (before masking).
    pub fn backend_features(&self) -> u64 {
        self.backend_features
    }

    /// Sends the whole vring setup to the backend (vhost-user "start the device").
    fn setup_backend(
        &mut self,
        acked: u64,
        mem: &Mem,
        queues: &[Queue],
        kicks: &[EventFd],
    ) -> Result<(), FsError> {
        if self.backend_gone {
            return Err(FsError::BackendGone);
        }
        let protocol = if self.protocol_features {
            VHOST_USER_F_PROTOCOL_FEATURES
        } else {
            0
        };
        let conn = &mut self.conn;
        req("SET_FEATURES", conn.set_features(acked | protocol))?;
        let regions = mem
            .iter()
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| FsError::RamNotShared)?;
        req("SET_MEM_TABLE", conn.set_mem_table(&regions))?;
        for (i, (q, kick)) in queues.iter().zip(kicks).enumerate() {
            if !q.ready() {
                continue;
            }
            let hva = |gpa: GuestAddress| {
                mem.get_host_address(gpa)
                    .map(|p| p as u64)
                    .map_err(|_| FsError::RingOutsideRam(i))
            };
            let ring = VringConfigData {
                queue_max_size: q.max_size(),
                queue_size: q.size(),
                flags: 0,
                desc_table_addr: hva(GuestAddress(q.desc_table()))?,
                used_ring_addr: hva(GuestAddress(q.used_ring()))?,
                avail_ring_addr: hva(GuestAddress(q.avail_ring()))?,
                log_addr: None,
            };
            req("SET_VRING_NUM", conn.set_vring_num(i, q.size()))?;
            req("SET_VRING_ADDR", conn.set_vring_addr(i, &ring))?;
            req("SET_VRING_BASE", conn.set_vring_base(i, q.next_avail()))?;
            req("SET_VRING_CALL", conn.set_vring_call(i, &self.calls[i]))?;
            req("SET_VRING_KICK", conn.set_vring_kick(i, kick))?;
            if self.protocol_features {
                req("SET_VRING_ENABLE", conn.set_vring_enable(i, true))?;
            }
        }
        Ok(())
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        TYPE_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        self.backend_features & PASSTHROUGH_FEATURES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data)
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        crate::guest_warn!("virtio-fs: the config space is read-only");
    }

    fn activate_queues(
        &mut self,
        acked_features: u64,
        mem: &Mem,
        queues: &[Queue],
        queue_evts: &[EventFd],
    ) -> Result<(), ActivateError> {
        self.setup_backend(acked_features, mem, queues, queue_evts)
            .map_err(|e| ActivateError::Backend(Box::new(e)))?;
        self.activated = true;
        Ok(())
    }

    fn handles_queue_events(&self) -> bool {
        false
    }

    fn process_queue(&mut self, _mem: &Mem, _queues: &mut [Queue], _index: usize) -> bool {
        false
    }

    fn process_host_event(
        &mut self,
        active: Option<(&Mem, &mut [Queue])>,
        fd: RawFd,
        _events: EventSet,
    ) -> bool {
        if Some(fd) == self.conn.socket_fd() {
            if !self.backend_gone {
                log::error!("virtio-fs: the vhost-user backend closed its socket");
                self.backend_gone = true;
                self.fd_ops.push(FdOp::Remove(fd));
            }
            return false;
        }
        match self.calls.iter().find(|c| c.as_raw_fd() == fd) {
            Some(call) => {
                let _ = call.read();
                active.is_some()
            }
            None => false,
        }
    }

    fn drain_fd_ops(&mut self, apply: &mut dyn FnMut(FdOp)) {
        for op in self.fd_ops.drain(..) {
            apply(op);
        }
    }

    /// virtiofsd's FUSE session (inodes, open files) cannot be saved, so a snapshot is taken
    /// only before the guest asked anything of the share: no request made available on any
    /// queue (the driver's `avail.idx`, read from guest memory, still 0). That is a VM whose
    /// driver probed the device but never mounted it, as a template: a restore then hands the
    /// rings to the clone's own virtiofsd, whose session starts at the guest's first mount.
    fn save_state(
        &self,
        mem: &Mem,
        queues: &[Queue],
    ) -> Result<VirtioDeviceState, DeviceStateError> {
        if !self.activated {
            return Ok(VirtioDeviceState::Stateless);
        }
        for q in queues.iter().filter(|q| q.ready()) {
            match q.avail_idx(mem, Ordering::Acquire) {
                Ok(idx) if idx.0 == 0 => {}
                _ => {
                    return Err(DeviceStateError::NotSnapshottable(
                        "virtio-fs",
                        "the guest has used the share (virtiofsd's session is not saved)",
                    ))
                }
            }
        }
        Ok(VirtioDeviceState::Stateless)
    }

    fn reset(&mut self) {
        if self.activated && !self.backend_gone {
            // GET_VRING_BASE stops each ring; a new DRIVER_OK sets everything up again.
            for i in 0..QUEUE_SIZES.len() {
                if let Err(e) = self.conn.get_vring_base(i) {
                    log::warn!("virtio-fs: cannot stop queue {i} at reset: {e}");
                }
            }
        }
        for c in &self.calls {
            let _ = c.read();
        }
        self.activated = false;
    }
}
