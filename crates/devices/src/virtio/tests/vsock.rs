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
            transport,
            em,
            tx_in_flight: 0,
            _dir: dir,
            path,
        }
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

#[test]
fn host_initiated_handshake_and_small_data() {
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    h.post_rx(32);
    let (mut client, host_port) = host_connect(&mut h, 1234);
    assert_eq!(h.vsock(|v| v.connection_count()), 1);

    client.write_all(b"ping").unwrap();
    let pkts = h.recv_until("RW", |p| p.op == OP_RW);
    let rw = pkts.iter().find(|p| p.op == OP_RW).unwrap();
    assert_eq!(rw.data, b"ping");
    assert_eq!((rw.src_port, rw.dst_port), (host_port, 1234));
    assert_eq!(rw.buf_alloc, CONN_BUF_SIZE);

    let mut p = Pkt::guest(1234, host_port, OP_RW);
    p.data = b"pong".to_vec();
    h.send(&p);
    h.pump();
    let mut buf = [0u8; 4];
    client.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"pong");

    // Guest RST: the host client reads EOF.
    h.send(&Pkt::guest(1234, host_port, OP_RST));
    h.pump();
    assert_eq!(client.read(&mut buf).unwrap(), 0);
    assert_eq!(h.vsock(|v| v.connection_count()), 0);
}

#[test]
fn bad_connect_lines_are_closed() {
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    h.post_rx(8);
    for line in [&b"HELLO\n"[..], b"CONNECT x\n", &[b'A'; 100]] {
        let mut c = UnixStream::connect(&h.path).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(line).unwrap();
        h.pump_wait(50);
        h.pump_wait(50);
        let mut b = [0u8; 8];
        // Closed: EOF, or a reset if our bytes were left unread.
        match c.read(&mut b) {
            Ok(n) => assert_eq!(n, 0, "{line:?}"),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{line:?}"),
        }
    }
    assert!(h.recv().is_empty());
    assert_eq!(h.vsock(|v| v.connection_count()), 0);
}

#[test]
fn guest_initiated_connect_and_refusal() {
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    h.post_rx(32);
    let listener = UnixListener::bind(format!("{}_5000", h.path.display())).unwrap();

    h.send(&Pkt::guest(40000, 5000, OP_REQUEST));
    let pkts = h.recv_until("RESPONSE", |p| p.op == OP_RESPONSE);
    let resp = pkts.iter().find(|p| p.op == OP_RESPONSE).unwrap();
    assert_eq!(
        (resp.src_port, resp.dst_port, resp.dst_cid),
        (5000, 40000, CID)
    );
    let (mut server, _) = listener.accept().unwrap();

    let mut p = Pkt::guest(40000, 5000, OP_RW);
    p.data = b"hello host".to_vec();
    h.send(&p);
    h.pump();
    let mut buf = [0u8; 10];
    server.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello host");

    server.write_all(b"hi").unwrap();
    let pkts = h.recv_until("RW", |p| p.op == OP_RW);
    assert_eq!(pkts.iter().find(|p| p.op == OP_RW).unwrap().data, b"hi");

    // No listener on port 5001: RST. Unknown connection: RST.
    h.send(&Pkt::guest(40001, 5001, OP_REQUEST));
    let pkts = h.recv_until("RST", |p| p.op == OP_RST);
    assert!(pkts.iter().any(|p| p.op == OP_RST && p.dst_port == 40001));
    h.send(&Pkt::guest(40002, 5000, OP_RW));
    let pkts = h.recv_until("RST", |p| p.op == OP_RST);
    assert!(pkts.iter().any(|p| p.op == OP_RST && p.dst_port == 40002));

    // Packets with a spoofed source CID are dropped without reply.
    let mut spoof = Pkt::guest(40003, 5000, OP_REQUEST);
    spoof.src_cid = 7;
    h.send(&spoof);
    h.pump_wait(20);
    assert!(h.recv().is_empty());
    assert_eq!(h.vsock(|v| v.connection_count()), 1);
}

#[test]
fn half_close_both_directions_then_full_close() {
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    h.post_rx(32);
    let (mut client, hp) = host_connect(&mut h, 77);

    // Guest shuts its send side: the host reads EOF but can still send.
    let mut s = Pkt::guest(77, hp, OP_SHUTDOWN);
    s.flags = SHUTDOWN_F_SEND;
    h.send(&s);
    h.pump();
    let mut b = [0u8; 4];
    assert_eq!(client.read(&mut b).unwrap(), 0);
    client.write_all(b"more").unwrap();
    let pkts = h.recv_until("RW", |p| p.op == OP_RW);
    assert_eq!(pkts.iter().find(|p| p.op == OP_RW).unwrap().data, b"more");

    // Host shuts its send side: the guest gets SHUTDOWN(SEND), and the connection is done.
    client.shutdown(Shutdown::Write).unwrap();
    let pkts = h.recv_until("SHUTDOWN", |p| p.op == OP_SHUTDOWN);
    let sd = pkts.iter().find(|p| p.op == OP_SHUTDOWN).unwrap();
    assert_eq!(sd.flags, SHUTDOWN_F_SEND);
    if !pkts.iter().any(|p| p.op == OP_RST) {
        h.recv_until("RST", |p| p.op == OP_RST);
    }
    assert_eq!(h.vsock(|v| v.connection_count()), 0);
}

#[test]
fn host_half_close_then_guest_full_close() {
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    h.post_rx(32);
    let (mut client, hp) = host_connect(&mut h, 78);
    client.write_all(b"last words").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let pkts = h.recv_until("SHUTDOWN", |p| p.op == OP_SHUTDOWN);
    // Data before the SHUTDOWN.
    let ops: Vec<u16> = pkts.iter().map(|p| p.op).collect();
    let rw = ops.iter().position(|&o| o == OP_RW).unwrap();
    let sd = ops.iter().position(|&o| o == OP_SHUTDOWN).unwrap();
    assert!(rw < sd);
    // The guest can still send.
    let mut p = Pkt::guest(78, hp, OP_RW);
    p.data = b"reply".to_vec();
    h.send(&p);
    h.pump();
    let mut b = [0u8; 5];
    client.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"reply");
    // Guest closes: RST, and the host reads EOF.
    let mut s = Pkt::guest(78, hp, OP_SHUTDOWN);
    s.flags = SHUTDOWN_F_SEND | SHUTDOWN_F_RECEIVE;
    h.send(&s);
    let pkts = h.recv_until("RST", |p| p.op == OP_RST);
    assert!(pkts.iter().any(|p| p.op == OP_RST && p.dst_port == 78));
    assert_eq!(client.read(&mut b).unwrap(), 0);
    assert_eq!(h.vsock(|v| v.connection_count()), 0);
}

#[test]
fn host_closing_before_guest_answers_resets() {
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    h.post_rx(8);
    let mut client = UnixStream::connect(&h.path).unwrap();
    client.write_all(b"CONNECT 9\n").unwrap();
    let pkts = h.recv_until("REQUEST", |p| p.op == OP_REQUEST);
    let hp = pkts[0].src_port;
    drop(client);
    let pkts = h.recv_until("RST", |p| p.op == OP_RST);
    assert!(pkts.iter().any(|p| p.op == OP_RST && p.src_port == hp));
    assert_eq!(h.vsock(|v| v.connection_count()), 0);
    // A late RESPONSE gets a RST.
    h.send(&Pkt::guest(9, hp, OP_RESPONSE));
    let pkts = h.recv_until("RST", |p| p.op == OP_RST);
    assert!(pkts.iter().any(|p| p.op == OP_RST));
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn fnv(h: &mut u64, data: &[u8]) {
    for &b in data {
        *h ^= u64::from(b);
        *h = h.wrapping_mul(0x100_0000_01b3);
    }
}

#[test]
fn bulk_data_both_directions_with_checksums() {
    const LEN: usize = 4 << 20;
    const GUEST_BUF: u32 = 128 * 1024;
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    h.post_rx(128);
    let (client, hp) = host_connect(&mut h, 2000);
    let gp = 2000;

    let host_out = pattern(1, LEN);
    let guest_out = pattern(2, LEN);
    let mut expect_h2g = 0xcbf2_9ce4_8422_2325u64;
    fnv(&mut expect_h2g, &host_out);
    let mut expect_g2h = 0xcbf2_9ce4_8422_2325u64;
    fnv(&mut expect_g2h, &guest_out);

    let mut writer = client.try_clone().unwrap();
    let wt = std::thread::spawn(move || {
        for chunk in host_out.chunks(100_000) {
            writer.write_all(chunk).unwrap();
        }
    });
    let mut reader = client;
    let rt = std::thread::spawn(move || {
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        let mut n = 0;
        let mut buf = vec![0u8; 65536];
        while n < LEN {
            let k = reader.read(&mut buf).unwrap();
            assert!(k > 0, "EOF after {n} bytes");
            fnv(&mut h, &buf[..k]);
            n += k;
        }
        h
    });

    // Guest side: consume everything, advertise credit; send while the host's credit allows.
    let (mut got, mut got_hash) = (0usize, 0xcbf2_9ce4_8422_2325u64);
    let (mut fwd, mut fwd_sent) = (0u32, 0u32);
    let (mut sent, mut host_fwd, mut host_buf) = (0usize, 0u32, 0u32);
    let mut max_buffered = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while got < LEN || sent < LEN {
        assert!(Instant::now() < deadline, "stalled: got {got}, sent {sent}");
        h.pump_wait(1);
        for p in h.recv() {
            assert_eq!((p.src_port, p.dst_port), (hp, gp));
            host_fwd = p.fwd_cnt;
            host_buf = p.buf_alloc;
            match p.op {
                OP_RW => {
                    // The device never exceeds the credit we gave.
                    assert!(got + p.data.len() - fwd as usize <= GUEST_BUF as usize);
                    fnv(&mut got_hash, &p.data);
                    got += p.data.len();
                    fwd = fwd.wrapping_add(p.data.len() as u32);
                }
                OP_CREDIT_UPDATE | OP_CREDIT_REQUEST => {}
                // Both host threads done and closed: EOF comes after all the data.
                OP_SHUTDOWN | OP_RST if got == LEN => {}
                op => panic!("unexpected op {op} after {got} bytes"),
            }
        }
        // Report consumption once a quarter of the buffer is free again.
        if fwd.wrapping_sub(fwd_sent) >= GUEST_BUF / 4 || (got == LEN && fwd != fwd_sent) {
            let mut cu = Pkt::guest(gp, hp, OP_CREDIT_UPDATE);
            cu.buf_alloc = GUEST_BUF;
            cu.fwd_cnt = fwd;
            h.send(&cu);
            fwd_sent = fwd;
        }
        // Send as the host's credit allows.
        let mut batch = 0;
        while sent < LEN && batch < 16 {
            let credit = host_buf.saturating_sub((sent as u32).wrapping_sub(host_fwd)) as usize;
            let n = credit.min(16 * 1024).min(LEN - sent);
            if n == 0 {
                break;
            }
            let mut p = Pkt::guest(gp, hp, OP_RW);
            p.buf_alloc = GUEST_BUF;
            p.fwd_cnt = fwd;
            fwd_sent = fwd;
            p.data = guest_out[sent..sent + n].to_vec();
            h.send(&p);
            sent += n;
            batch += 1;
        }
        if host_buf == 0 {
            // Before the first host packet: learn the credit from the handshake defaults.
            host_buf = CONN_BUF_SIZE;
        }
        max_buffered = max_buffered.max(h.vsock(|v| v.buffered_bytes()));
    }
    // Keep the loop running while the device flushes what the host has not read yet.
    while !rt.is_finished() {
        assert!(Instant::now() < deadline, "host reader stalled");
        h.pump_wait(1);
        max_buffered = max_buffered.max(h.vsock(|v| v.buffered_bytes()));
    }
    wt.join().unwrap();
    assert_eq!(got_hash, expect_h2g);
    assert_eq!(rt.join().unwrap(), expect_g2h);
    assert!(max_buffered <= CONN_BUF_SIZE as usize, "{max_buffered}");
}

#[test]
fn fast_host_sender_is_bounded_by_guest_credit() {
    const GUEST_BUF: u32 = 64 * 1024;
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    h.post_rx(128);
    let listener = UnixListener::bind(format!("{}_6000", h.path.display())).unwrap();
    let mut req = Pkt::guest(50000, 6000, OP_REQUEST);
    req.buf_alloc = GUEST_BUF;
    h.send(&req);
    h.recv_until("RESPONSE", |p| p.op == OP_RESPONSE);
    let (server, _) = listener.accept().unwrap();

    // The host floods; the guest never reports consumption.
    let mut flood = server.try_clone().unwrap();
    flood.set_nonblocking(true).unwrap();
    let chunk = vec![0x5au8; 65536];
    let mut offered = 0usize;
    let mut received = 0usize;
    let mut credit_requests = 0;
    for _ in 0..200 {
        while let Ok(n) = flood.write(&chunk) {
            offered += n;
        }
        h.pump_wait(1);
        for p in h.recv() {
            match p.op {
                OP_RW => received += p.data.len(),
                OP_CREDIT_REQUEST => credit_requests += 1,
                _ => {}
            }
        }
        assert!(received <= GUEST_BUF as usize);
        assert_eq!(h.vsock(|v| v.buffered_bytes()), 0);
    }
    assert_eq!(received, GUEST_BUF as usize);
    assert!(offered > received);
    assert_eq!(credit_requests, 1);

    // Credit returns: data flows again, still bounded by the new window.
    let mut cu = Pkt::guest(50000, 6000, OP_CREDIT_UPDATE);
    cu.buf_alloc = GUEST_BUF;
    cu.fwd_cnt = GUEST_BUF;
    h.send(&cu);
    for _ in 0..20 {
        h.pump_wait(1);
        received += h
            .recv()
            .iter()
            .filter(|p| p.op == OP_RW)
            .map(|p| p.data.len())
            .sum::<usize>();
    }
    assert_eq!(received, 2 * GUEST_BUF as usize);
}

#[test]
fn guest_ignoring_host_credit_is_reset_and_buffer_stays_bounded() {
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    h.post_rx(64);
    let (client, hp) = host_connect(&mut h, 3000);
    // The host process never reads.
    let mut reset = false;
    for _ in 0..200 {
        let mut p = Pkt::guest(3000, hp, OP_RW);
        p.data = vec![1u8; 32 * 1024];
        h.send(&p);
        h.pump();
        assert!(h.vsock(|v| v.buffered_bytes()) <= CONN_BUF_SIZE as usize);
        if h.recv().iter().any(|p| p.op == OP_RST) {
            reset = true;
            break;
        }
    }
    assert!(
        reset,
        "the device must reset a guest that overruns its credit"
    );
    assert_eq!(h.vsock(|v| v.connection_count()), 0);
    drop(client);
}

#[test]
fn reset_drops_connections() {
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    h.post_rx(16);
    let (mut client, _) = host_connect(&mut h, 10);
    wr(&mut *h.transport.lock().unwrap(), 0x70, 0);
    h.pump();
    let mut b = [0u8; 1];
    assert_eq!(client.read(&mut b).unwrap(), 0);
    assert_eq!(h.vsock(|v| v.connection_count()), 0);
}

#[test]
fn unanswered_and_incomplete_handshakes_expire() {
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    h.transport
        .lock()
        .unwrap()
        .device_mut()
        .set_connect_timeout(Duration::from_millis(200));
    h.post_rx(8);
    // The guest sees the REQUEST but never answers.
    let mut client = UnixStream::connect(&h.path).unwrap();
    client.write_all(b"CONNECT 4444\n").unwrap();
    // Another client never finishes its line.
    let mut slow = UnixStream::connect(&h.path).unwrap();
    slow.write_all(b"CONN").unwrap();
    let pkts = h.recv_until("REQUEST", |p| p.op == OP_REQUEST);
    let hp = pkts[0].src_port;
    let pkts = h.recv_until("RST", |p| p.op == OP_RST);
    assert!(pkts.iter().any(|p| p.op == OP_RST && p.src_port == hp));
    let mut b = [0u8; 4];
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(client.read(&mut b).unwrap(), 0);
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    match slow.read(&mut b) {
        Ok(n) => assert_eq!(n, 0),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
    }
    assert_eq!(h.vsock(|v| v.connection_count()), 0);
}

#[test]
fn tx_packets_in_any_framing() {
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    h.post_rx(16);
    let listener = UnixListener::bind(format!("{}_7000", h.path.display())).unwrap();
    h.send(&Pkt::guest(41000, 7000, OP_REQUEST));
    h.recv_until("RESPONSE", |p| p.op == OP_RESPONSE);
    let (mut server, _) = listener.accept().unwrap();
    server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();

    let mut p = Pkt::guest(41000, 7000, OP_RW);
    p.data = b"one-descriptor|".to_vec();
    let mut bytes = p.encode().to_vec();
    bytes.extend(&p.data);
    let base = TX_BUF + 0x80_0000;
    mem.write_slice(&bytes, GuestAddress(base)).unwrap();
    // Header and data in one descriptor.
    h.tx.add(&[r(base, bytes.len() as u32)]);
    // Header split in two, data in three fragments (what Linux >= 6.16 may send).
    p.data = b"three-fragments".to_vec();
    let mut bytes = p.encode().to_vec();
    bytes.extend(&p.data);
    let base2 = base + 0x1000;
    mem.write_slice(&bytes, GuestAddress(base2)).unwrap();
    h.tx.add(&[
        r(base2, 10),
        r(base2 + 10, 34),
        r(base2 + 44, 5),
        r(base2 + 49, 5),
        r(base2 + 54, 5),
    ]);
    // A data buffer longer than `len`: the tail is ignored.
    p.data = b"|tail".to_vec();
    let mut bytes = p.encode().to_vec();
    bytes.extend(b"|tail-and-garbage");
    let base3 = base + 0x2000;
    mem.write_slice(&bytes, GuestAddress(base3)).unwrap();
    h.tx.add(&[r(base3, bytes.len() as u32)]);
    h.notify(TXQ);
    h.pump();
    let mut buf = vec![0u8; 35];
    server.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"one-descriptor|three-fragments|tail");

    // `len` larger than the chain holds: dropped, the connection survives.
    p.data = b"x".to_vec();
    let mut hdr = p.encode();
    hdr[24..28].copy_from_slice(&100u32.to_le_bytes());
    mem.write_slice(&hdr, GuestAddress(base)).unwrap();
    h.tx.add(&[r(base, 44), r(base + 64, 10)]);
    h.notify(TXQ);
    h.pump();
    assert_eq!(h.vsock(|v| v.connection_count()), 1);
}

#[test]
fn connections_churn_with_fd_reuse() {
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    h.post_rx(64);
    let listener = UnixListener::bind(format!("{}_8000", h.path.display())).unwrap();
    for i in 0..40u32 {
        // Host-initiated, closed by the guest.
        let (mut client, hp) = host_connect(&mut h, 100 + i);
        client.write_all(&i.to_le_bytes()).unwrap();
        let pkts = h.recv_until("RW", |p| p.op == OP_RW);
        assert_eq!(
            pkts.iter().find(|p| p.op == OP_RW).unwrap().data,
            i.to_le_bytes()
        );
        h.send(&Pkt::guest(100 + i, hp, OP_RST));
        h.pump();
        let mut b = [0u8; 1];
        assert_eq!(client.read(&mut b).unwrap(), 0);
        drop(client);

        // Guest-initiated, closed by the host.
        let gp = 60000 + i;
        h.send(&Pkt::guest(gp, 8000, OP_REQUEST));
        h.recv_until("RESPONSE", |p| p.op == OP_RESPONSE && p.dst_port == gp);
        let (mut server, _) = listener.accept().unwrap();
        server.write_all(b"bye").unwrap();
        drop(server);
        let pkts = h.recv_until("SHUTDOWN", |p| p.op == OP_SHUTDOWN && p.dst_port == gp);
        assert!(pkts.iter().any(|p| p.op == OP_RW && p.data == b"bye"));
        let mut s = Pkt::guest(gp, 8000, OP_SHUTDOWN);
        s.flags = SHUTDOWN_F_SEND | SHUTDOWN_F_RECEIVE;
        h.send(&s);
        let got = h.recv_until("RST", |p| p.op == OP_RST && p.dst_port == gp);
        assert!(got.iter().any(|p| p.op == OP_RST));
        assert_eq!(h.vsock(|v| v.connection_count()), 0, "round {i}");
    }
}

#[test]
fn data_sent_right_after_connect_line_reaches_the_guest() {
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    h.post_rx(16);
    let mut client = UnixStream::connect(&h.path).unwrap();
    client.write_all(b"CONNECT 21\nearly bytes").unwrap();
    let pkts = h.recv_until("REQUEST", |p| p.op == OP_REQUEST);
    assert!(
        pkts.iter().all(|p| p.op != OP_RW),
        "no data before the handshake"
    );
    let hp = pkts[0].src_port;
    h.send(&Pkt::guest(21, hp, OP_RESPONSE));
    let pkts = h.recv_until("RW", |p| p.op == OP_RW);
    assert_eq!(
        pkts.iter().find(|p| p.op == OP_RW).unwrap().data,
        b"early bytes"
    );
    let mut line = [0u8; 14];
    client.read_exact(&mut line).unwrap();
    assert_eq!(&line, format!("OK {hp}\n").as_bytes());
}
