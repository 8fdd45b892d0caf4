//! virtio-vsock (device type 19) with Firecracker's hybrid vsock host side.
//!
//! Host to guest: a host process connects to the Unix socket at `uds_path`, writes
//! `CONNECT <port>\n`, and once the guest accepts reads `OK <hostport>\n`; from then on the
//! stream is the guest connection. Guest to host: a guest connection to host port `P`
//! (CID 2) is forwarded by connecting to the Unix socket `<uds_path>_<P>`.

mod connection;
mod muxer;
pub mod packet;
mod uds;

use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

use virtio_queue::{Queue, QueueT};

pub use connection::CONN_BUF_SIZE;
pub use muxer::{DEFAULT_CONNECT_TIMEOUT, MAX_CONNECTIONS, MAX_PENDING_HOST};

use super::queue::Mem;
use super::{read_config_bytes, EventSet, FdOp, VirtioDevice, TYPE_VSOCK, VIRTIO_F_VERSION_1};
use muxer::Muxer;

/// Queue size of each of the three queues.
pub const QUEUE_SIZE: u16 = 256;
/// Index of the receive (device to driver) queue.
pub const RXQ: usize = 0;
/// Index of the transmit (driver to device) queue.
pub const TXQ: usize = 1;
/// Index of the event queue (used once: the transport reset after a restore).
pub const EVQ: usize = 2;
/// `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`: the driver drops its connections and re-reads the
/// guest CID.
pub const EVENT_TRANSPORT_RESET: u32 = 0;

/// Errors creating a vsock device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// CIDs 0-2 are reserved and Linux uses 32-bit CIDs.
    #[error("guest CID {0} is invalid (use 3..=4294967294)")]
    InvalidCid(u64),
    /// Binding the host-side Unix socket failed.
    #[error("cannot listen on {0:?} (remove a stale socket file first)")]
    Bind(PathBuf, #[source] std::io::Error),
}

/// The vsock device.
pub struct Vsock {
    config: [u8; 8],
    muxer: Muxer,
    /// A restore put a transport reset on the event queue that the driver has not handled
    /// yet: nothing goes to the guest until it has (see [`Vsock::restored`]). The event
    /// queue's avail index then, which moves when the driver gives the buffer back.
    reset_pending: Option<u16>,
}

impl Vsock {
    /// A device for a guest with CID `guest_cid`, listening for host clients on `uds_path`.
    pub fn new(guest_cid: u64, uds_path: impl AsRef<Path>) -> Result<Self, VsockError> {
        if !(3..u64::from(u32::MAX)).contains(&guest_cid) {
            return Err(VsockError::InvalidCid(guest_cid));
        }
        let path = uds_path.as_ref();
        let muxer =
            Muxer::new(guest_cid, path).map_err(|e| VsockError::Bind(path.to_path_buf(), e))?;
        Ok(Self {
            config: guest_cid.to_le_bytes(),
            muxer,
            reset_pending: None,
        })
    }

    /// Changes how long a host client may take to send `CONNECT`, and the guest to answer,
    /// before the attempt is dropped (default [`DEFAULT_CONNECT_TIMEOUT`]).
    pub fn set_connect_timeout(&mut self, timeout: std::time::Duration) {
        self.muxer.set_connect_timeout(timeout)
    }

    /// The guest's CID.
    pub fn guest_cid(&self) -> u64 {
        u64::from_le_bytes(self.config)
    }

    /// The host-side listener path.
    pub fn uds_path(&self) -> &Path {
        self.muxer.uds_path()
    }

    /// Live connections.
    pub fn connection_count(&self) -> usize {
        self.muxer.connection_count()
    }

    /// Bytes the device holds for its connections (see [`CONN_BUF_SIZE`]).
    pub fn buffered_bytes(&self) -> usize {
        self.muxer.buffered_bytes()
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
    }
    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }
    fn process_queue(&mut self, mem: &Mem, queues: &mut [Queue], index: usize) -> bool {
        let mut used = false;
        if index == TXQ {
            if let Some(txq) = queues.get_mut(TXQ) {
                used |= self.muxer.process_tx(mem, txq);
            }
        }
        // The driver gives the event buffer back once it handled the transport reset (Linux:
        // its sockets reset, then the buffer refilled and the queue kicked). A notification
        // without a new buffer (the restore's own, spurious) changes nothing.
        let reset_done = index == EVQ
            && self.reset_pending.is_some_and(|at| {
                queues.get(EVQ).is_some_and(|q| {
                    q.avail_idx(mem, std::sync::atomic::Ordering::Acquire)
                        .is_ok_and(|now| now.0 != at)
                })
            });
        if reset_done {
            self.reset_pending = None;
        }
        // New RX buffers, or TX produced replies: fill what we can.
        if self.reset_pending.is_none() && (index == RXQ || index == TXQ || reset_done) {
            if let Some(rxq) = queues.get_mut(RXQ) {
                used |= self.muxer.process_rx(mem, rxq);
            }
        }
        self.muxer.sync_interest();
        used
    }
    fn process_host_event(
        &mut self,
        active: Option<(&Mem, &mut [Queue])>,
        fd: RawFd,
        events: EventSet,
    ) -> bool {
        let rxq = active
            .filter(|_| self.reset_pending.is_none())
            .and_then(|(mem, qs)| qs.get_mut(RXQ).map(|q| (mem, q)));
        self.muxer.process_host_event(rxq, fd, events)
    }
    fn drain_fd_ops(&mut self, apply: &mut dyn FnMut(FdOp)) {
        self.muxer.drain_fd_ops(apply)
    }
    fn reset(&mut self) {
        self.reset_pending = None;
        self.muxer.reset()
    }
    fn save_state(
        &self,
        _mem: &super::Mem,
        _queues: &[virtio_queue::Queue],
    ) -> Result<super::VirtioDeviceState, crate::state::DeviceStateError> {
        if self.muxer.connection_count() > 0 {
            return Err(crate::state::DeviceStateError::NotSnapshottable(
                "virtio-vsock",
                "it has live connections (their state is not saved)",
            ));
        }
        Ok(super::VirtioDeviceState::Stateless)
    }
    /// The restored guest may hold connections of the snapshotted VM, which this process never
    /// had: a transport reset makes it drop them all (and re-read its CID). Until the driver
    /// has handled that event, nothing is put on the receive queue: a host connection's
    /// request delivered first would be accepted by the guest, then dropped by the reset
    /// without a word to the host, whose client would wait for an answer forever (seen in the
    /// lab: a restored clone's agent did not answer within 120 s, its console saying
    /// "Transport endpoint is not connected"). Host clients that connect meanwhile wait in
    /// the muxer, bounded by its connect timeout.
    fn restored(&mut self, mem: &Mem, queues: &mut [Queue]) -> bool {
        let Some(evq) = queues.get_mut(EVQ) else {
            return false;
        };
        let Some(chain) = super::queue::pop_chain(evq, mem) else {
            crate::guest_warn!("virtio-vsock: no event buffer for the transport reset");
            return false;
        };
        let head = chain.head_index();
        let len = match virtio_queue::Writer::new(mem, chain) {
            Ok(mut w) => {
                use std::io::Write;
                match w.write_all(&EVENT_TRANSPORT_RESET.to_le_bytes()) {
                    Ok(()) => 4,
                    Err(_) => 0,
                }
            }
            Err(e) => {
                crate::guest_warn!("virtio-vsock: malformed event buffer: {e}");
                0
            }
        };
        if len > 0 {
            let avail = evq.avail_idx(mem, std::sync::atomic::Ordering::Acquire);
            self.reset_pending = Some(avail.map_or(0, |a| a.0));
        }
        super::queue::add_used(evq, mem, head, len)
    }
}
