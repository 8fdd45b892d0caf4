use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::bus::BusDevice;
use crate::virtio::blk::{Block, MemDisk};
use crate::virtio::rng::Rng;
use crate::virtio::test_utils::*;
use crate::virtio::*;

#[derive(Default)]
pub(super) struct CountIrq(pub(super) AtomicUsize);

impl Interrupt for CountIrq {
    fn trigger(&self) -> std::io::Result<()> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

pub(super) fn rd(t: &mut impl BusDevice, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

pub(super) fn wr(t: &mut impl BusDevice, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

pub(super) fn negotiate<D: VirtioDevice>(t: &mut MmioTransport<D>) {
    wr(t, 0x70, status::ACKNOWLEDGE);
    wr(t, 0x70, status::ACKNOWLEDGE | status::DRIVER);
    wr(t, 0x24, 1);
    wr(t, 0x20, 1); // VIRTIO_F_VERSION_1
    wr(
        t,
        0x70,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
}

pub(super) fn setup_queue<D: VirtioDevice>(
    t: &mut MmioTransport<D>,
    index: u32,
    drv: &Driver<'_>,
    size: u32,
) {
    wr(t, 0x30, index);
    wr(t, 0x38, size);
    wr(t, 0x80, drv.desc_table() as u32);
    wr(t, 0x84, (drv.desc_table() >> 32) as u32);
    wr(t, 0x90, drv.avail_addr() as u32);
    wr(t, 0x94, 0);
    wr(t, 0xa0, drv.used_addr() as u32);
    wr(t, 0xa4, 0);
    wr(t, 0x44, 1);
}

/// An rng device on `mem`, negotiated and activated with one 16-entry queue at 0x1_0000:
/// the transport, its interrupt counter and the queue's driver.
pub(super) fn active_rng(
    mem: &vm_memory::GuestMemoryMmap,
) -> (MmioTransport<Rng>, Arc<CountIrq>, Driver<'_>) {
    let irq = Arc::new(CountIrq::default());
    let mut t = MmioTransport::new(Rng::new(), mem.clone(), irq.clone()).unwrap();
    let drv = Driver::new(mem, 0x1_0000, 16);
    negotiate(&mut t);
    setup_queue(&mut t, 0, &drv, 16);
    wr(&mut t, 0x70, DRIVER_OK_ALL);
    (t, irq, drv)
}

pub(super) const DRIVER_OK_ALL: u32 =
    status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;

#[test]
fn identity_registers_and_config() {
    let mem = test_mem();
    let dev = Block::with_backend(Box::new(MemDisk(vec![0; 4096])), true);
    let mut t = MmioTransport::new(dev, mem, Arc::new(CountIrq::default())).unwrap();
    assert_eq!(rd(&mut t, 0x0), 0x7472_6976);
    assert_eq!(rd(&mut t, 0x4), 2);
    assert_eq!(rd(&mut t, 0x8), TYPE_BLOCK);
    assert_ne!(rd(&mut t, 0xc), 0);
    // Features, both halves.
    wr(&mut t, 0x14, 0);
    assert_eq!(rd(&mut t, 0x10), (1 << 2) | (1 << 5) | (1 << 9));
    wr(&mut t, 0x14, 1);
    assert_eq!(rd(&mut t, 0x10), 1);
    wr(&mut t, 0x14, 7);
    assert_eq!(rd(&mut t, 0x10), 0);
    // Queue limits.
    assert_eq!(rd(&mut t, 0x34), 256);
    wr(&mut t, 0x30, 5);
    assert_eq!(rd(&mut t, 0x34), 0, "no such queue");
    // Config: capacity in sectors, any access width; beyond it reads zero.
    let mut cap = [0u8; 8];
    t.read(0x100, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 8);
    let mut one = [0xffu8; 1];
    t.read(0x100, &mut one);
    assert_eq!(one, [8]);
    let mut seg_max = [0u8; 4];
    t.read(0x10c, &mut seg_max);
    assert_eq!(u32::from_le_bytes(seg_max), 254);
    t.read(0x200, &mut one);
    assert_eq!(one, [0]);
    // Wrong-width register access reads zero and is ignored on write.
    let mut two = [0xffu8; 2];
    t.read(0x0, &mut two);
    assert_eq!(two, [0, 0]);
    t.write(0x70, &[1, 0]);
    assert_eq!(rd(&mut t, 0x70), 0);
    assert_eq!(rd(&mut t, 0x7ff), 0);
    assert_eq!(
        cmdline_fragment(0xd000_0000, 5),
        "virtio_mmio.device=4K@0xd0000000:5"
    );
}

#[test]
fn negotiation_activation_notify_interrupt_reset() {
    let mem = test_mem();
    let irq = Arc::new(CountIrq::default());
    let mut t = MmioTransport::new(Rng::new(), mem.clone(), irq.clone()).unwrap();
    let mut drv = Driver::new(&mem, 0x1_0000, 16);

    // Queue registers before FEATURES_OK are ignored.
    wr(&mut t, 0x30, 0);
    wr(&mut t, 0x38, 8);
    wr(&mut t, 0x70, status::ACKNOWLEDGE);
    assert_eq!(rd(&mut t, 0x38), 0, "QueueNum is write-only, reads as zero");
    negotiate(&mut t);
    assert_eq!(rd(&mut t, 0x70) & status::FEATURES_OK, status::FEATURES_OK);
    assert_eq!(t.acked_features(), VIRTIO_F_VERSION_1);
    setup_queue(&mut t, 0, &drv, 16);
    assert_eq!(rd(&mut t, 0x44), 1);
    // Notifications before DRIVER_OK do nothing.
    t.process_queue(0);
    assert_eq!(irq.0.load(Ordering::SeqCst), 0);
    wr(&mut t, 0x70, DRIVER_OK_ALL);
    assert!(t.is_activated());
    assert_eq!(rd(&mut t, 0x70), DRIVER_OK_ALL);

    // A buffer, a notify through the bus (no ioeventfd here), then the event loop's turn.
    let head = drv.add(&[w(0x10_0000, 32)]);
    wr(&mut t, 0x50, 0);
    assert_eq!(t.queue_evts()[0].read().unwrap(), 1);
    t.process_queue(0);
    assert_eq!(drv.used(), vec![(head, 32)]);
    assert_eq!(irq.0.load(Ordering::SeqCst), 1);
    assert_eq!(rd(&mut t, 0x60), INT_USED_RING);
    wr(&mut t, 0x64, INT_USED_RING);
    assert_eq!(rd(&mut t, 0x60), 0);
    // Notify for a queue that does not exist: ignored.
    wr(&mut t, 0x50, 9);
    t.process_queue(9);

    // Reset.
    wr(&mut t, 0x70, 0);
    assert!(!t.is_activated());
    assert_eq!(rd(&mut t, 0x70), 0);
    assert_eq!(rd(&mut t, 0x44), 0);
    assert_eq!(t.acked_features(), 0);
    // After reset the old rings are no longer used.
    drv.add(&[w(0x10_0000, 32)]);
    t.process_queue(0);
    assert!(drv.used().is_empty());
}

/// A driver polling a queue (`VRING_AVAIL_F_NO_INTERRUPT` in its available ring's flags) gets
/// its buffers used but no interrupt; once it clears the flag, the next used buffer interrupts.
#[test]
fn no_interrupt_while_the_driver_says_so() {
    use vm_memory::{Bytes, GuestAddress};
    let mem = test_mem();
    let (mut t, irq, mut drv) = active_rng(&mem);
    let flags = GuestAddress(drv.avail_addr());
    mem.write_obj(1u16.to_le(), flags).unwrap();
    let head = drv.add(&[w(0x10_0000, 32)]);
    t.process_queue(0);
    assert_eq!(drv.used(), vec![(head, 32)]);
    assert_eq!(irq.0.load(Ordering::SeqCst), 0);
    assert_eq!(rd(&mut t, 0x60), 0, "no interrupt pending");
    mem.write_obj(0u16, flags).unwrap();
    let head = drv.add(&[w(0x10_0000, 32)]);
    t.process_queue(0);
    assert_eq!(drv.used(), vec![(head, 32)]);
    assert_eq!(irq.0.load(Ordering::SeqCst), 1);
    assert_eq!(rd(&mut t, 0x60), INT_USED_RING);
    // A pass that uses nothing interrupts nothing.
    t.process_queue(0);
    assert_eq!(irq.0.load(Ordering::SeqCst), 1);
}

#[test]
fn rejects_bad_features_and_bad_queues() {
    let mem = test_mem();
    let irq = Arc::new(CountIrq::default());
    let mut t = MmioTransport::new(Rng::new(), mem.clone(), irq.clone()).unwrap();
    // Features without VERSION_1: FEATURES_OK does not stick.
    wr(&mut t, 0x70, status::ACKNOWLEDGE | status::DRIVER);
    wr(&mut t, 0x24, 0);
    wr(&mut t, 0x20, 1 << 3);
    wr(
        &mut t,
        0x70,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    assert_eq!(rd(&mut t, 0x70) & status::FEATURES_OK, 0);
    wr(&mut t, 0x70, 0);

    // Rings outside guest memory: DRIVER_OK fails the device.
    negotiate(&mut t);
    wr(&mut t, 0x30, 0);
    wr(&mut t, 0x80, 0);
    wr(&mut t, 0x84, 0x10);
    wr(&mut t, 0x44, 1);
    // An invalid queue size is refused (not a power of two), the old one kept.
    wr(&mut t, 0x38, 3);
    wr(&mut t, 0x70, DRIVER_OK_ALL);
    assert!(!t.is_activated());
    assert_ne!(rd(&mut t, 0x70) & status::DEVICE_NEEDS_RESET, 0);
    assert_eq!(rd(&mut t, 0x60), INT_CONFIG);
    assert_eq!(irq.0.load(Ordering::SeqCst), 1);

    // Clearing status bits without a reset is refused; reset recovers.
    wr(&mut t, 0x70, status::ACKNOWLEDGE);
    assert_ne!(rd(&mut t, 0x70), status::ACKNOWLEDGE);
    wr(&mut t, 0x70, 0);
    let drv = Driver::new(&mem, 0x1_0000, 16);
    negotiate(&mut t);
    setup_queue(&mut t, 0, &drv, 16);
    wr(&mut t, 0x70, DRIVER_OK_ALL);
    assert!(t.is_activated());
}

#[test]
fn arbitrary_register_traffic_never_panics() {
    let mem = test_mem();
    let dev: Box<dyn VirtioDevice> = Box::new(Rng::new());
    let mut t = MmioTransport::new(dev, mem, Arc::new(CountIrq::default())).unwrap();
    let mut x = 0x1234_5678_9abc_def0u64;
    for _ in 0..20_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let off = (x >> 8) % 0x140;
        let width = [1usize, 2, 4, 8][(x & 3) as usize];
        let v = (x >> 32) as u32;
        let mut buf = [0u8; 8];
        if x & 4 == 0 {
            t.read(off, &mut buf[..width]);
        } else {
            buf[..4].copy_from_slice(&v.to_le_bytes());
            t.write(off & !3, &buf[..width]);
        }
        if x & 0xf0 == 0 {
            t.process_queue((x >> 40) as usize % 3);
        }
    }
}
