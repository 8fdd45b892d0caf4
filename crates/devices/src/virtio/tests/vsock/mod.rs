//! vsock through the real transport and event-manager loop, with mock guest queues and real
//! Unix sockets in a temporary directory.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, SubscriberOps};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::tempdir::TempDir;

use crate::bus::BusDevice;
use crate::virtio::test_utils::*;
use crate::virtio::vsock::packet::*;
use crate::virtio::vsock::{Vsock, CONN_BUF_SIZE, EVQ, RXQ, TXQ};
use crate::virtio::*;

const CID: u64 = 3;
const QSIZE: u16 = 256;
const RX_BUF: u64 = 0x40_0000;
const RX_BUF_LEN: u32 = 4096 + PKT_HEADER_SIZE as u32;
const TX_BUF: u64 = 0x100_0000;
const TX_SLOT: u64 = 0x1_1000;
const EV_BUF: u64 = 0x80_0000;

struct NoIrq;
impl Interrupt for NoIrq {
    fn trigger(&self) -> std::io::Result<()> {
        Ok(())
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Pkt {
    src_cid: u64,
    dst_cid: u64,
    src_port: u32,
    dst_port: u32,
    op: u16,
    type_: u16,
    flags: u32,
    buf_alloc: u32,
    fwd_cnt: u32,
    data: Vec<u8>,
}

impl Pkt {
    fn guest(src_port: u32, dst_port: u32, op: u16) -> Self {
        Self {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            op,
            type_: TYPE_STREAM,
            buf_alloc: 256 * 1024,
            ..Default::default()
        }
    }

    fn encode(&self) -> [u8; PKT_HEADER_SIZE] {
        let mut h = [0u8; PKT_HEADER_SIZE];
        h[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        h[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        h[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        h[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        h[24..28].copy_from_slice(&(self.data.len() as u32).to_le_bytes());
        h[28..30].copy_from_slice(&self.type_.to_le_bytes());
        h[30..32].copy_from_slice(&self.op.to_le_bytes());
        h[32..36].copy_from_slice(&self.flags.to_le_bytes());
        h[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        h[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        h
    }

    fn decode(b: &[u8]) -> Self {
        let u32at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let len = u32at(24) as usize;
        Self {
            src_cid: u64::from_le_bytes(b[0..8].try_into().unwrap()),
            dst_cid: u64::from_le_bytes(b[8..16].try_into().unwrap()),
            src_port: u32at(16),
            dst_port: u32at(20),
            type_: u16::from_le_bytes(b[28..30].try_into().unwrap()),
            op: u16::from_le_bytes(b[30..32].try_into().unwrap()),
            flags: u32at(32),
            buf_alloc: u32at(36),
            fwd_cnt: u32at(40),
            data: b[PKT_HEADER_SIZE..PKT_HEADER_SIZE + len].to_vec(),
        }
    }
}

/// A guest driver plus the VMM's event loop, in one thread.
struct Harness<'a> {
    mem: &'a GuestMemoryMmap,
    rx: Driver<'a>,
    tx: Driver<'a>,
    ev: Driver<'a>,
    transport: Arc<Mutex<MmioTransport<Vsock>>>,
    em: EventManager<VirtioSubscriber<Vsock>>,
    tx_in_flight: usize,
    _dir: TempDir,
    path: PathBuf,
}

fn wr(t: &mut impl BusDevice, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

impl<'a> Harness<'a> {
    fn new(mem: &'a GuestMemoryMmap) -> Self {
        let dir = TempDir::new_with_prefix("/tmp/crx-vsock").unwrap();
        let path = dir.as_path().join("v.sock");
        let dev = Vsock::new(CID, &path).unwrap();
        let transport = Arc::new(Mutex::new(
            MmioTransport::new(dev, mem.clone(), Arc::new(NoIrq)).unwrap(),
        ));
        let rx = Driver::new(mem, 0, QSIZE);
        let tx = Driver::new(mem, 0x1_0000, QSIZE);
        let ev = Driver::new(mem, 0x2_0000, QSIZE);
        {
            let mut t = transport.lock().unwrap();
            let mut cfg = [0u8; 8];
            t.read(0x100, &mut cfg);
            assert_eq!(u64::from_le_bytes(cfg), CID);
            wr(&mut *t, 0x70, 3);
            wr(&mut *t, 0x24, 1);
            wr(&mut *t, 0x20, 1);
            wr(&mut *t, 0x70, 11);
            for (i, d) in [(RXQ, &rx), (TXQ, &tx), (EVQ, &ev)] {
                wr(&mut *t, 0x30, i as u32);
                wr(&mut *t, 0x38, u32::from(QSIZE));
                wr(&mut *t, 0x80, d.desc_table() as u32);
                wr(&mut *t, 0x90, d.avail_addr() as u32);
                wr(&mut *t, 0xa0, d.used_addr() as u32);
                wr(&mut *t, 0x44, 1);
            }
            wr(&mut *t, 0x70, 15);
            assert!(t.is_activated());
        }
        let mut em = EventManager::new().unwrap();
        em.add_subscriber(VirtioSubscriber::new(transport.clone()));
        Self {
            mem,
            rx,
            tx,
            ev,
            transport,
            em,
            tx_in_flight: 0,
            _dir: dir,
            path,
        }
    }

    /// Replaces the device by one restored from a snapshot of it (as a clone of a template):
    /// the guest's transport reset goes on the event queue (one buffer posted for it, at
    /// `EV_BUF`); the new device listens on another path.
    fn restore(&mut self) {
        self.ev.add(&[w(EV_BUF, 4)]);
        let state = self.transport.lock().unwrap().save_state().unwrap();
        let path = self._dir.as_path().join("restored.sock");
        let dev = Vsock::new(CID, &path).unwrap();
        let mut t = MmioTransport::new(dev, self.mem.clone(), Arc::new(NoIrq)).unwrap();
        t.restore_state(&state).unwrap();
        self.transport = Arc::new(Mutex::new(t));
        self.em = EventManager::new().unwrap();
        self.em
            .add_subscriber(VirtioSubscriber::new(self.transport.clone()));
        self.path = path;
        assert_eq!(self.ev.used().len(), 1, "the transport reset event");
    }

    fn notify(&mut self, q: usize) {
        wr(&mut *self.transport.lock().unwrap(), 0x50, q as u32);
    }

    /// Runs the event loop until it is idle.
    fn pump(&mut self) {
        for _ in 0..64 {
            if self.em.run_with_timeout(0).unwrap() == 0 {
                return;
            }
        }
    }

    /// Runs the event loop, waiting up to `ms` for the first event.
    fn pump_wait(&mut self, ms: i32) {
        self.em.run_with_timeout(ms).unwrap();
        self.pump();
    }

    fn post_rx(&mut self, n: usize) {
        for _ in 0..n {
            let head = self.rx.next_head();
            self.rx
                .add(&[w(RX_BUF + u64::from(head) * 0x2000, RX_BUF_LEN)]);
        }
        self.notify(RXQ);
    }

    /// Packets the device delivered; their buffers are given back to the device.
    fn recv(&mut self) -> Vec<Pkt> {
        let used = self.rx.used();
        let mut out = Vec::new();
        for (head, len) in &used {
            let mut b = vec![0u8; *len as usize];
            self.mem
                .read_slice(&mut b, GuestAddress(RX_BUF + u64::from(*head) * 0x2000))
                .unwrap();
            out.push(Pkt::decode(&b));
        }
        if !used.is_empty() {
            self.post_rx(used.len());
        }
        out
    }

    fn send(&mut self, pkt: &Pkt) {
        if self.tx_in_flight >= 64 {
            self.pump();
            self.tx_in_flight = 0;
        }
        let completed = self.tx.used().len();
        let _ = completed;
        let head = self.tx.next_head();
        let base = TX_BUF + u64::from(head / 2) * TX_SLOT;
        self.mem
            .write_slice(&pkt.encode(), GuestAddress(base))
            .unwrap();
        if pkt.data.is_empty() {
            self.tx.add(&[r(base, PKT_HEADER_SIZE as u32)]);
            // Keep descriptor pairs aligned so slots map to heads.
            self.tx.add_padding();
        } else {
            self.mem
                .write_slice(&pkt.data, GuestAddress(base + 64))
                .unwrap();
            self.tx.add(&[
                r(base, PKT_HEADER_SIZE as u32),
                r(base + 64, pkt.data.len() as u32),
            ]);
        }
        self.tx_in_flight += 1;
        self.notify(TXQ);
    }

    fn vsock<R>(&self, f: impl FnOnce(&Vsock) -> R) -> R {
        f(self.transport.lock().unwrap().device())
    }

    /// Pumps until a packet matching `pred` arrives; returns everything received.
    fn recv_until(&mut self, what: &str, pred: impl Fn(&Pkt) -> bool) -> Vec<Pkt> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut all = Vec::new();
        loop {
            self.pump_wait(10);
            let got = self.recv();
            let done = got.iter().any(&pred);
            all.extend(got);
            if done {
                return all;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: got {all:?}"
            );
        }
    }
}

impl Driver<'_> {
    /// Skips one descriptor slot (so that every chain starts at an even index).
    fn add_padding(&mut self) {
        let head = self.next_head();
        self.write_desc(head, 0, 0, 0, 0);
        self.skip(1);
    }
}

/// Host-initiated connection: returns (client stream, host port, guest port).
fn host_connect(h: &mut Harness<'_>, guest_port: u32) -> (UnixStream, u32) {
    let mut client = UnixStream::connect(&h.path).unwrap();
    client
        .write_all(format!("CONNECT {guest_port}\n").as_bytes())
        .unwrap();
    let pkts = h.recv_until("REQUEST", |p| p.op == OP_REQUEST);
    let req = pkts.iter().find(|p| p.op == OP_REQUEST).unwrap();
    assert_eq!(
        (req.src_cid, req.dst_cid, req.dst_port),
        (HOST_CID, CID, guest_port)
    );
    assert!(req.src_port >= 1 << 30);
    assert_eq!(req.type_, TYPE_STREAM);
    let host_port = req.src_port;
    h.send(&Pkt::guest(guest_port, host_port, OP_RESPONSE));
    h.pump();
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    while b[0] != b'\n' {
        client.read_exact(&mut b).unwrap();
        line.push(b[0]);
    }
    assert_eq!(
        String::from_utf8(line).unwrap(),
        format!("OK {host_port}\n")
    );
    (client, host_port)
}

mod data;
mod handshake;
