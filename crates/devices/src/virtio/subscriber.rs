//! The event-loop adapter: an event-manager subscriber that drives one transport.

use std::sync::{Arc, Mutex, MutexGuard};

use event_manager::{EventOps, Events, MutEventSubscriber};

use super::{EventSet, FdOp, MmioTransport, VirtioDevice};
use crate::guest_warn;

/// `Events::data` of a device's own host fds; queue eventfds carry their queue index.
const HOST_FD_DATA: u32 = u32::MAX;

/// Registers a transport's queue eventfds (and its device's host fds, such as vsock's Unix
/// sockets) with an `event_manager::EventManager` and calls the transport when they fire.
///
/// ```ignore
/// let transport = Arc::new(Mutex::new(MmioTransport::new(dev, mem, irqfd)?));
/// event_manager.add_subscriber(Arc::new(Mutex::new(VirtioSubscriber::new(transport.clone()))));
/// mmio_bus.insert(base, MMIO_SIZE, transport);
/// ```
pub struct VirtioSubscriber<D: VirtioDevice> {
    transport: Arc<Mutex<MmioTransport<D>>>,
}

impl<D: VirtioDevice> VirtioSubscriber<D> {
    /// An adapter for `transport`.
    pub fn new(transport: Arc<Mutex<MmioTransport<D>>>) -> Self {
        Self { transport }
    }

    fn lock(&self) -> MutexGuard<'_, MmioTransport<D>> {
        // A panic elsewhere must not take the device down with it.
        self.transport.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn apply_fd_ops<D: VirtioDevice>(transport: &mut MmioTransport<D>, ops: &mut EventOps) {
    transport.drain_fd_ops(&mut |op| {
        let result = match op {
            FdOp::Add(fd, set) => ops.add(Events::with_data_raw(fd, HOST_FD_DATA, set)),
            FdOp::Modify(fd, set) => ops.modify(Events::with_data_raw(fd, HOST_FD_DATA, set)),
            FdOp::Remove(fd) => {
                ops.remove(Events::with_data_raw(fd, HOST_FD_DATA, EventSet::empty()))
            }
        };
        if let Err(e) = result {
            guest_warn!("virtio: event loop refused {op:?}: {e}");
        }
    });
}

impl<D: VirtioDevice> MutEventSubscriber for VirtioSubscriber<D> {
    fn init(&mut self, ops: &mut EventOps) {
        let transport = self.transport.clone();
        let mut t = transport.lock().unwrap_or_else(|e| e.into_inner());
        let queue_evts = if t.device().handles_queue_events() {
            t.queue_evts()
        } else {
            &[]
        };
        for (i, evt) in queue_evts.iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data(evt, i as u32, EventSet::IN)) {
                log::error!("virtio: cannot watch queue {i} eventfd: {e}");
            }
        }
        apply_fd_ops(&mut t, ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut t = self.lock();
        let data = events.data();
        if data == HOST_FD_DATA {
            t.process_host_event(events.fd(), events.event_set());
        } else {
            let index = data as usize;
            if let Some(evt) = t.queue_evts().get(index) {
                // Nonblocking: a spurious wakeup reads EAGAIN, which is fine.
                let _ = evt.read();
            }
            t.process_queue(index);
        }
        apply_fd_ops(&mut t, ops);
    }
}
