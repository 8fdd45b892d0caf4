//! The virtio-mmio transport's part of a snapshot: its registers, each queue's configuration and
//! ring positions, and the device's own state ([`VirtioDeviceState`]). A restore checks the
//! saved state against the device it is restored into (type, queue count and sizes, ring
//! addresses inside guest memory) and re-activates a device the driver had activated.

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueT};

use super::super::queue::rings_valid;
use super::super::{type_name, VirtioDevice};
use super::MmioTransport;
use crate::state::DeviceStateError;

/// A device's own state beyond its transport and queues.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VirtioDeviceState {
    /// Nothing beyond the queues (rng; vsock without connections).
    Stateless,
    /// virtio-blk: the capacity the guest was told. A restore onto a disk of another size
    /// tells the guest with a configuration-change interrupt.
    Block {
        /// Capacity in 512-byte sectors.
        capacity: u64,
    },
    /// virtio-net: the MAC the guest was told. A restore onto a device with another MAC (a
    /// clone's own) raises a configuration-change interrupt; the guest keeps the MAC it read
    /// at probe until told otherwise. A frame the device held for want of guest buffers is
    /// not saved: it is lost, as a frame on a wire may be.
    Net { mac: [u8; 6] },
}

/// One queue: the driver's configuration and the device's ring positions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueState {
    /// The device's maximum size.
    pub max_size: u16,
    /// The next available-ring entry the device reads.
    pub next_avail: u16,
    /// The next used-ring entry the device writes.
    pub next_used: u16,
    /// VIRTIO_F_RING_EVENT_IDX negotiated.
    pub event_idx: bool,
    /// The size the driver chose.
    pub size: u16,
    /// QueueReady.
    pub ready: bool,
    /// Descriptor table address.
    pub desc_table: u64,
    /// Available (driver) ring address.
    pub avail_ring: u64,
    /// Used (device) ring address.
    pub used_ring: u64,
}

/// A virtio-mmio device's registers, queues and own state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportState {
    /// The virtio device type (checked on restore).
    pub device_type: u32,
    /// DeviceFeaturesSel.
    pub device_features_sel: u32,
    /// DriverFeaturesSel.
    pub driver_features_sel: u32,
    /// The features the driver acknowledged.
    pub acked_features: u64,
    /// QueueSel.
    pub queue_sel: u32,
    /// Status.
    pub status: u32,
    /// InterruptStatus.
    pub interrupt_status: u32,
    /// ConfigGeneration.
    pub config_generation: u32,
    /// Whether the device was activated (DRIVER_OK accepted).
    pub activated: bool,
    /// The queues, by index.
    pub queues: Vec<QueueState>,
    /// The device's own state.
    pub device: VirtioDeviceState,
}

/// What the VMM needs of any transport to snapshot it, whatever its device type.
pub trait TransportSnapshot: Send {
    /// The transport's state; fails for a device that cannot be snapshotted.
    fn save_state(&self) -> Result<TransportState, DeviceStateError>;
    /// Restores `state`, re-activating the device if it was active; the queues' notification
    /// eventfds are signalled so that buffers made available before the snapshot are seen.
    fn restore_state(&mut self, state: &TransportState) -> Result<(), DeviceStateError>;
    /// Raises the interrupt again if a status bit is set: called once the interrupt
    /// controllers have their restored state (an interrupt raised by `restore_state`, before
    /// the IOAPIC and LAPICs had theirs, was lost; a spurious one is harmless).
    fn reassert_interrupt(&mut self);
}

impl<D: VirtioDevice> TransportSnapshot for MmioTransport<D> {
    fn save_state(&self) -> Result<TransportState, DeviceStateError> {
        let device = self.device.save_state(&self.mem, &self.queues)?;
        let queues = self
            .queues
            .iter()
            .map(|q| {
                let s = q.state();
                QueueState {
                    max_size: s.max_size,
                    next_avail: s.next_avail,
                    next_used: s.next_used,
                    event_idx: s.event_idx_enabled,
                    size: s.size,
                    ready: s.ready,
                    desc_table: s.desc_table,
                    avail_ring: s.avail_ring,
                    used_ring: s.used_ring,
                }
            })
            .collect();
        Ok(TransportState {
            device_type: self.device.device_type(),
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            acked_features: self.acked_features,
            queue_sel: self.queue_sel,
            status: self.status,
            interrupt_status: self.interrupt_status,
            config_generation: self.config_generation,
            activated: self.activated,
            queues,
            device,
        })
    }

    fn reassert_interrupt(&mut self) {
        if self.interrupt_status != 0 {
            if let Err(e) = self.interrupt.trigger() {
                crate::guest_warn!("virtio-mmio: cannot trigger the interrupt: {e}");
            }
        }
    }

    fn restore_state(&mut self, state: &TransportState) -> Result<(), DeviceStateError> {
        let name = type_name(self.device.device_type());
        let bad = |what: String| DeviceStateError::Mismatch(name, what);
        if state.device_type != self.device.device_type() {
            return Err(bad(format!(
                "saved from a {} device",
                type_name(state.device_type)
            )));
        }
        let offered = self.device.features() | super::VIRTIO_F_VERSION_1;
        if state.acked_features & !offered != 0 {
            return Err(bad(format!(
                "acknowledged features {:#x} the device does not offer",
                state.acked_features
            )));
        }
        let live = super::status::FEATURES_OK | super::status::DRIVER_OK;
        if state.activated && state.status & live != live {
            return Err(bad(format!("active with status {:#x}", state.status)));
        }
        if state.queues.len() != self.queues.len() {
            return Err(bad(format!(
                "{} queues saved, the device has {}",
                state.queues.len(),
                self.queues.len()
            )));
        }
        let mut queues = Vec::with_capacity(state.queues.len());
        for (i, (s, q)) in state.queues.iter().zip(&self.queues).enumerate() {
            if s.max_size != q.max_size() {
                return Err(bad(format!("queue {i}: maximum size {}", s.max_size)));
            }
            let restored = Queue::try_from(virtio_queue::QueueState {
                max_size: s.max_size,
                next_avail: s.next_avail,
                next_used: s.next_used,
                event_idx_enabled: s.event_idx,
                size: s.size,
                ready: s.ready,
                desc_table: s.desc_table,
                avail_ring: s.avail_ring,
                used_ring: s.used_ring,
            })
            .map_err(|e| bad(format!("queue {i}: {e}")))?;
            if state.activated && restored.ready() && !rings_valid(&restored, &self.mem) {
                return Err(bad(format!("queue {i}: rings outside guest memory")));
            }
            queues.push(restored);
        }
        let config_changed = self.device.restore_state(&state.device)?;
        self.queues = queues;
        self.device_features_sel = state.device_features_sel;
        self.driver_features_sel = state.driver_features_sel;
        self.acked_features = state.acked_features;
        self.queue_sel = state.queue_sel;
        self.status = state.status;
        self.interrupt_status = state.interrupt_status;
        self.config_generation = state.config_generation;
        self.activated = false;
        if state.activated {
            self.device
                .activate_queues(
                    self.acked_features,
                    &self.mem,
                    &self.queues,
                    &self.queue_evts,
                )
                .map_err(|e| bad(format!("cannot activate: {e}")))?;
            self.activated = true;
            for evt in &self.queue_evts {
                // A spurious notification is harmless; a lost one would stall the queue.
                let _ = evt.write(1);
            }
            if self.device.restored(&self.mem, &mut self.queues) {
                self.signal(super::INT_USED_RING);
            }
        }
        if config_changed {
            self.config_changed();
        }
        Ok(())
    }
}
