//! The virtio-mmio transport, register layout version 2 (virtio 1.x, section 4.2.2).

use std::os::fd::RawFd;
use std::sync::Arc;

use virtio_bindings::virtio_ring::VRING_AVAIL_F_NO_INTERRUPT;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::queue::{rings_valid, Mem};
use super::{EventSet, FdOp, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::bus::BusDevice;
use crate::guest_warn;

mod state;

pub use state::{QueueState, TransportSnapshot, TransportState, VirtioDeviceState};

/// Size of the MMIO window of one device.
pub const MMIO_SIZE: u64 = 0x1000;
/// Offset of QueueNotify in the window: the VMM registers each queue's eventfd as an ioeventfd
/// at `base + QUEUE_NOTIFY_OFFSET` with a 4-byte datamatch on the queue index.
pub const QUEUE_NOTIFY_OFFSET: u64 = 0x50;

const MAGIC_VALUE: u32 = 0x7472_6976; // "virt"
const MMIO_VERSION: u32 = 2;
/// "CRX\0", little-endian.
const VENDOR_ID: u32 = 0x0058_5243;

const REG_MAGIC: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
const REG_VENDOR_ID: u64 = 0x00c;
const REG_DEVICE_FEATURES: u64 = 0x010;
const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM_MAX: u64 = 0x034;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
const REG_QUEUE_NOTIFY: u64 = QUEUE_NOTIFY_OFFSET;
const REG_INTERRUPT_STATUS: u64 = 0x060;
const REG_INTERRUPT_ACK: u64 = 0x064;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC_LOW: u64 = 0x080;
const REG_QUEUE_DESC_HIGH: u64 = 0x084;
const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
/// SHMLenLow..SHMBaseHigh: we have no shared memory regions, which reads as all ones.
const REG_SHM_FIRST: u64 = 0x0b0;
const REG_SHM_LAST: u64 = 0x0bc;
const REG_CONFIG_GENERATION: u64 = 0x0fc;
const CONFIG_SPACE: u64 = 0x100;

/// Device status bits (virtio 1.x, 2.1).
pub mod status {
    /// The guest found the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u32 = 2;
    /// The driver is ready: the device is activated.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    /// The driver gave up on the device.
    pub const FAILED: u32 = 0x80;
}

/// InterruptStatus bit: a used ring was updated.
pub const INT_USED_RING: u32 = 1;
/// InterruptStatus bit: the configuration (or device status) changed.
pub const INT_CONFIG: u32 = 2;

/// Errors creating a transport.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Creating the notification eventfd of a queue failed.
    #[error("cannot create the notification eventfd of queue {0}")]
    QueueEventFd(usize, #[source] std::io::Error),
    /// The device declared a queue size the virtio-queue crate rejects (not a power of two).
    #[error("device queue {0} has invalid maximum size {1}")]
    QueueSize(usize, u16),
}

/// The kernel command-line fragment that makes Linux probe a virtio-mmio device at `base` with
/// interrupt `irq` (needs `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`).
pub fn cmdline_fragment(base: u64, irq: u32) -> String {
    format!("virtio_mmio.device={}K@{base:#x}:{irq}", MMIO_SIZE / 1024)
}

/// A virtio device behind the virtio-mmio register interface.
///
/// Shared between the vCPU threads ([`BusDevice`]) and the event loop
/// ([`MmioTransport::process_queue`], [`MmioTransport::process_host_event`]) as
/// `Arc<Mutex<MmioTransport<D>>>`.
pub struct MmioTransport<D: VirtioDevice> {
    device: D,
    mem: Mem,
    interrupt: Arc<dyn Interrupt>,
    queues: Vec<Queue>,
    queue_evts: Vec<EventFd>,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked_features: u64,
    queue_sel: u32,
    status: u32,
    interrupt_status: u32,
    config_generation: u32,
    activated: bool,
}

impl<D: VirtioDevice> MmioTransport<D> {
    /// Wraps `device`; `mem` is the guest memory its queues live in and `interrupt` its line.
    pub fn new(device: D, mem: Mem, interrupt: Arc<dyn Interrupt>) -> Result<Self, TransportError> {
        let mut queues = Vec::new();
        let mut queue_evts = Vec::new();
        for (i, &max) in device.queue_max_sizes().iter().enumerate() {
            queues.push(Queue::new(max).map_err(|_| TransportError::QueueSize(i, max))?);
            queue_evts
                .push(EventFd::new(EFD_NONBLOCK).map_err(|e| TransportError::QueueEventFd(i, e))?);
        }
        Ok(Self {
            device,
            mem,
            interrupt,
            queues,
            queue_evts,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked_features: 0,
            queue_sel: 0,
            status: 0,
            interrupt_status: 0,
            config_generation: 0,
            activated: false,
        })
    }

    /// The notification eventfd of each queue, by queue index: register each as an ioeventfd at
    /// `base + QUEUE_NOTIFY_OFFSET` with datamatch `index as u32`, and wait on them in the event
    /// loop (see [`VirtioSubscriber`](super::VirtioSubscriber)).
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// The device model.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device model, mutably.
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// Whether the driver has set DRIVER_OK and the device accepted it.
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// The features the driver acknowledged.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// Event-loop entry point: processes queue `index` after its eventfd fired (the caller has
    /// already read the eventfd). Ignored until activation. Interrupts the guest if needed.
    pub fn process_queue(&mut self, index: usize) {
        if !self.activated || index >= self.queues.len() {
            return;
        }
        let before = UsedMarks::of(&self.queues);
        if self
            .device
            .process_queue(&self.mem, &mut self.queues, index)
        {
            self.signal_used(&before);
        }
    }

    /// Event-loop entry point for one of the device's own host fds.
    pub fn process_host_event(&mut self, fd: RawFd, events: EventSet) {
        let before = UsedMarks::of(&self.queues);
        let active = if self.activated {
            Some((&self.mem, &mut self.queues[..]))
        } else {
            None
        };
        if self.device.process_host_event(active, fd, events) {
            self.signal_used(&before);
        }
    }

    /// Hands the device's pending fd watch changes to `apply`.
    pub fn drain_fd_ops(&mut self, apply: &mut dyn FnMut(FdOp)) {
        self.device.drain_fd_ops(apply)
    }

    /// Tells the driver the device's config space changed (bumps ConfigGeneration and raises
    /// a config interrupt), e.g. after a disk resize.
    pub fn config_changed(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        if self.activated {
            self.signal(INT_CONFIG);
        }
    }

    /// Interrupts the guest for the buffers the device just used, unless every queue that
    /// gained some has the driver's `VRING_AVAIL_F_NO_INTERRUPT` set (virtio 1.x 2.7.7.2: the
    /// device should not interrupt then; Linux sets it while it polls a queue, e.g. virtio-net's
    /// NAPI). Each interrupt it does not want costs the guest an injection and, on virtio-mmio,
    /// two exits to this process (InterruptStatus, InterruptACK).
    /// A device whose rings a vhost-user backend serves (it uses buffers itself, then calls)
    /// is interrupted on every call: the backend already asked the driver.
    fn signal_used(&mut self, before: &UsedMarks) {
        let wanted =
            !self.device.handles_queue_events()
                || self.queues.iter_mut().enumerate().any(|(i, q)| {
                    before.changed(i, q.next_used()) && wants_interrupt(&self.mem, q)
                });
        if wanted {
            self.signal(INT_USED_RING);
        }
    }

    fn signal(&mut self, bit: u32) {
        self.interrupt_status |= bit;
        if let Err(e) = self.interrupt.trigger() {
            guest_warn!("virtio-mmio: cannot trigger the interrupt: {e}");
        }
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Queue registers may be written only between FEATURES_OK and DRIVER_OK (4.2.3.2).
    fn queue_config_allowed(&self) -> bool {
        self.status & (status::FEATURES_OK | status::DRIVER_OK | status::FAILED)
            == status::FEATURES_OK
    }

    fn reset(&mut self) {
        self.device.reset();
        for q in &mut self.queues {
            q.reset();
        }
        // Drop stale notifications so a new driver does not see them.
        for evt in &self.queue_evts {
            let _ = evt.read();
        }
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.acked_features = 0;
        self.queue_sel = 0;
        self.status = 0;
        self.interrupt_status = 0;
        self.activated = false;
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        match offset {
            REG_MAGIC => MAGIC_VALUE,
            REG_VERSION => MMIO_VERSION,
            REG_DEVICE_ID => self.device.device_type(),
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => {
                let features = self.device.features() | VIRTIO_F_VERSION_1;
                match self.device_features_sel {
                    0 => features as u32,
                    1 => (features >> 32) as u32,
                    _ => 0,
                }
            }
            REG_QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            REG_QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            REG_INTERRUPT_STATUS => self.interrupt_status,
            REG_STATUS => self.status,
            REG_CONFIG_GENERATION => self.config_generation,
            REG_SHM_FIRST..=REG_SHM_LAST => u32::MAX,
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            REG_DRIVER_FEATURES => {
                if self.status & (status::DRIVER | status::FEATURES_OK) != status::DRIVER {
                    guest_warn!(
                        "virtio-mmio: driver features written in status {:#x}",
                        self.status
                    );
                    return;
                }
                match self.driver_features_sel {
                    0 => self.acked_features = (self.acked_features & !0xffff_ffff) | u64::from(v),
                    1 => {
                        self.acked_features =
                            (self.acked_features & 0xffff_ffff) | (u64::from(v) << 32)
                    }
                    _ => {}
                }
            }
            REG_QUEUE_SEL => self.queue_sel = v,
            REG_QUEUE_NUM | REG_QUEUE_READY | REG_QUEUE_DESC_LOW..=REG_QUEUE_DEVICE_HIGH => {
                self.write_queue_reg(offset, v)
            }
            REG_QUEUE_NOTIFY => {
                // Normally caught by the ioeventfd before it exits to us; forward it otherwise.
                if let Some(evt) = self.queue_evts.get(v as usize) {
                    if let Err(e) = evt.write(1) {
                        guest_warn!("virtio-mmio: cannot signal queue {v}: {e}");
                    }
                }
            }
            REG_INTERRUPT_ACK => self.interrupt_status &= !v,
            REG_STATUS => self.write_status(v),
            _ => guest_warn!("virtio-mmio: write to unknown register {offset:#x}"),
        }
    }

    fn write_queue_reg(&mut self, offset: u64, v: u32) {
        if !self.queue_config_allowed() {
            guest_warn!(
                "virtio-mmio: queue register {offset:#x} written in status {:#x}",
                self.status
            );
            return;
        }
        let Some(q) = self.selected_queue() else {
            return;
        };
        let lo = |addr: u64| (addr & !0xffff_ffff) | u64::from(v);
        let hi = |addr: u64| (addr & 0xffff_ffff) | (u64::from(v) << 32);
        // Alignment is checked at activation, where a bad value fails the device; here a
        // misaligned address is simply not stored.
        let result = match offset {
            REG_QUEUE_NUM => {
                let size = u16::try_from(v).unwrap_or(0);
                q.try_set_size(size)
            }
            REG_QUEUE_READY => {
                q.set_ready(v == 1);
                Ok(())
            }
            REG_QUEUE_DESC_LOW => q.try_set_desc_table_address(GuestAddress(lo(q.desc_table()))),
            REG_QUEUE_DESC_HIGH => q.try_set_desc_table_address(GuestAddress(hi(q.desc_table()))),
            REG_QUEUE_DRIVER_LOW => q.try_set_avail_ring_address(GuestAddress(lo(q.avail_ring()))),
            REG_QUEUE_DRIVER_HIGH => q.try_set_avail_ring_address(GuestAddress(hi(q.avail_ring()))),
            REG_QUEUE_DEVICE_LOW => q.try_set_used_ring_address(GuestAddress(lo(q.used_ring()))),
            REG_QUEUE_DEVICE_HIGH => q.try_set_used_ring_address(GuestAddress(hi(q.used_ring()))),
            _ => Ok(()),
        };
        if let Err(e) = result {
            guest_warn!("virtio-mmio: queue register {offset:#x} = {v:#x} rejected: {e}");
        }
    }

    fn write_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        // The driver may only add bits (except by resetting); FAILED is always accepted.
        if v & self.status != self.status {
            guest_warn!(
                "virtio-mmio: status {:#x} -> {v:#x} clears bits",
                self.status
            );
            return;
        }
        let new = v & !self.status;
        if new & status::FEATURES_OK != 0 {
            let offered = self.device.features() | VIRTIO_F_VERSION_1;
            let ok = self.acked_features & !offered == 0
                && self.acked_features & VIRTIO_F_VERSION_1 != 0;
            if !ok {
                // Leave FEATURES_OK clear: the driver reads it back and gives up.
                guest_warn!(
                    "virtio-mmio: driver acked unsupported features {:#x}",
                    self.acked_features
                );
                self.status = v & !status::FEATURES_OK;
                return;
            }
        }
        self.status = v;
        if new & status::DRIVER_OK != 0 && !self.activated {
            self.activate();
        }
    }

    fn activate(&mut self) {
        if self.status & status::FEATURES_OK == 0 {
            guest_warn!("virtio-mmio: DRIVER_OK without FEATURES_OK");
            self.fail();
            return;
        }
        for (i, q) in self.queues.iter().enumerate() {
            if q.ready() && !rings_valid(q, &self.mem) {
                guest_warn!(
                    "virtio-mmio: cannot activate: {}",
                    super::ActivateError::BadQueue(i)
                );
                self.fail();
                return;
            }
        }
        match self.device.activate_queues(
            self.acked_features,
            &self.mem,
            &self.queues,
            &self.queue_evts,
        ) {
            Ok(()) => self.activated = true,
            Err(e) => {
                guest_warn!("virtio-mmio: cannot activate device: {e}");
                self.fail();
            }
        }
    }

    fn fail(&mut self) {
        self.status |= status::DEVICE_NEEDS_RESET;
        self.signal(INT_CONFIG);
    }
}

impl<D: VirtioDevice> BusDevice for MmioTransport<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            self.device.read_config(offset - CONFIG_SPACE, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            guest_warn!("virtio-mmio: {}-byte read at {offset:#x}", data.len());
            data.fill(0);
            return;
        }
        let v = self.read_reg(offset);
        data.copy_from_slice(&v.to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            if self.status & status::FAILED == 0 {
                self.device.write_config(offset - CONFIG_SPACE, data);
            }
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            guest_warn!("virtio-mmio: {}-byte write at {offset:#x}", data.len());
            return;
        };
        if !offset.is_multiple_of(4) {
            guest_warn!("virtio-mmio: unaligned write at {offset:#x}");
            return;
        }
        self.write_reg(offset, u32::from_le_bytes(bytes));
    }
}

/// Each queue's used index before a device call (a device has at most [`UsedMarks::MAX`]
/// queues; a queue beyond that counts as changed).
struct UsedMarks([u16; UsedMarks::MAX]);

impl UsedMarks {
    const MAX: usize = 8;

    fn of(queues: &[Queue]) -> Self {
        let mut m = [0; Self::MAX];
        for (slot, q) in m.iter_mut().zip(queues) {
            *slot = q.next_used();
        }
        Self(m)
    }

    fn changed(&self, index: usize, now: u16) -> bool {
        self.0.get(index).is_none_or(|&was| was != now)
    }
}

/// Whether the driver wants an interrupt for `q`'s new used buffers: with `EVENT_IDX`, what
/// its `used_event` says; without, unless its available ring's flags hold
/// `VRING_AVAIL_F_NO_INTERRUPT`. Read after the used index was published (the fence), so a
/// driver that clears the flag and then looks at the used ring misses nothing; a ring that
/// cannot be read gets the interrupt.
fn wants_interrupt(mem: &Mem, q: &mut Queue) -> bool {
    if q.event_idx_enabled() {
        return q.needs_notification(mem).unwrap_or(true);
    }
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    use vm_memory::Bytes;
    mem.load::<u16>(
        GuestAddress(q.avail_ring()),
        std::sync::atomic::Ordering::Acquire,
    )
    .map_or(true, |flags| {
        u32::from(u16::from_le(flags)) & VRING_AVAIL_F_NO_INTERRUPT == 0
    })
}
