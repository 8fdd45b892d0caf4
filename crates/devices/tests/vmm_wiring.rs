//! The devices wired the way crx-vmm wires them: a transport on the MMIO bus (driven here by
//! plain `BusDevice` calls, as a vCPU thread would), its subscriber in an event-manager loop,
//! and an irqfd-style `EventFd` as the interrupt. No KVM involved.

use std::sync::{Arc, Mutex};

use crx_devices::bus::BusDevice;
use crx_devices::virtio::blk::{Block, MemDisk};
use crx_devices::virtio::rng::Rng;
use crx_devices::virtio::{
    status, EventFd, GuestMemoryMmap, MmioTransport, VirtioDevice, VirtioSubscriber,
    QUEUE_NOTIFY_OFFSET,
};
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EFD_NONBLOCK;

fn wr(t: &mut impl BusDevice, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

fn rd(t: &mut impl BusDevice, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

/// The Linux driver's probe sequence, for a one-queue device.
fn probe<D: VirtioDevice>(t: &mut MmioTransport<D>, q: &MockSplitQueue<'_, GuestMemoryMmap>) {
    assert_eq!(rd(t, 0), 0x7472_6976);
    assert_eq!(rd(t, 4), 2);
    wr(t, 0x70, status::ACKNOWLEDGE | status::DRIVER);
    wr(t, 0x14, 1);
    assert_eq!(rd(t, 0x10) & 1, 1, "VIRTIO_F_VERSION_1");
    wr(t, 0x24, 1);
    wr(t, 0x20, 1);
    wr(
        t,
        0x70,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    assert_ne!(rd(t, 0x70) & status::FEATURES_OK, 0);
    wr(t, 0x30, 0);
    wr(t, 0x38, 16);
    wr(t, 0x80, q.desc_table_addr().0 as u32);
    wr(t, 0x90, q.avail_addr().0 as u32);
    wr(t, 0xa0, q.used_addr().0 as u32);
    wr(t, 0x44, 1);
    wr(
        t,
        0x70,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
    );
    assert!(t.is_activated());
}

#[test]
fn rng_and_blk_through_event_loop_with_irqfd() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
    let irq = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
    // One loop for all devices: subscribers of different device types, boxed.
    let mut em: EventManager<Box<dyn MutEventSubscriber + Send>> = EventManager::new().unwrap();

    // virtio-rng.
    let rng_q = MockSplitQueue::create(&mem, GuestAddress(0x1_0000), 16);
    let rng = Arc::new(Mutex::new(
        MmioTransport::new(Rng::new(), mem.clone(), irq.clone()).unwrap(),
    ));
    em.add_subscriber(Box::new(VirtioSubscriber::new(rng.clone())));
    probe(&mut *rng.lock().unwrap(), &rng_q);

    // virtio-blk, one write-then-read request pair is enough here.
    let blk_q = MockSplitQueue::create(&mem, GuestAddress(0x2_0000), 16);
    let disk = MemDisk(vec![0; 1 << 20]);
    let blk = Arc::new(Mutex::new(
        MmioTransport::new(
            Block::with_backend(Box::new(disk), false),
            mem.clone(),
            irq.clone(),
        )
        .unwrap(),
    ));
    blk.lock().unwrap().device_mut().set_id(b"crx");
    em.add_subscriber(Box::new(VirtioSubscriber::new(blk.clone())));
    probe(&mut *blk.lock().unwrap(), &blk_q);

    // The guest offers one rng buffer and notifies (the ioeventfd's job, here via the bus).
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    let write = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
    rng_q
        .add_desc_chains(
            &[RawDescriptor::from(Descriptor::new(
                0x10_0000, 64, write, 0,
            ))],
            0,
        )
        .unwrap();
    wr(&mut *rng.lock().unwrap(), QUEUE_NOTIFY_OFFSET, 0);
    assert!(em.run_with_timeout(1000).unwrap() >= 1);
    assert_eq!(irq.read().unwrap(), 1);
    assert_eq!(rd(&mut *rng.lock().unwrap(), 0x60), 1);
    wr(&mut *rng.lock().unwrap(), 0x64, 1);

    // A GET_ID request on the blk queue.
    let mut hdr = [0u8; 16];
    hdr[0] = 8;
    mem.write_slice(&hdr, GuestAddress(0x20_0000)).unwrap();
    let next = virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16;
    blk_q
        .add_desc_chains(
            &[
                RawDescriptor::from(Descriptor::new(0x20_0000, 16, next, 1)),
                RawDescriptor::from(Descriptor::new(0x21_0000, 20, write | next, 2)),
                RawDescriptor::from(Descriptor::new(0x22_0000, 1, write, 0)),
            ],
            0,
        )
        .unwrap();
    mem.write_obj(0xffu8, GuestAddress(0x22_0000)).unwrap();
    wr(&mut *blk.lock().unwrap(), QUEUE_NOTIFY_OFFSET, 0);
    assert!(em.run_with_timeout(1000).unwrap() >= 1);
    assert_eq!(irq.read().unwrap(), 1);
    let status_byte: u8 = mem.read_obj(GuestAddress(0x22_0000)).unwrap();
    assert_eq!(status_byte, 0);
    let mut id = [0u8; 3];
    mem.read_slice(&mut id, GuestAddress(0x21_0000)).unwrap();
    assert_eq!(&id, b"crx");
}
