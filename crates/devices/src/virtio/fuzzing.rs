//! Entry points for the fuzz targets in `crates/devices/fuzz` (and the seeded `#[test]`s that
//! run the same functions in CI). Each takes arbitrary bytes, builds guest memory and queues
//! from them as a hostile driver would, and runs the device. The only property checked is
//! that nothing panics, hangs or allocates without bound.

use std::cell::RefCell;
use std::os::unix::net::UnixListener;

use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use super::blk::{Block, MemDisk};
use super::net::{MemBackend, Net, NetOptions, RXQ as NET_RXQ, TXQ as NET_TXQ};
use super::vsock::{Vsock, EVQ, RXQ, TXQ};
use super::{EventFd, EventSet, VirtioDevice};

const MEM_SIZE: usize = 1 << 20;
pub(crate) const QSIZE: u16 = 16;
/// Where descriptor addresses point most of the time, and where the input's payload goes.
pub(crate) const DATA: u64 = 0x8_0000;

/// Header slots: descriptor addresses that `fuzz_vsock` can make look like real packets.
const SLOTS: u8 = 64;
const SLOT_SIZE: u64 = 512;

fn slot_addr(n: u8) -> u64 {
    DATA + u64::from(n % SLOTS) * SLOT_SIZE
}

/// Reads input bytes; past the end everything is zero.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from(self.u16()) | (u32::from(self.u16()) << 16)
    }
    fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }
}

/// Writes a queue of `QSIZE` descriptors at `base` from the input and returns it ready.
fn hostile_queue(mem: &GuestMemoryMmap, input: &mut Input<'_>, base: u64) -> Queue {
    let desc = base;
    let avail = base + 16 * u64::from(QSIZE);
    let used = avail + 0x100;
    for i in 0..u64::from(QSIZE) {
        let mode = input.u8();
        let addr = match mode & 3 {
            0 => input.u64(),                       // anywhere
            1 => DATA + u64::from(input.u16()) * 8, // inside guest memory
            _ => slot_addr(input.u8()),             // at a header slot (see `fuzz_vsock`)
        };
        let len = match mode >> 6 {
            0 => input.u32(),
            _ => u32::from(input.u16() % 2048),
        };
        // Flags: NEXT, WRITE, INDIRECT as the input says.
        let flags = u16::from((mode >> 2) & 7);
        let next = u16::from(input.u8()) % (QSIZE + 2);
        let _ = write_desc(mem, desc + 16 * i, addr, len, flags, next);
    }
    let n = input.u8() % (QSIZE as u8 + 4);
    for i in 0..u64::from(n) {
        let head = u16::from(input.u8()) % (QSIZE + 4);
        let _ = mem.write_obj(head, GuestAddress(avail + 4 + 2 * (i % u64::from(QSIZE))));
    }
    let _ = mem.write_obj(u16::from(n), GuestAddress(avail + 2));
    ready_queue(desc, avail, used)
}

fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("1 MiB of guest memory")
}

/// Fuzz target: virtio-blk request parsing and execution over hostile chains.
pub fn fuzz_blk(data: &[u8]) {
    run_blk(data);
}

/// [`fuzz_blk`], returning the guest memory afterwards (the fixed corpus checks the status
/// bytes the device wrote).
pub(crate) fn run_blk(data: &[u8]) -> GuestMemoryMmap {
    let mem = guest_memory();
    let mut input = Input(data);
    let read_only = input.u8() & 1 == 1;
    let mut queues = [hostile_queue(&mem, &mut input, 0)];
    // Headers and payload: the rest of the input, at DATA.
    let _ = mem.write_slice(&input.0[..input.0.len().min(0x4_0000)], GuestAddress(DATA));
    let mut dev = Block::with_backend(Box::new(MemDisk(vec![0; 64 * 1024])), read_only);
    dev.process_queue(&mem, &mut queues, 0);
    mem
}

struct VsockRig {
    dev: Vsock,
    /// The host service that guest connections to `HOST_PORT` reach.
    service: UnixListener,
    _dir: vmm_sys_util::tempdir::TempDir,
}

const HOST_PORT: u32 = 5000;

thread_local! {
    static VSOCK: RefCell<Option<VsockRig>> = const { RefCell::new(None) };
}

fn vsock_rig() -> VsockRig {
    let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/crx-vsock-fuzz")
        .expect("temporary directory");
    let path = dir.as_path().join("v.sock");
    let dev = Vsock::new(3, &path).expect("vsock listener");
    let service =
        UnixListener::bind(format!("{}_{HOST_PORT}", path.display())).expect("host service socket");
    service.set_nonblocking(true).expect("nonblocking listener");
    VsockRig {
        dev,
        service,
        _dir: dir,
    }
}

/// Fuzz target: the vsock TX path (packet parsing, connection state machine, credit
/// accounting) and RX path.
pub fn fuzz_vsock(data: &[u8]) {
    VSOCK.with(|cell| {
        let mut slot = cell.borrow_mut();
        let rig = slot.get_or_insert_with(vsock_rig);
        let mem = guest_memory();
        let mut input = Input(data);
        let steer = input.u8();
        let rx = hostile_queue(&mem, &mut input, 0);
        let tx = hostile_queue(&mem, &mut input, 0x1000);
        let ev = hostile_queue(&mem, &mut input, 0x2000);
        let mut queues = [rx, tx, ev];
        let payload = &input.0[..input.0.len().min(0x4_0000)];
        let _ = mem.write_slice(payload, GuestAddress(DATA));
        if steer & 1 == 1 {
            // Make the header slots look like packets of a few guest connections to the host
            // service, so the fuzzer reaches the connection logic rather than the CID check.
            for n in 0..SLOTS {
                let at = slot_addr(n);
                let _ = mem.write_obj(3u64, GuestAddress(at));
                let _ = mem.write_obj(2u64, GuestAddress(at + 8));
                let _ = mem.write_obj(1000 + u32::from(n / 8 % 4), GuestAddress(at + 16));
                let _ = mem.write_obj(HOST_PORT, GuestAddress(at + 20));
                let _ = mem.write_obj(1u16, GuestAddress(at + 28));
                // Every op for each of those connections, REQUEST first.
                let op: u16 = [1, 5, 5, 6, 7, 4, 5, 3][usize::from(n % 8)];
                let _ = mem.write_obj(op, GuestAddress(at + 30));
                if steer & 2 == 2 {
                    // Keep `len` small so the data fits the slot.
                    let _ = mem.write_obj(u32::from(n) * 4, GuestAddress(at + 24));
                }
            }
        }
        let rounds = 1 + (steer >> 5);
        for _ in 0..rounds {
            for index in [TXQ, RXQ, EVQ] {
                rig.dev.process_queue(&mem, &mut queues, index);
            }
        }
        rig.dev.drain_fd_ops(&mut |_| {});
        rig.dev.reset();
        rig.dev.drain_fd_ops(&mut |_| {});
        // Empty the service's backlog so that later inputs can connect again.
        while rig.service.accept().is_ok() {}
    });
}

/// A full receive queue at `base`: each descriptor one 8 KiB device-writable buffer (the
/// input all zeros), or readable, of another length, anywhere, chained or indirect.
fn roomy_rx_queue(mem: &GuestMemoryMmap, input: &mut Input<'_>, base: u64) -> Queue {
    use virtio_bindings::virtio_ring::{
        VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    };
    let avail = base + 16 * u64::from(QSIZE);
    let used = avail + 0x100;
    for i in 0..QSIZE {
        let mut addr = DATA + u64::from(i) * 0x2000;
        let mut len = 0x2000u32;
        let mut flags = VRING_DESC_F_WRITE as u16;
        let mut next = 0;
        match input.u8() & 7 {
            1 => flags = 0,
            2 => len = u32::from(input.u16()),
            3 => addr = input.u64(),
            4 => {
                flags |= VRING_DESC_F_NEXT as u16;
                next = u16::from(input.u8()) % QSIZE;
            }
            5 => flags |= VRING_DESC_F_INDIRECT as u16,
            _ => {}
        }
        let _ = write_desc(mem, base + 16 * u64::from(i), addr, len, flags, next);
        let _ = mem.write_obj(i, GuestAddress(avail + 4 + 2 * u64::from(i)));
    }
    let _ = mem.write_obj(QSIZE, GuestAddress(avail + 2));
    ready_queue(base, avail, used)
}

/// A ready queue of `QSIZE` over the given rings.
fn ready_queue(desc: u64, avail: u64, used: u64) -> Queue {
    let mut q = Queue::new(QSIZE).expect("constant size is valid");
    q.set_size(QSIZE);
    let _ = q.try_set_desc_table_address(GuestAddress(desc));
    let _ = q.try_set_avail_ring_address(GuestAddress(avail));
    let _ = q.try_set_used_ring_address(GuestAddress(used));
    q.set_ready(true);
    q
}

/// Writes one split-ring descriptor at guest address `at` (also the tests' writer).
pub(crate) fn write_desc(
    mem: &GuestMemoryMmap,
    at: u64,
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
) -> Result<(), GuestMemoryError> {
    let d = RawDescriptor::from(Descriptor::new(addr, len, flags, next));
    mem.write_obj(d, GuestAddress(at))
}

/// Fuzz target: the virtio-net TX path (chain gathering, header checks against the features
/// the input negotiates, a backend that fills up) and, on the same queues, the RX path with
/// hostile receive buffers and host frames cut from the input; then the RX path again over a
/// ring with room for the largest frame, bent by the input, and frames up to 64 KiB.
pub fn fuzz_net_tx(data: &[u8]) {
    run_net_tx(data);
}

/// [`fuzz_net_tx`], returning the frames that reached the backend (for the fixed corpus).
pub(crate) fn run_net_tx(data: &[u8]) -> Vec<Vec<u8>> {
    let mem = guest_memory();
    let mut input = Input(data);
    // Any subset of the offered features (low 32 bits: the device-specific ones).
    let acked = u64::from(input.u32()) | super::VIRTIO_F_VERSION_1;
    let capacity = usize::from(input.u8() % 4);
    let rx = hostile_queue(&mem, &mut input, 0);
    let tx = hostile_queue(&mem, &mut input, 0x1000);
    let mut queues = [rx, tx];
    let fd = 1000;
    let backend = MemBackend::new(capacity, Some(fd));
    {
        let mut state = backend.state();
        for _ in 0..(input.u8() % 4) {
            let len = usize::from(input.u16() % 4096);
            let take = len.min(input.0.len());
            state.incoming.push_back(input.0[..take].to_vec());
        }
    }
    let _ = mem.write_slice(&input.0[..input.0.len().min(0x4_0000)], GuestAddress(DATA));
    let opts = NetOptions {
        mac: super::net::MacAddr([2, 0, 0, 0, 0, 1]),
        mtu: Some(1500),
        ufo: true,
    };
    let mut dev = Net::new(Box::new(backend.clone()), opts);
    let Ok(evts) = [EventFd::new(0), EventFd::new(0)]
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
    else {
        return Vec::new();
    };
    if dev.activate_queues(acked, &mem, &queues, &evts).is_err() {
        return Vec::new();
    }
    dev.process_queue(&mem, &mut queues, NET_TXQ);
    // The tap drains: the waiting chains go.
    backend.state().capacity = 64;
    dev.process_host_event(Some((&mem, &mut queues)), fd, EventSet::OUT | EventSet::IN);
    dev.process_queue(&mem, &mut queues, NET_RXQ);
    // A receive ring as Linux fills it (room for the largest frame), bent here and there as
    // the input says, and frames up to the largest.
    queues[NET_RXQ] = roomy_rx_queue(&mem, &mut input, 0x2000);
    for _ in 0..=(input.u8() % 4) {
        let len = usize::from(input.u16()) + 14;
        backend.state().incoming.push_back(vec![0; len]);
    }
    dev.process_host_event(Some((&mem, &mut queues)), fd, EventSet::IN);
    dev.drain_fd_ops(&mut |_| {});
    dev.reset();
    let sent = std::mem::take(&mut backend.state().sent);
    sent
}
