//! Connections: handshakes both ways, refusals, bad connect lines, half and full closes.

use super::*;

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

/// After a restore, a host connection reaches the guest only once the driver handled the
/// transport reset (it gives the event buffer back): delivered before, the guest would accept
/// it and then drop it with the reset, without a word to the host.
#[test]
fn after_a_restore_host_connections_wait_for_the_guests_transport_reset() {
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    h.restore();
    h.post_rx(8);
    let mut client = UnixStream::connect(&h.path).unwrap();
    client.write_all(b"CONNECT 1024\n").unwrap();
    for _ in 0..5 {
        h.pump_wait(20);
    }
    let early = h.recv();
    assert!(
        early.is_empty(),
        "nothing for the guest before its reset: {early:?}"
    );
    // The driver handled the event: the buffer refilled, the event queue kicked.
    h.ev.add(&[w(EV_BUF, 4)]);
    h.notify(EVQ);
    let pkts = h.recv_until("REQUEST", |p| p.op == OP_REQUEST);
    let req = pkts.iter().find(|p| p.op == OP_REQUEST).unwrap();
    assert_eq!(req.dst_port, 1024);
    // Later kicks of the event queue change nothing.
    h.notify(EVQ);
    h.pump();
    h.send(&Pkt::guest(1024, req.src_port, OP_RESPONSE));
    h.pump();
    let mut line = [0u8; 3];
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    client.read_exact(&mut line).unwrap();
    assert_eq!(&line, b"OK ");
}
