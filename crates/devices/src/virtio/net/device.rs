//! The virtio-net device: config space, features, activation (tap offloads following what the
//! driver negotiated), and the event-loop side: which readiness of the tap fd to wait for.
//!
//! Back-pressure, both ways, with a level-triggered watch on the tap fd:
//! - readable is watched only while the device is active and no frame waits for guest
//!   buffers; a guest that stops refilling its RX ring leaves frames in the tap's own queue
//!   (bounded by the host kernel) and the event loop asleep;
//! - writable is watched only while a TX chain waits for room in the tap;
//! - each wakeup moves at most [`RX_BUDGET`] frames, so one busy device cannot starve the
//!   others on the loop (unread frames keep the fd readable: the loop comes back).

use std::os::fd::RawFd;

use virtio_bindings::virtio_net::*;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
use virtio_queue::{Queue, QueueT};

use super::backend::NetBackend;
use super::header::TxOffloads;
use super::rx::{Rx, RxPass};
use super::tx::{Tx, TxPass};
use super::{MacAddr, CONFIG_LEN, QUEUE_SIZE, RXQ, TXQ};
use crate::guest_warn;
use crate::state::DeviceStateError;
use crate::virtio::queue::Mem;
use crate::virtio::{
    read_config_bytes, ActivateError, EventFd, EventSet, FdOp, VirtioDevice, VirtioDeviceState,
    TYPE_NET, VIRTIO_F_VERSION_1,
};

/// Frames moved host to guest per wakeup.
pub const RX_BUDGET: usize = 64;

/// How a device is set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetOptions {
    /// The guest's MAC address.
    pub mac: MacAddr,
    /// The MTU offered to the guest (`VIRTIO_NET_F_MTU`); `None` leaves it to the guest.
    pub mtu: Option<u16>,
    /// Whether to offer UDP fragmentation offload (the tap accepts `TUN_F_UFO`).
    pub ufo: bool,
}

/// Frame counters, for tests and diagnostics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Frames the guest sent that reached the backend.
    pub tx_frames: u64,
    /// Frames the guest sent that were dropped.
    pub tx_dropped: u64,
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Frames from the host that were dropped.
    pub rx_dropped: u64,
}

/// The virtio-net device (type 1) over a [`NetBackend`].
pub struct Net {
    backend: Box<dyn NetBackend>,
    config: [u8; CONFIG_LEN],
    features: u64,
    acked: u64,
    active: bool,
    rx: Rx,
    tx: Tx,
    tx_blocked: bool,
    /// The tap failed (hung up or errored): no longer watched.
    broken: bool,
    /// What the event loop watches on the backend's fd (`None`: not registered).
    watched: Option<EventSet>,
    fd_ops: Vec<FdOp>,
    stats: NetStats,
}

impl Net {
    /// A device over `backend`.
    pub fn new(backend: Box<dyn NetBackend>, opts: NetOptions) -> Self {
        let bit = |b: u32| 1u64 << b;
        let mut features = VIRTIO_F_VERSION_1
            | bit(VIRTIO_NET_F_MAC)
            | bit(VIRTIO_NET_F_STATUS)
            | bit(VIRTIO_NET_F_MRG_RXBUF)
            | bit(VIRTIO_NET_F_CSUM)
            | bit(VIRTIO_NET_F_GUEST_CSUM)
            | bit(VIRTIO_NET_F_GUEST_TSO4)
            | bit(VIRTIO_NET_F_GUEST_TSO6)
            | bit(VIRTIO_NET_F_HOST_TSO4)
            | bit(VIRTIO_NET_F_HOST_TSO6)
            // A segmentation-offload frame is a header and up to 17 pages: one ring slot
            // instead of ~19, so the driver keeps the whole ring's worth of frames in flight
            // instead of stopping its queue after a dozen.
            | bit(VIRTIO_RING_F_INDIRECT_DESC);
        if opts.ufo {
            features |= bit(VIRTIO_NET_F_GUEST_UFO) | bit(VIRTIO_NET_F_HOST_UFO);
        }
        let mut config = [0u8; CONFIG_LEN];
        config[..6].copy_from_slice(&opts.mac.0);
        config[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        if let Some(mtu) = opts.mtu {
            features |= bit(VIRTIO_NET_F_MTU);
            config[10..12].copy_from_slice(&mtu.to_le_bytes());
        }
        let mut dev = Self {
            backend,
            config,
            features,
            acked: 0,
            active: false,
            rx: Rx::new(),
            tx: Tx::new(),
            tx_blocked: false,
            broken: false,
            watched: None,
            fd_ops: Vec::new(),
            stats: NetStats::default(),
        };
        dev.sync_interest();
        dev
    }

    /// Frame counters so far.
    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// The MAC address the device offers.
    pub fn mac(&self) -> [u8; 6] {
        let mut mac = [0; 6];
        mac.copy_from_slice(&self.config[..6]);
        mac
    }

    /// The features the driver acknowledged (0 until activation).
    pub fn acked_features(&self) -> u64 {
        self.acked
    }

    /// What the event loop should watch now (see the module docs).
    pub fn interest(&self) -> Option<EventSet> {
        if self.broken {
            return None;
        }
        let mut set = EventSet::empty();
        if self.active && !self.rx.has_pending() {
            set |= EventSet::IN;
        }
        if self.active && self.tx_blocked {
            set |= EventSet::OUT;
        }
        Some(set)
    }

    fn sync_interest(&mut self) {
        let Some(fd) = self.backend.raw_fd() else {
            self.watched = self.interest();
            return;
        };
        let want = self.interest();
        if want == self.watched {
            return;
        }
        self.fd_ops.push(match (self.watched, want) {
            (None, Some(set)) => FdOp::Add(fd, set),
            (Some(_), Some(set)) => FdOp::Modify(fd, set),
            (_, None) => FdOp::Remove(fd),
        });
        self.watched = want;
    }

    fn has(&self, bit: u32) -> bool {
        self.acked & (1 << bit) != 0
    }

    /// The `TUN_F_*` offloads matching what the driver accepts in received frames.
    fn tun_offloads(&self) -> u32 {
        if !self.has(VIRTIO_NET_F_GUEST_CSUM) {
            return 0;
        }
        let mut f = libc::TUN_F_CSUM;
        if self.has(VIRTIO_NET_F_GUEST_TSO4) {
            f |= libc::TUN_F_TSO4;
        }
        if self.has(VIRTIO_NET_F_GUEST_TSO6) {
            f |= libc::TUN_F_TSO6;
        }
        if self.has(VIRTIO_NET_F_GUEST_UFO) {
            f |= libc::TUN_F_UFO;
        }
        f
    }

    fn run_rx(&mut self, mem: &Mem, queues: &mut [Queue]) -> bool {
        let mergeable = self.has(VIRTIO_NET_F_MRG_RXBUF);
        let Some(q) = queues.get_mut(RXQ) else {
            return false;
        };
        let mut used = false;
        loop {
            let pass: RxPass = self
                .rx
                .process(mem, q, self.backend.as_mut(), mergeable, RX_BUDGET);
            self.stats.rx_frames += pass.delivered;
            self.stats.rx_dropped += pass.dropped;
            used |= pass.used;
            if !pass.blocked {
                // The device reads the ring whenever the tap has a frame: the driver's refills
                // need no notification (`VRING_USED_F_NO_NOTIFY`), each one an exit saved.
                let _ = q.disable_notification(mem);
                return used;
            }
            // A frame waits for buffers: the driver's next refill must notify, and one it
            // published before seeing the flag is taken now; unless this pass moved nothing
            // (buffers the ring shows but cannot hand out: a broken ring is not retried here).
            let moved = pass.used || pass.delivered > 0 || pass.dropped > 0;
            match q.enable_notification(mem) {
                Ok(true) if moved => continue,
                _ => return used,
            }
        }
    }

    fn run_tx(&mut self, mem: &Mem, queues: &mut [Queue]) -> bool {
        let off = TxOffloads::from_features(self.acked);
        let Some(q) = queues.get_mut(TXQ) else {
            return false;
        };
        let mut used = false;
        loop {
            // While the ring is drained, frames the driver adds need no notification.
            let _ = q.disable_notification(mem);
            let pass: TxPass = self.tx.process(mem, q, self.backend.as_mut(), off);
            self.tx_blocked = pass.blocked;
            self.stats.tx_frames += pass.sent;
            self.stats.tx_dropped += pass.dropped;
            used |= pass.used;
            if pass.blocked {
                // The tap's room starts the next pass, which notifies again when done.
                return used;
            }
            // Drained: notifications on again, and a frame added before the driver saw that
            // is sent now; unless this pass moved nothing (chains the ring shows but cannot
            // hand out: a broken ring is not retried here).
            let moved = pass.used || pass.sent > 0 || pass.dropped > 0;
            match q.enable_notification(mem) {
                Ok(true) if moved => continue,
                _ => return used,
            }
        }
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 2]
    }
    fn features(&self) -> u64 {
        self.features
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }
    fn activate_queues(
        &mut self,
        acked_features: u64,
        _mem: &Mem,
        queues: &[Queue],
        queue_evts: &[EventFd],
    ) -> Result<(), ActivateError> {
        for i in [RXQ, TXQ] {
            if !queues.get(i).is_some_and(virtio_queue::QueueT::ready) {
                return Err(ActivateError::QueueNotReady(i));
            }
        }
        self.acked = acked_features;
        let flags = self.tun_offloads();
        self.backend
            .set_offload(flags)
            .map_err(|e| ActivateError::Backend(Box::new(e)))?;
        self.active = true;
        // The event loop learns the new interest on its next pass: wake it as if the driver
        // had posted receive buffers (it may have, before DRIVER_OK).
        if let Some(evt) = queue_evts.get(RXQ) {
            if let Err(e) = evt.write(1) {
                log::warn!("virtio-net: cannot wake the event loop: {e}");
            }
        }
        Ok(())
    }
    fn process_queue(&mut self, mem: &Mem, queues: &mut [Queue], index: usize) -> bool {
        let used = match index {
            // New receive buffers: the waiting frame first, then more from the tap.
            RXQ => self.run_rx(mem, queues),
            TXQ => self.run_tx(mem, queues),
            _ => false,
        };
        self.sync_interest();
        used
    }
    fn process_host_event(
        &mut self,
        active: Option<(&Mem, &mut [Queue])>,
        fd: RawFd,
        events: EventSet,
    ) -> bool {
        if self.backend.raw_fd() != Some(fd) {
            return false;
        }
        let mut used = false;
        if events.intersects(EventSet::ERROR | EventSet::HANG_UP) {
            // The tap went away (deleted on the host): stop watching it for good.
            log::error!("virtio-net: the tap failed ({events:?}); the device stops moving frames");
            self.broken = true;
        } else if let Some((mem, queues)) = active.filter(|_| self.active) {
            if events.contains(EventSet::OUT) {
                used |= self.run_tx(mem, queues);
            }
            if events.contains(EventSet::IN) {
                used |= self.run_rx(mem, queues);
            }
        }
        self.sync_interest();
        used
    }
    fn drain_fd_ops(&mut self, apply: &mut dyn FnMut(FdOp)) {
        for op in self.fd_ops.drain(..) {
            apply(op);
        }
    }
    fn save_state(
        &self,
        _mem: &Mem,
        _queues: &[Queue],
    ) -> Result<VirtioDeviceState, DeviceStateError> {
        Ok(VirtioDeviceState::Net { mac: self.mac() })
    }
    /// The backend is this device's own (a clone's tap): the transport's re-activation sets
    /// its offloads to what the driver negotiated.
    fn restore_state(&mut self, state: &VirtioDeviceState) -> Result<bool, DeviceStateError> {
        match state {
            VirtioDeviceState::Net { mac } => Ok(*mac != self.mac()),
            _ => Err(DeviceStateError::Mismatch(
                "virtio-net",
                "state saved by another kind of device".into(),
            )),
        }
    }
    fn reset(&mut self) {
        if self.active {
            if let Err(e) = self.backend.set_offload(0) {
                guest_warn!("virtio-net: cannot clear the tap offloads: {e}");
            }
        }
        self.acked = 0;
        self.active = false;
        self.rx.clear();
        self.tx_blocked = false;
        self.sync_interest();
    }
}
