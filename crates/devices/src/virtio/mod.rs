//! Virtio devices over the virtio-mmio transport (virtio 1.x "modern" only, register layout
//! version 2).
//!
//! Shape: each device ([`blk::Block`], [`net::Net`], [`rng::Rng`], [`vsock::Vsock`]) implements
//! [`VirtioDevice`]: config space, features and pure queue handlers that take guest memory and
//! the queues as arguments (unit-tested with `virtio_queue::mock`). [`MmioTransport`] owns the
//! register state and the queues and implements [`BusDevice`](crate::bus::BusDevice) for the
//! vCPU threads. [`VirtioSubscriber`] is the thin adapter that lets the VMM's single event-loop
//! thread (event-manager) drive it. The transport is shared between both as
//! `Arc<Mutex<MmioTransport<D>>>`.

pub mod blk;
pub mod fs;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod net;
mod queue;
pub mod ratelimit;
pub mod rng;
mod subscriber;
#[cfg(test)]
mod test_utils;
#[cfg(test)]
mod tests;
mod transport;
pub mod vsock;

use std::io;
use std::os::fd::RawFd;

pub use event_manager::EventSet;
pub use queue::{Chain, Mem};
pub use subscriber::VirtioSubscriber;
pub use transport::{
    cmdline_fragment, status, MmioTransport, QueueState, TransportError, TransportSnapshot,
    TransportState, VirtioDeviceState, INT_CONFIG, INT_USED_RING, MMIO_SIZE, QUEUE_NOTIFY_OFFSET,
};

use crate::state::DeviceStateError;
pub use virtio_queue::Queue;
pub use vm_memory::GuestMemoryMmap;
pub use vmm_sys_util::eventfd::EventFd;

/// Virtio device type of a network device.
pub const TYPE_NET: u32 = 1;
/// Virtio device type of a block device.
pub const TYPE_BLOCK: u32 = 2;
/// Virtio device type of an entropy source.
pub const TYPE_RNG: u32 = 4;
/// Virtio device type of a vsock device.
pub const TYPE_VSOCK: u32 = 19;
/// Virtio device type of a file system device (virtio-fs).
pub const TYPE_FS: u32 = 26;

/// The name of virtio device type `t`, for messages.
pub fn type_name(t: u32) -> &'static str {
    match t {
        TYPE_NET => "virtio-net",
        TYPE_BLOCK => "virtio-blk",
        TYPE_RNG => "virtio-rng",
        TYPE_VSOCK => "virtio-vsock",
        TYPE_FS => "virtio-fs",
        _ => "virtio device",
    }
}

/// Feature bit: the device conforms to virtio 1.x (required: legacy devices are not offered).
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// How a device raises its interrupt line. The VMM hands in an irqfd (`EventFd`, registered
/// with KVM) or, in tests, anything that records the calls.
pub trait Interrupt: Send + Sync {
    /// Raises the interrupt (edge: the guest reads InterruptStatus to learn why).
    fn trigger(&self) -> io::Result<()>;
}

impl Interrupt for EventFd {
    fn trigger(&self) -> io::Result<()> {
        self.write(1)
    }
}

/// A change a device asks of the event loop for one of its host file descriptors (vsock's Unix
/// sockets). The fd stays open until the change has been applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdOp {
    /// Start watching `fd` for these events.
    Add(RawFd, EventSet),
    /// Watch `fd` (already added) for these events instead.
    Modify(RawFd, EventSet),
    /// Stop watching `fd`.
    Remove(RawFd),
}

/// Errors a device reports when the driver sets DRIVER_OK.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver enabled a queue whose rings are not in guest memory or are misaligned.
    #[error("queue {0} has rings outside guest memory or misaligned")]
    BadQueue(usize),
    /// The driver did not enable a queue the device needs.
    #[error("queue {0} was not made ready by the driver")]
    QueueNotReady(usize),
    /// The device's backend (another process, vhost-user) refused or failed the setup.
    #[error("backend setup failed")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// A virtio device model, independent of its transport.
///
/// Every method may be called with arbitrary guest-controlled state and must not panic.
pub trait VirtioDevice: Send {
    /// The virtio device type (`TYPE_*`).
    fn device_type(&self) -> u32;
    /// The maximum size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// The features the device offers (including [`VIRTIO_F_VERSION_1`]).
    fn features(&self) -> u64;
    /// Reads the device-specific config space; bytes beyond it read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device-specific config space (ignored by default: all ours are read-only).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Called once the driver sets DRIVER_OK, with the features it acknowledged.
    fn activate(&mut self, _acked_features: u64) -> Result<(), ActivateError> {
        Ok(())
    }
    /// What the transport calls at DRIVER_OK: the queues as the driver configured them and
    /// their notification eventfds, for devices whose queues another process serves
    /// (vhost-user). The default calls [`VirtioDevice::activate`].
    fn activate_queues(
        &mut self,
        acked_features: u64,
        _mem: &Mem,
        _queues: &[Queue],
        _queue_evts: &[EventFd],
    ) -> Result<(), ActivateError> {
        self.activate(acked_features)
    }
    /// Whether the event loop watches the queue eventfds and calls
    /// [`VirtioDevice::process_queue`]; `false` when the device hands them to its backend.
    fn handles_queue_events(&self) -> bool {
        true
    }
    /// Processes the available buffers of queue `index` (after a guest notification). Returns
    /// whether buffers were put in a used ring, i.e. whether to interrupt the guest.
    fn process_queue(&mut self, mem: &Mem, queues: &mut [Queue], index: usize) -> bool;
    /// Handles readiness of one of the device's host fds (see [`VirtioDevice::drain_fd_ops`]).
    /// `active` is `None` until the device is activated. Returns whether to interrupt.
    fn process_host_event(
        &mut self,
        _active: Option<(&Mem, &mut [Queue])>,
        _fd: RawFd,
        _events: EventSet,
    ) -> bool {
        false
    }
    /// Hands the pending fd watch changes to `apply`, in order.
    fn drain_fd_ops(&mut self, _apply: &mut dyn FnMut(FdOp)) {}
    /// Returns the device to its initial state (the driver wrote 0 to Status).
    fn reset(&mut self);
    /// The device's own state for a snapshot, given its queues as the driver set them up (a
    /// device served elsewhere reads their rings to see what the guest asked). The default
    /// refuses: a device must say what it keeps before a snapshot may include it.
    fn save_state(
        &self,
        _mem: &Mem,
        _queues: &[Queue],
    ) -> Result<VirtioDeviceState, DeviceStateError> {
        Err(DeviceStateError::NotSnapshottable(
            type_name(self.device_type()),
            "its state is not saved by this version",
        ))
    }
    /// Restores what [`VirtioDevice::save_state`] saved (before the transport re-activates);
    /// returns whether the configuration space now differs from what the guest saw (the
    /// transport then raises a configuration-change interrupt).
    fn restore_state(&mut self, state: &VirtioDeviceState) -> Result<bool, DeviceStateError> {
        match state {
            VirtioDeviceState::Stateless => Ok(false),
            _ => Err(DeviceStateError::Mismatch(
                type_name(self.device_type()),
                "state saved by another kind of device".into(),
            )),
        }
    }
    /// Called once after a restore re-activated the device, with its queues: a device tells
    /// the guest here what the restore changed (vsock: its connections are gone). Returns
    /// whether to interrupt the guest.
    fn restored(&mut self, _mem: &Mem, _queues: &mut [Queue]) -> bool {
        false
    }
}

impl<D: VirtioDevice + ?Sized> VirtioDevice for Box<D> {
    fn device_type(&self) -> u32 {
        (**self).device_type()
    }
    fn queue_max_sizes(&self) -> &[u16] {
        (**self).queue_max_sizes()
    }
    fn features(&self) -> u64 {
        (**self).features()
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        (**self).read_config(offset, data)
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        (**self).write_config(offset, data)
    }
    fn activate(&mut self, acked_features: u64) -> Result<(), ActivateError> {
        (**self).activate(acked_features)
    }
    fn activate_queues(
        &mut self,
        acked_features: u64,
        mem: &Mem,
        queues: &[Queue],
        queue_evts: &[EventFd],
    ) -> Result<(), ActivateError> {
        (**self).activate_queues(acked_features, mem, queues, queue_evts)
    }
    fn handles_queue_events(&self) -> bool {
        (**self).handles_queue_events()
    }
    fn process_queue(&mut self, mem: &Mem, queues: &mut [Queue], index: usize) -> bool {
        (**self).process_queue(mem, queues, index)
    }
    fn process_host_event(
        &mut self,
        active: Option<(&Mem, &mut [Queue])>,
        fd: RawFd,
        events: EventSet,
    ) -> bool {
        (**self).process_host_event(active, fd, events)
    }
    fn drain_fd_ops(&mut self, apply: &mut dyn FnMut(FdOp)) {
        (**self).drain_fd_ops(apply)
    }
    fn reset(&mut self) {
        (**self).reset()
    }
    fn save_state(
        &self,
        mem: &Mem,
        queues: &[Queue],
    ) -> Result<VirtioDeviceState, DeviceStateError> {
        (**self).save_state(mem, queues)
    }
    fn restore_state(&mut self, state: &VirtioDeviceState) -> Result<bool, DeviceStateError> {
        (**self).restore_state(state)
    }
    fn restored(&mut self, mem: &Mem, queues: &mut [Queue]) -> bool {
        (**self).restored(mem, queues)
    }
}

/// Copies `config[offset..]` into `data`, zero-filling whatever lies beyond `config`.
pub(crate) fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = config.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}
