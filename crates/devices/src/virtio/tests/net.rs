//! virtio-net against a driver model (mocked queues) and an in-memory backend: odd chain
//! shapes, hostile headers, too-small buffers, full rings and back-pressure both ways.

use virtio_bindings::virtio_net::*;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use crate::virtio::net::{MacAddr, MemBackend, Net, NetOptions, HDR_LEN, RXQ, TXQ};
use crate::virtio::test_utils::*;
use crate::virtio::{EventFd, EventSet, FdOp, VirtioDevice, VIRTIO_F_VERSION_1};

const FD: i32 = 1000;
const RX_BASE: u64 = 0;
const TX_BASE: u64 = 0x8000;
const BUFS: u64 = 0x10_0000;

fn bit(b: u32) -> u64 {
    1 << b
}

/// What a Linux guest acks: everything offered but UFO.
fn linux_features() -> u64 {
    VIRTIO_F_VERSION_1
        | bit(VIRTIO_NET_F_MAC)
        | bit(VIRTIO_NET_F_STATUS)
        | bit(VIRTIO_NET_F_MRG_RXBUF)
        | bit(VIRTIO_NET_F_CSUM)
        | bit(VIRTIO_NET_F_GUEST_CSUM)
        | bit(VIRTIO_NET_F_GUEST_TSO4)
        | bit(VIRTIO_NET_F_GUEST_TSO6)
        | bit(VIRTIO_NET_F_HOST_TSO4)
        | bit(VIRTIO_NET_F_HOST_TSO6)
}

fn opts() -> NetOptions {
    NetOptions {
        mac: "02:00:00:00:00:01".parse().unwrap(),
        mtu: None,
        ufo: false,
    }
}

struct Rig<'a> {
    net: Net,
    backend: MemBackend,
    rx: Driver<'a>,
    tx: Driver<'a>,
    qs: [Queue; 2],
    evts: [EventFd; 2],
}

impl<'a> Rig<'a> {
    fn new(mem: &'a vm_memory::GuestMemoryMmap, qsize: u16, acked: u64) -> Self {
        let backend = MemBackend::new(usize::MAX, Some(FD));
        let mut net = Net::new(Box::new(backend.clone()), opts());
        let rx = Driver::new(mem, RX_BASE, qsize);
        let tx = Driver::new(mem, TX_BASE, qsize);
        let qs = [rx.queue(), tx.queue()];
        let evts = [EventFd::new(0).unwrap(), EventFd::new(0).unwrap()];
        let mut qs = qs;
        net.activate_queues(acked, mem, &qs, &evts).unwrap();
        // What the event loop does when activation wakes it.
        assert_eq!(evts[RXQ].read().unwrap(), 1);
        net.process_queue(mem, &mut qs, RXQ);
        Rig {
            net,
            backend,
            rx,
            tx,
            qs,
            evts,
        }
    }
    fn kick(&mut self, q: usize) -> bool {
        self.net.process_queue(self.rx.mem, &mut self.qs, q)
    }
    fn tap_event(&mut self, events: EventSet) -> bool {
        let mem = self.rx.mem;
        self.net
            .process_host_event(Some((mem, &mut self.qs)), FD, events)
    }
    fn ops(&mut self) -> Vec<FdOp> {
        let mut ops = Vec::new();
        self.net.drain_fd_ops(&mut |op| ops.push(op));
        ops
    }
}

/// A frame with a zero header and `len` bytes of Ethernet frame (a counting pattern).
fn frame(len: usize) -> Vec<u8> {
    let mut f = vec![0u8; HDR_LEN];
    f.extend((0..len).map(|i| (i % 251) as u8));
    f
}

/// Writes `bytes` at `addr` and returns the readable descriptors that hold them, split at
/// `cuts`.
fn readable(mem: &vm_memory::GuestMemoryMmap, addr: u64, bytes: &[u8], cuts: &[usize]) -> Vec<D> {
    mem.write_slice(bytes, GuestAddress(addr)).unwrap();
    let mut out = Vec::new();
    let mut start = 0;
    for &c in cuts.iter().chain([bytes.len()].iter()) {
        // Spread the pieces out so each is its own region of guest memory.
        out.push(r(addr + start as u64, (c - start) as u32));
        start = c;
    }
    out
}

fn read(mem: &vm_memory::GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
    v
}

#[test]
fn config_space_and_features() {
    let mut o = opts();
    o.mtu = Some(9000);
    o.ufo = true;
    let net = Net::new(Box::new(MemBackend::new(1, None)), o);
    let mut c = [0u8; 12];
    net.read_config(0, &mut c);
    assert_eq!(&c[..6], &[2, 0, 0, 0, 0, 1]);
    assert_eq!(
        u16::from_le_bytes([c[6], c[7]]),
        VIRTIO_NET_S_LINK_UP as u16
    );
    assert_eq!(u16::from_le_bytes([c[10], c[11]]), 9000);
    let f = net.features();
    for b in [
        VIRTIO_NET_F_MTU,
        VIRTIO_NET_F_GUEST_UFO,
        VIRTIO_NET_F_HOST_UFO,
        VIRTIO_NET_F_MRG_RXBUF,
    ] {
        assert_ne!(f & bit(b), 0, "feature {b}");
    }
    assert_eq!(f & bit(VIRTIO_NET_F_CTRL_VQ), 0);
    let plain = Net::new(Box::new(MemBackend::new(1, None)), opts());
    assert_eq!(
        plain.features() & (bit(VIRTIO_NET_F_MTU) | bit(VIRTIO_NET_F_HOST_UFO)),
        0
    );
    assert_eq!(MacAddr([2, 0, 0, 0, 0, 1]), opts().mac);
}

#[test]
fn tap_offloads_follow_the_negotiated_features() {
    let mem = test_mem();
    let cases = [
        (
            linux_features(),
            libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6,
        ),
        (
            VIRTIO_F_VERSION_1 | bit(VIRTIO_NET_F_GUEST_CSUM),
            libc::TUN_F_CSUM,
        ),
        // Segmentation without checksum offload is meaningless: nothing.
        (VIRTIO_F_VERSION_1 | bit(VIRTIO_NET_F_GUEST_TSO4), 0),
        (VIRTIO_F_VERSION_1, 0),
    ];
    for (acked, want) in cases {
        let mut rig = Rig::new(&mem, 16, acked);
        assert_eq!(rig.backend.state().offload, Some(want), "acked {acked:#x}");
        rig.net.reset();
        assert_eq!(rig.backend.state().offload, Some(0));
    }
}

#[test]
fn activation_needs_both_queues_and_wakes_the_event_loop() {
    let mem = test_mem();
    let mut net = Net::new(Box::new(MemBackend::new(1, Some(FD))), opts());
    let mut ops = Vec::new();
    net.drain_fd_ops(&mut |op| ops.push(op));
    // Registered from the start, watching nothing until activation.
    assert_eq!(ops, vec![FdOp::Add(FD, EventSet::empty())]);
    let drv = Driver::new(&mem, 0, 16);
    let evts = [EventFd::new(0).unwrap(), EventFd::new(0).unwrap()];
    let not_ready = Queue::new(16).unwrap();
    assert!(net
        .activate_queues(linux_features(), &mem, &[drv.queue(), not_ready], &evts)
        .is_err());
    net.activate_queues(linux_features(), &mem, &[drv.queue(), drv.queue()], &evts)
        .unwrap();
    assert_eq!(evts[RXQ].read().unwrap(), 1);
}

#[test]
fn tx_sends_frames_of_any_chain_shape() {
    let mem = test_mem();
    let mut rig = Rig::new(&mem, 16, linux_features());
    let f1 = frame(60);
    let f2 = frame(1514);
    // One descriptor; then header split mid-field and the payload in three odd pieces.
    let c1 = readable(&mem, BUFS, &f1, &[]);
    let c2 = readable(&mem, BUFS + 0x1000, &f2, &[5, 12, 13, 700]);
    let h1 = rig.tx.add(&c1);
    let h2 = rig.tx.add(&c2);
    assert!(rig.kick(TXQ));
    assert_eq!(rig.tx.used(), vec![(h1, 0), (h2, 0)]);
    assert_eq!(rig.backend.state().sent, vec![f1, f2]);
    assert_eq!(rig.net.stats().tx_frames, 2);
}

#[test]
fn tx_takes_frames_through_indirect_tables() {
    let mem = test_mem();
    let mut rig = Rig::new(
        &mem,
        16,
        linux_features() | bit(VIRTIO_RING_F_INDIRECT_DESC),
    );
    assert_ne!(rig.net.features() & bit(VIRTIO_RING_F_INDIRECT_DESC), 0);
    // A frame in 20 pieces: more descriptors than the ring has, in one slot.
    let f = frame(1514);
    let cuts: Vec<usize> = (1..20).map(|i| i * 70).collect();
    let pieces = readable(&mem, BUFS, &f, &cuts);
    let table = BUFS + 0x1_0000;
    let h1 = rig
        .tx
        .add_indirect(table, &pieces, 16 * pieces.len() as u32);
    // A table whose length is not a whole number of descriptors, and one that points at
    // another indirect table: dropped, and the next frame still goes through.
    let h2 = rig.tx.add_indirect(table + 0x1000, &pieces[..2], 24);
    let nested = table + 0x2000;
    let h3 = rig.tx.add_indirect(nested, &[r(table, 32)], 16);
    write_raw_desc(&mem, nested, table, 32, VRING_DESC_F_INDIRECT as u16, 0);
    let good = frame(100);
    let h4 = rig.tx.add(&readable(&mem, BUFS + 0x3_0000, &good, &[]));
    assert!(rig.kick(TXQ));
    assert_eq!(rig.tx.used(), vec![(h1, 0), (h2, 0), (h3, 0), (h4, 0)]);
    assert_eq!(rig.backend.state().sent, vec![f, good]);
    assert_eq!(rig.net.stats().tx_dropped, 2);
}

#[test]
fn tx_drops_malformed_chains_and_keeps_going() {
    let mem = test_mem();
    let mut rig = Rig::new(&mem, 16, linux_features());
    let mut heads = vec![
        // Shorter than a header and an Ethernet header.
        rig.tx.add(&readable(&mem, BUFS, &frame(13), &[])),
        // Larger than any frame (64 KiB GSO frame plus headers).
        rig.tx.add(&[r(BUFS, 40_000), r(BUFS + 40_000, 40_000)]),
        // Outside guest memory.
        rig.tx.add(&[r(0xffff_ffff_0000, 100)]),
        // Device-writable only: nothing to send.
        rig.tx.add(&[w(BUFS, 100)]),
    ];
    // A descriptor that loops onto itself: read as many times as the queue is long, then
    // the chain ends (bounded, sent as one frame of zeros).
    let looped = rig.tx.next_head();
    rig.tx
        .write_desc(looped, BUFS, 64, VRING_DESC_F_NEXT as u16, looped);
    rig.tx.skip(1);
    rig.tx.publish(looped);
    let sent_looped = mem.write_slice(&[0u8; 64], GuestAddress(BUFS + 0x4_0000));
    sent_looped.unwrap();
    rig.tx.write_desc(
        looped,
        BUFS + 0x4_0000,
        64,
        VRING_DESC_F_NEXT as u16,
        looped,
    );
    heads.push(looped);
    // Header asking for a checksum beyond the frame.
    let mut bad_csum = frame(60);
    bad_csum[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
    bad_csum[6..8].copy_from_slice(&50u16.to_le_bytes());
    bad_csum[8..10].copy_from_slice(&16u16.to_le_bytes());
    heads.push(rig.tx.add(&readable(&mem, BUFS + 0x2_0000, &bad_csum, &[])));
    // A good frame still goes through.
    let good = frame(100);
    heads.push(rig.tx.add(&readable(&mem, BUFS + 0x3_0000, &good, &[])));
    assert!(rig.kick(TXQ));
    let used: Vec<u16> = rig.tx.used().iter().map(|u| u.0).collect();
    assert_eq!(used, heads);
    assert_eq!(rig.backend.state().sent, vec![vec![0; 16 * 64], good]);
    assert_eq!(rig.net.stats().tx_dropped, 5);
}

#[test]
fn tx_segmentation_needs_negotiation() {
    let mem = test_mem();
    // The driver acked no offloads at all.
    let mut rig = Rig::new(&mem, 16, VIRTIO_F_VERSION_1 | bit(VIRTIO_NET_F_MAC));
    let mut gso = frame(3000);
    gso[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
    gso[1] = VIRTIO_NET_HDR_GSO_TCPV4 as u8;
    gso[2..4].copy_from_slice(&54u16.to_le_bytes());
    gso[4..6].copy_from_slice(&1448u16.to_le_bytes());
    gso[6..8].copy_from_slice(&34u16.to_le_bytes());
    gso[8..10].copy_from_slice(&16u16.to_le_bytes());
    rig.tx.add(&readable(&mem, BUFS, &gso, &[]));
    rig.kick(TXQ);
    assert!(rig.backend.state().sent.is_empty());
    // With HOST_TSO4 and CSUM it passes.
    let mut rig = Rig::new(&mem, 16, linux_features());
    rig.tx.add(&readable(&mem, BUFS, &gso, &[]));
    rig.kick(TXQ);
    assert_eq!(rig.backend.state().sent, vec![gso]);
}

#[test]
fn tx_full_backend_waits_for_writable_without_consuming() {
    let mem = test_mem();
    let mut rig = Rig::new(&mem, 16, linux_features());
    rig.backend.state().capacity = 1;
    rig.ops();
    let heads: Vec<u16> = (0..3)
        .map(|i| {
            rig.tx
                .add(&readable(&mem, BUFS + i * 0x1000, &frame(60), &[]))
        })
        .collect();
    assert!(rig.kick(TXQ));
    // One sent; the second waits in the ring; the device now waits for the tap to drain.
    assert_eq!(rig.tx.used(), vec![(heads[0], 0)]);
    assert_eq!(
        rig.ops(),
        vec![FdOp::Modify(FD, EventSet::IN | EventSet::OUT)]
    );
    // Another kick while full: still nothing consumed, nothing new to watch.
    assert!(!rig.kick(TXQ));
    assert!(rig.tx.used().is_empty());
    assert!(rig.ops().is_empty());
    rig.backend.state().capacity = 10;
    assert!(rig.tap_event(EventSet::OUT));
    assert_eq!(rig.tx.used(), vec![(heads[1], 0), (heads[2], 0)]);
    assert_eq!(rig.backend.state().sent.len(), 3);
    assert_eq!(rig.ops(), vec![FdOp::Modify(FD, EventSet::IN)]);
}

#[test]
fn tx_frames_the_host_refuses_are_dropped_not_retried() {
    let mem = test_mem();
    let mut rig = Rig::new(&mem, 16, linux_features());
    rig.backend.state().write_error = Some(std::io::ErrorKind::InvalidInput);
    let h = rig.tx.add(&readable(&mem, BUFS, &frame(60), &[]));
    assert!(rig.kick(TXQ));
    assert_eq!(rig.tx.used(), vec![(h, 0)]);
    assert_eq!(rig.net.stats().tx_dropped, 1);
    assert_eq!(rig.net.interest(), Some(EventSet::IN));
}

/// A host frame: a header the tap would write (num_buffers left as garbage) and `len` bytes.
fn host_frame(len: usize) -> Vec<u8> {
    let mut f = frame(len);
    f[10] = 0xaa;
    f[11] = 0xbb;
    f
}

fn num_buffers(mem: &vm_memory::GuestMemoryMmap, addr: u64) -> u16 {
    let b = read(mem, addr + 10, 2);
    u16::from_le_bytes([b[0], b[1]])
}

#[test]
fn rx_without_mergeable_buffers_one_chain_per_frame() {
    let mem = test_mem();
    let acked = linux_features() & !bit(VIRTIO_NET_F_MRG_RXBUF);
    let mut rig = Rig::new(&mem, 16, acked);
    let f = host_frame(1514);
    // Too small for the frame, then a big one split in two descriptors.
    let small = rig.rx.add(&[w(BUFS, 1000)]);
    let big = rig.rx.add(&[w(BUFS + 0x1000, 100), w(BUFS + 0x2000, 2000)]);
    rig.backend.state().incoming.extend([f.clone(), f.clone()]);
    assert!(rig.tap_event(EventSet::IN));
    assert_eq!(rig.rx.used(), vec![(small, 0), (big, f.len() as u32)]);
    let mut got = read(&mem, BUFS + 0x1000, 100);
    got.extend(read(&mem, BUFS + 0x2000, f.len() - 100));
    let mut want = f.clone();
    want[10..12].copy_from_slice(&1u16.to_le_bytes());
    assert_eq!(got, want);
    assert_eq!(rig.net.stats().rx_dropped, 1);
    assert_eq!(rig.net.stats().rx_frames, 1);
}

#[test]
fn rx_mergeable_spreads_a_frame_and_publishes_it_at_once() {
    let mem = test_mem();
    let mut rig = Rig::new(&mem, 16, linux_features());
    let heads: Vec<u16> = (0..4)
        .map(|i| rig.rx.add(&[w(BUFS + i * 0x1000, 1500)]))
        .collect();
    let f = host_frame(4000 - HDR_LEN);
    rig.backend.state().incoming.push_back(f.clone());
    assert!(rig.tap_event(EventSet::IN));
    assert_eq!(
        rig.rx.used(),
        vec![(heads[0], 1500), (heads[1], 1500), (heads[2], 1000)]
    );
    assert_eq!(num_buffers(&mem, BUFS), 3);
    let mut got = read(&mem, BUFS, 1500);
    got.extend(read(&mem, BUFS + 0x1000, 1500));
    got.extend(read(&mem, BUFS + 0x2000, 1000));
    assert_eq!(&got[HDR_LEN..], &f[HDR_LEN..]);
}

#[test]
fn rx_waits_for_buffers_without_reading_more() {
    let mem = test_mem();
    let mut rig = Rig::new(&mem, 16, linux_features());
    rig.ops();
    rig.backend
        .state()
        .incoming
        .extend([host_frame(3000), host_frame(100), host_frame(100)]);
    // One 1500-byte buffer: not enough for the first frame.
    let first = rig.rx.add(&[w(BUFS, 1500)]);
    assert!(!rig.tap_event(EventSet::IN));
    assert!(rig.rx.used().is_empty());
    // Exactly one frame was read; the fd is no longer watched for reading (no spinning).
    assert_eq!(rig.backend.state().incoming.len(), 2);
    assert_eq!(rig.ops(), vec![FdOp::Modify(FD, EventSet::empty())]);
    // The guest posts more: the waiting frame goes first, over the old and the new buffers.
    let more: Vec<u16> = (1..5)
        .map(|i| rig.rx.add(&[w(BUFS + i * 0x1000, 1500)]))
        .collect();
    assert!(rig.kick(RXQ));
    let used = rig.rx.used();
    assert_eq!(used[..2], [(first, 1500), (more[0], 1500)]);
    assert_eq!(used[2], (more[1], 12));
    assert_eq!(used[3..], [(more[2], 112), (more[3], 112)]);
    assert_eq!(rig.ops(), vec![FdOp::Modify(FD, EventSet::IN)]);
    assert!(rig.backend.state().incoming.is_empty());
}

#[test]
fn rx_frame_too_big_for_a_full_ring_is_dropped_and_the_ring_kept() {
    let mem = test_mem();
    let mut rig = Rig::new(&mem, 4, linux_features());
    for i in 0..4 {
        rig.rx.add(&[w(BUFS + i * 0x1000, 100)]);
    }
    rig.backend
        .state()
        .incoming
        .extend([host_frame(1000), host_frame(50)]);
    assert!(rig.tap_event(EventSet::IN));
    // The big frame is gone; the small one used the first buffer.
    let used = rig.rx.used();
    assert_eq!(used, vec![(0, 62)]);
    assert_eq!(rig.net.stats().rx_dropped, 1);
    assert_eq!(num_buffers(&mem, BUFS), 1);
}

#[test]
fn rx_malformed_buffers_are_returned_empty() {
    let mem = test_mem();
    let mut rig = Rig::new(&mem, 16, linux_features());
    // Read-only, outside memory, smaller than a header, then a good one.
    let ro = rig.rx.add(&[r(BUFS, 2000)]);
    let outside = rig.rx.add(&[w(0xffff_ffff_0000, 2000)]);
    let tiny = rig.rx.add(&[w(BUFS, 11)]);
    let good = rig.rx.add(&[w(BUFS + 0x1000, 2000)]);
    rig.backend.state().incoming.push_back(host_frame(100));
    assert!(rig.tap_event(EventSet::IN));
    assert_eq!(
        rig.rx.used(),
        vec![(ro, 0), (outside, 0), (tiny, 0), (good, 112)]
    );
    // A malformed buffer after a good one, and the ring runs dry: the frame is dropped
    // and every popped buffer returned.
    let a = rig.rx.add(&[w(BUFS, 100)]);
    let b = rig.rx.add(&[r(BUFS + 0x1000, 100)]);
    rig.backend.state().incoming.push_back(host_frame(1000));
    assert!(rig.tap_event(EventSet::IN));
    assert_eq!(rig.rx.used(), vec![(b, 0), (a, 0)]);
    assert_eq!(rig.net.interest(), Some(EventSet::IN));
}

#[test]
fn rx_reads_at_most_a_budget_per_wakeup() {
    let mem = test_mem();
    let mut rig = Rig::new(&mem, 256, linux_features());
    for i in 0..200 {
        rig.rx.add(&[w(BUFS + i * 0x1000, 2048)]);
    }
    let n = crate::virtio::net::RX_BUDGET + 10;
    rig.backend
        .state()
        .incoming
        .extend((0..n).map(|_| host_frame(60)));
    rig.tap_event(EventSet::IN);
    assert_eq!(rig.rx.used().len(), crate::virtio::net::RX_BUDGET);
    // Still watched: the loop comes back for the rest.
    assert_eq!(rig.net.interest(), Some(EventSet::IN));
    rig.tap_event(EventSet::IN);
    assert_eq!(rig.rx.used().len(), 10);
}

#[test]
fn inactive_device_and_failed_tap() {
    let mem = test_mem();
    let backend = MemBackend::new(1, Some(FD));
    let mut net = Net::new(Box::new(backend.clone()), opts());
    backend.state().incoming.push_back(host_frame(60));
    // Before activation: nothing read.
    assert!(!net.process_host_event(None, FD, EventSet::IN));
    assert_eq!(backend.state().incoming.len(), 1);
    // Another fd is not ours.
    let mut rig = Rig::new(&mem, 16, linux_features());
    rig.ops();
    assert!(!rig
        .net
        .process_host_event(Some((&mem, &mut rig.qs)), FD + 1, EventSet::IN));
    // A tap that errors is dropped from the loop for good, also across resets.
    rig.tap_event(EventSet::ERROR);
    assert_eq!(rig.ops(), vec![FdOp::Remove(FD)]);
    rig.net.reset();
    assert!(rig.ops().is_empty());
    assert_eq!(rig.net.interest(), None);
    let _ = &rig.evts;
}

#[test]
fn reset_forgets_the_waiting_frame() {
    let mem = test_mem();
    let mut rig = Rig::new(&mem, 16, linux_features());
    rig.backend.state().incoming.push_back(host_frame(60));
    rig.tap_event(EventSet::IN);
    assert_eq!(rig.net.interest(), Some(EventSet::empty()));
    rig.net.reset();
    assert_eq!(rig.net.interest(), Some(EventSet::empty()));
    assert_eq!(rig.net.acked_features(), 0);
    // Re-activated: reading again.
    rig.net
        .activate_queues(linux_features(), &mem, &rig.qs, &rig.evts)
        .unwrap();
    assert_eq!(rig.net.interest(), Some(EventSet::IN));
}

#[test]
fn tx_with_virtio_queue_mock() {
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    let mem = test_mem();
    let vq = MockSplitQueue::new(&mem, 16);
    let f = frame(80);
    mem.write_slice(&f, GuestAddress(0x4_0000)).unwrap();
    let descs = [
        RawDescriptor::from(Descriptor::new(0x4_0000, 20, VRING_DESC_F_NEXT as u16, 1)),
        RawDescriptor::from(Descriptor::new(0x4_0014, (f.len() - 20) as u32, 0, 0)),
    ];
    vq.add_desc_chains(&descs, 0).unwrap();
    let txq: Queue = vq.create_queue().unwrap();
    let backend = MemBackend::new(4, None);
    let mut net = Net::new(Box::new(backend.clone()), opts());
    let rx_vq = MockSplitQueue::create(&mem, GuestAddress(0x2_0000), 16);
    let rxq: Queue = rx_vq.create_queue().unwrap();
    let evts = [EventFd::new(0).unwrap(), EventFd::new(0).unwrap()];
    let mut qs = [rxq, txq];
    net.activate_queues(linux_features(), &mem, &qs, &evts)
        .unwrap();
    assert!(net.process_queue(&mem, &mut qs, TXQ));
    assert_eq!(backend.state().sent, vec![f]);
    assert_eq!(qs[TXQ].next_used(), 1);
}

fn used_flags(mem: &vm_memory::GuestMemoryMmap, d: &Driver<'_>) -> u16 {
    mem.read_obj(GuestAddress(d.used_addr())).unwrap()
}

/// The driver is asked to notify only when the device needs it (`VRING_USED_F_NO_NOTIFY`
/// otherwise): receive buffers only while a frame waits for them, transmitted frames only once
/// the ring is drained; a ring whose index claims chains it cannot hand out ends the pass.
#[test]
fn notifications_only_when_the_device_needs_them() {
    let mem = test_mem();
    let mut rig = Rig::new(&mem, 16, linux_features());
    // Activation's pass found the tap empty: the device reads the ring when a frame comes.
    assert_eq!(used_flags(&mem, &rig.rx), 1, "rx: no notification needed");
    rig.backend.state().incoming.push_back(host_frame(3000));
    assert!(!rig.tap_event(EventSet::IN));
    assert_eq!(
        used_flags(&mem, &rig.rx),
        0,
        "rx: a frame waits for buffers"
    );
    rig.rx.add(&[w(BUFS, 4000)]);
    assert!(rig.kick(RXQ));
    assert_eq!(used_flags(&mem, &rig.rx), 1, "rx: delivered, nothing waits");

    let f = frame(100);
    let c = readable(&mem, BUFS + 0x2000, &f, &[]);
    rig.tx.add(&c);
    assert!(rig.kick(TXQ));
    assert_eq!(
        used_flags(&mem, &rig.tx),
        0,
        "tx: drained, the next frame notifies"
    );
    // A hostile index far past the ring's size: the pass ends, the device does not spin.
    let idx: u16 = mem.read_obj(GuestAddress(rig.tx.avail_addr() + 2)).unwrap();
    mem.write_obj(idx.wrapping_add(300), GuestAddress(rig.tx.avail_addr() + 2))
        .unwrap();
    rig.kick(TXQ);
    assert_eq!(rig.backend.state().sent, vec![f]);
}
