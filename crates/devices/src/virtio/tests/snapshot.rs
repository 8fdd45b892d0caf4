//! Transport state for snapshots: an active device's registers and queues survive a save and
//! a restore into a fresh transport, which goes on serving the same rings; state that does not
//! fit is refused; a device that keeps state it cannot save refuses to be snapshotted.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::transport::{active_rng, negotiate, rd, setup_queue, wr, CountIrq, DRIVER_OK_ALL};
use crate::bus::BusDevice;
use crate::state::DeviceStateError;
use crate::virtio::blk::{Block, MemDisk};
use crate::virtio::net::{MacAddr, MemBackend, Net, NetOptions};
use crate::virtio::rng::Rng;
use crate::virtio::test_utils::*;
use crate::virtio::*;
use vm_memory::Bytes;

#[test]
fn an_active_rng_continues_after_restore() {
    let mem = test_mem();
    let (mut t, _, mut drv) = active_rng(&mem);
    let head = drv.add(&[w(0x10_0000, 32)]);
    t.process_queue(0);
    assert_eq!(drv.used(), vec![(head, 32)]);
    let state = t.save_state().unwrap();
    assert!(state.activated);
    assert_eq!(state.queues[0].next_used, 1);
    assert_eq!(state.interrupt_status, INT_USED_RING);

    // A buffer made available after the snapshot: the restored device finds it.
    let head = drv.add(&[w(0x10_0100, 16)]);
    let irq2 = Arc::new(CountIrq::default());
    let mut r = MmioTransport::new(Rng::new(), mem.clone(), irq2.clone()).unwrap();
    r.restore_state(&state).unwrap();
    assert!(r.is_activated());
    assert_eq!(r.save_state().unwrap(), state);
    assert_eq!(rd(&mut r, 0x70), DRIVER_OK_ALL);
    assert_eq!(rd(&mut r, 0x60), INT_USED_RING);
    assert_eq!(
        r.queue_evts()[0].read().unwrap(),
        1,
        "queues are notified once after a restore"
    );
    r.process_queue(0);
    assert_eq!(drv.used(), vec![(head, 16)]);
    assert_eq!(irq2.0.load(Ordering::SeqCst), 1);
}

#[test]
fn state_that_does_not_fit_is_refused() {
    let mem = test_mem();
    let irq = Arc::new(CountIrq::default());
    let mut t = MmioTransport::new(Rng::new(), mem.clone(), irq.clone()).unwrap();
    let drv = Driver::new(&mem, 0x1_0000, 16);
    negotiate(&mut t);
    setup_queue(&mut t, 0, &drv, 16);
    wr(&mut t, 0x70, DRIVER_OK_ALL);
    let good = t.save_state().unwrap();
    let blk = Block::with_backend(Box::new(MemDisk(vec![0; 4096])), true);
    let mut b = MmioTransport::new(blk, mem.clone(), irq.clone()).unwrap();
    let e = b.restore_state(&good).unwrap_err().to_string();
    assert!(e.contains("virtio-blk") && e.contains("virtio-rng"), "{e}");

    let fresh = || MmioTransport::new(Rng::new(), mem.clone(), irq.clone()).unwrap();
    let mut more = good.clone();
    more.queues.push(more.queues[0]);
    assert!(fresh().restore_state(&more).is_err());
    let mut odd = good.clone();
    odd.queues[0].size = 3;
    assert!(fresh().restore_state(&odd).is_err());
    let mut outside = good.clone();
    outside.queues[0].used_ring = 1 << 40;
    let e = fresh().restore_state(&outside).unwrap_err().to_string();
    assert!(e.contains("outside guest memory"), "{e}");
    let mut big = good.clone();
    big.queues[0].max_size = 1024;
    assert!(fresh().restore_state(&big).is_err());
    let mut features = good.clone();
    features.acked_features |= 1 << 40;
    let e = fresh().restore_state(&features).unwrap_err().to_string();
    assert!(e.contains("does not offer"), "{e}");
    let mut status = good.clone();
    status.status = 0;
    assert!(fresh().restore_state(&status).is_err());
}

/// A device that keeps state it does not say how to save (the trait's default).
struct Unsaved;

impl VirtioDevice for Unsaved {
    fn device_type(&self) -> u32 {
        TYPE_RNG
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16]
    }
    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn process_queue(
        &mut self,
        _mem: &Mem,
        _queues: &mut [virtio_queue::Queue],
        _i: usize,
    ) -> bool {
        false
    }
    fn reset(&mut self) {}
}

#[test]
fn a_device_with_unsaved_state_refuses() {
    let t = MmioTransport::new(Unsaved, test_mem(), Arc::new(CountIrq::default())).unwrap();
    match t.save_state() {
        Err(DeviceStateError::NotSnapshottable(name, _)) => assert_eq!(name, "virtio-rng"),
        other => panic!("{other:?}"),
    }
}

/// A NIC restored onto a device of its own (a clone's tap, a clone's MAC): the negotiated
/// offloads reach the new backend, the new MAC is announced by a configuration change, and
/// frames flow between the restored rings and the new backend alone.
#[test]
fn a_restored_nic_serves_its_own_backend_and_announces_its_mac() {
    use virtio_bindings::virtio_net::{
        VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_MAC,
    };
    let mem = test_mem();
    let (mut rx, mut tx) = (
        Driver::new(&mem, 0x1_0000, 16),
        Driver::new(&mem, 0x2_0000, 16),
    );
    let nic = |last: u8, b: &MemBackend| {
        let opts = NetOptions {
            mac: MacAddr([2, 0, 0, 0, 0, last]),
            mtu: Some(1500),
            ufo: false,
        };
        Net::new(Box::new(b.clone()), opts)
    };
    let template = MemBackend::new(usize::MAX, None);
    let mut t = MmioTransport::new(
        nic(1, &template),
        mem.clone(),
        Arc::new(CountIrq::default()),
    )
    .unwrap();
    let acked =
        (1 << VIRTIO_NET_F_MAC) | (1 << VIRTIO_NET_F_GUEST_CSUM) | (1 << VIRTIO_NET_F_GUEST_TSO4);
    wr(&mut t, 0x70, status::ACKNOWLEDGE | status::DRIVER);
    wr(&mut t, 0x24, 0);
    wr(&mut t, 0x20, acked);
    wr(&mut t, 0x24, 1);
    wr(&mut t, 0x20, 1); // VIRTIO_F_VERSION_1
    wr(
        &mut t,
        0x70,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    setup_queue(&mut t, 0, &rx, 16);
    setup_queue(&mut t, 1, &tx, 16);
    wr(&mut t, 0x70, DRIVER_OK_ALL);
    let offloads = Some(libc::TUN_F_CSUM | libc::TUN_F_TSO4);
    assert_eq!(template.state().offload, offloads);
    let state = t.save_state().unwrap();
    assert_eq!(
        state.device,
        VirtioDeviceState::Net {
            mac: [2, 0, 0, 0, 0, 1]
        }
    );

    // The same MAC: nothing to announce.
    let same_irq = Arc::new(CountIrq::default());
    let same = MemBackend::new(usize::MAX, None);
    let mut s = MmioTransport::new(nic(1, &same), mem.clone(), same_irq.clone()).unwrap();
    s.restore_state(&state).unwrap();
    assert_eq!(rd(&mut s, 0x60) & INT_CONFIG, 0);

    let own = MemBackend::new(usize::MAX, None);
    let irq = Arc::new(CountIrq::default());
    let mut c = MmioTransport::new(nic(2, &own), mem.clone(), irq.clone()).unwrap();
    c.restore_state(&state).unwrap();
    assert_eq!(
        own.state().offload,
        offloads,
        "the clone's tap gets the offloads"
    );
    assert_ne!(
        rd(&mut c, 0x60) & INT_CONFIG,
        0,
        "the clone's MAC is announced"
    );
    let mut mac = [0u8; 6];
    c.read(0x100, &mut mac);
    assert_eq!(mac, [2, 0, 0, 0, 0, 2]);

    // A frame of the clone's tap reaches a buffer posted after the snapshot.
    let mut frame = vec![0u8; 12];
    frame.extend((0..60).map(|i| i as u8));
    let head = rx.add(&[w(0x10_0000, 2048)]);
    own.state().incoming.push_back(frame.clone());
    c.process_queue(0);
    assert_eq!(rx.used(), vec![(head, frame.len() as u32)]);
    // The guest's frame goes to the clone's tap alone.
    mem.write_slice(&frame, vm_memory::GuestAddress(0x20_0000))
        .unwrap();
    let head = tx.add(&[r(0x20_0000, frame.len() as u32)]);
    c.process_queue(1);
    assert_eq!(tx.used(), vec![(head, 0)]);
    assert_eq!(own.state().sent, vec![frame]);
    assert!(template.state().sent.is_empty());
}

fn activate<D: VirtioDevice>(t: &mut MmioTransport<D>, drivers: &[&Driver<'_>]) {
    negotiate(t);
    for (i, d) in drivers.iter().enumerate() {
        setup_queue(t, i as u32, d, 16);
    }
    wr(t, 0x70, DRIVER_OK_ALL);
    assert!(t.is_activated());
}

#[test]
fn a_disk_of_another_size_is_announced_by_a_config_change() {
    let mem = test_mem();
    let drv = Driver::new(&mem, 0x1_0000, 16);
    let disk = |bytes| Block::with_backend(Box::new(MemDisk(vec![0; bytes])), false);
    let irq = Arc::new(CountIrq::default());
    let mut t = MmioTransport::new(disk(4096), mem.clone(), irq.clone()).unwrap();
    activate(&mut t, &[&drv]);
    let state = t.save_state().unwrap();
    assert_eq!(state.device, VirtioDeviceState::Block { capacity: 8 });

    let same_irq = Arc::new(CountIrq::default());
    let mut same = MmioTransport::new(disk(4096), mem.clone(), same_irq.clone()).unwrap();
    same.restore_state(&state).unwrap();
    assert_eq!(rd(&mut same, 0xfc), 0, "same size: no configuration change");
    assert_eq!(same_irq.0.load(Ordering::SeqCst), 0);

    let big_irq = Arc::new(CountIrq::default());
    let mut big = MmioTransport::new(disk(8192), mem.clone(), big_irq.clone()).unwrap();
    big.restore_state(&state).unwrap();
    assert_eq!(rd(&mut big, 0xfc), 1, "ConfigGeneration moved on");
    assert_ne!(rd(&mut big, 0x60) & INT_CONFIG, 0);
    assert_eq!(big_irq.0.load(Ordering::SeqCst), 1);
    let mut cap = [0u8; 8];
    big.read(0x100, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 16);

    // Block state into an rng, stateless state into a disk: refused.
    let mut rng = MmioTransport::new(Rng::new(), mem.clone(), irq.clone()).unwrap();
    let mut as_rng = state.clone();
    as_rng.device_type = TYPE_RNG;
    assert!(rng.restore_state(&as_rng).is_err());
    let mut stateless = state.clone();
    stateless.device = VirtioDeviceState::Stateless;
    assert!(MmioTransport::new(disk(4096), mem.clone(), irq.clone())
        .unwrap()
        .restore_state(&stateless)
        .is_err());
}

#[test]
fn a_restored_vsock_resets_the_guests_transport() {
    use crate::virtio::vsock::{Vsock, EVQ};
    let mem = test_mem();
    let (rx, tx) = (
        Driver::new(&mem, 0x1_0000, 16),
        Driver::new(&mem, 0x2_0000, 16),
    );
    let mut ev = Driver::new(&mem, 0x3_0000, 16);
    let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/crx-vsock-snap").unwrap();
    let dev = |name: &str| Vsock::new(3, dir.as_path().join(name)).unwrap();
    let mut t =
        MmioTransport::new(dev("a.sock"), mem.clone(), Arc::new(CountIrq::default())).unwrap();
    activate(&mut t, &[&rx, &tx, &ev]);
    let head = ev.add(&[w(0x10_0000, 4)]);
    mem.write_slice(&[0xff; 4], vm_memory::GuestAddress(0x10_0000))
        .unwrap();
    let state = t.save_state().unwrap();
    assert_eq!(state.device, VirtioDeviceState::Stateless);

    let irq = Arc::new(CountIrq::default());
    let mut r = MmioTransport::new(dev("b.sock"), mem.clone(), irq.clone()).unwrap();
    r.restore_state(&state).unwrap();
    assert_eq!(ev.used(), vec![(head, 4)], "one event on queue {EVQ}");
    let mut event = [0xffu8; 4];
    mem.read_slice(&mut event, vm_memory::GuestAddress(0x10_0000))
        .unwrap();
    assert_eq!(event, [0; 4], "VIRTIO_VSOCK_EVENT_TRANSPORT_RESET");
    assert_eq!(irq.0.load(Ordering::SeqCst), 1);
    assert_ne!(rd(&mut r, 0x60) & INT_USED_RING, 0);
}

/// xorshift64: a deterministic stream of values.
fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// One of `choices`, or (when `choices` holds `u64::MAX`) the raw value.
fn pick(x: &mut u64, choices: &[u64]) -> u64 {
    let v = next(x);
    match choices[(v as usize) % choices.len()] {
        u64::MAX => next(x),
        c => c,
    }
}

/// Bounded fuzz: arbitrary transport state (a damaged or hostile state file that passed its
/// checksum) restored into a virtio-rng, which then serves its queue and is reset: refused or
/// served, never a panic.
#[test]
fn fuzz_restored_transport_state() {
    let mem = test_mem();
    let irq = Arc::new(CountIrq::default());
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let addrs = [0, 0x1_0000, 0x1_0100, 0xf_fff0, 1 << 40, u64::MAX];
    let mut restored = 0;
    for _ in 0..2000 {
        let x = &mut x;
        let q = QueueState {
            max_size: pick(x, &[256, 256, 16, 0]) as u16,
            next_avail: next(x) as u16,
            next_used: next(x) as u16,
            event_idx: next(x) & 1 == 1,
            size: pick(x, &[16, 256, 3, 0, 512]) as u16,
            ready: next(x) & 1 == 1,
            desc_table: pick(x, &addrs),
            avail_ring: pick(x, &addrs),
            used_ring: pick(x, &addrs),
        };
        let state = TransportState {
            device_type: pick(x, &[u64::from(TYPE_RNG), u64::from(TYPE_RNG), 2]) as u32,
            device_features_sel: next(x) as u32,
            driver_features_sel: next(x) as u32,
            acked_features: pick(x, &[VIRTIO_F_VERSION_1, u64::MAX]),
            queue_sel: pick(x, &[0, u64::MAX]) as u32,
            status: pick(x, &[u64::from(DRIVER_OK_ALL), 0, u64::MAX]) as u32,
            interrupt_status: next(x) as u32,
            config_generation: next(x) as u32,
            activated: next(x) & 1 == 1,
            queues: vec![q; 1 + usize::from(next(x).is_multiple_of(4))],
            device: match next(x) % 3 {
                0 => VirtioDeviceState::Block { capacity: next(x) },
                _ => VirtioDeviceState::Stateless,
            },
        };
        let mut t = MmioTransport::new(Rng::new(), mem.clone(), irq.clone()).unwrap();
        if t.restore_state(&state).is_ok() {
            restored += 1;
            t.process_queue(0);
            let _ = rd(&mut t, 0x44);
            wr(&mut t, 0x70, 0);
        }
    }
    assert!(restored > 0, "some states fit");
}
