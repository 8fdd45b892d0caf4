//! Data: bulk transfers with checksums, credit, resets, expiry, framing, churn.

use super::*;

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
