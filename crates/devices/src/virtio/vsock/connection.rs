//! One stream connection between a guest socket and a host Unix socket, with virtio-vsock
//! credit-based flow control in both directions.
//!
//! Bounds: host-to-guest data is read from the Unix socket straight into a guest buffer and
//! only as much as the guest's advertised credit allows, so nothing is buffered on that side.
//! Guest-to-host data the Unix socket cannot take at once is kept in `tx_buf`, which never
//! exceeds [`CONN_BUF_SIZE`] because that is the credit we advertise; a guest that sends more
//! is reset.

use std::collections::VecDeque;
use std::io::{self, ErrorKind, Read, Write};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use virtio_queue::Reader;
use vm_memory::bitmap::BitmapSlice;
use vm_memory::{ReadVolatile, VolatileMemoryError};

use super::packet::*;

/// The receive buffer we advertise to the guest per connection (`buf_alloc`).
pub const CONN_BUF_SIZE: u32 = 256 * 1024;
/// Forwarded bytes not yet reported to the guest that trigger a credit update.
const CREDIT_UPDATE_THRESHOLD: u32 = CONN_BUF_SIZE / 4;

const P_REQUEST: u8 = 1;
const P_RESPONSE: u8 = 2;
const P_CREDIT_UPDATE: u8 = 4;
const P_CREDIT_REQUEST: u8 = 8;
const P_SHUTDOWN: u8 = 16;

/// Where the handshake stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// Host-initiated: REQUEST sent (or to send), waiting for the guest's RESPONSE.
    LocalInit,
    /// Data may flow.
    Established,
}

/// What [`Connection::fill_rx`] put in a guest buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum RxFill {
    /// A packet with this many data bytes.
    Sent(u32),
    /// Nothing to send now; the buffer is unused.
    Nothing,
    /// The connection failed; reset it.
    Kill,
}

/// A connection's state.
pub struct Connection {
    pub(crate) stream: UnixStream,
    pub(crate) key: ConnKey,
    pub(crate) state: ConnState,
    /// Guest-to-host bytes the Unix socket has not taken yet.
    tx_buf: VecDeque<u8>,
    /// "OK <port>\n" still to be written to a host-initiated connection.
    ack: Vec<u8>,
    /// Guest bytes forwarded to the Unix socket.
    fwd_cnt: Wrapping<u32>,
    /// `fwd_cnt` as last told to the guest.
    fwd_cnt_sent: Wrapping<u32>,
    /// Bytes sent to the guest.
    rx_cnt: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    pending: u8,
    shutdown_flags: u32,
    pub(crate) guest_shut_send: bool,
    pub(crate) guest_shut_recv: bool,
    host_eof: bool,
    host_write_shut: bool,
    /// The Unix socket may have data (set by epoll, cleared on EAGAIN; edge-triggered).
    pub(crate) readable: bool,
    credit_requested: bool,
    kill: Option<bool>,
    created: Instant,
}

impl Connection {
    fn new(stream: UnixStream, key: ConnKey, state: ConnState, pending: u8) -> Self {
        Self {
            stream,
            key,
            state,
            tx_buf: VecDeque::new(),
            ack: Vec::new(),
            fwd_cnt: Wrapping(0),
            fwd_cnt_sent: Wrapping(0),
            rx_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            pending,
            shutdown_flags: 0,
            guest_shut_send: false,
            guest_shut_recv: false,
            host_eof: false,
            host_write_shut: false,
            readable: false,
            credit_requested: false,
            kill: None,
            created: Instant::now(),
        }
    }

    /// A host-initiated connection: a REQUEST goes to the guest.
    pub fn new_local(stream: UnixStream, key: ConnKey) -> Self {
        Self::new(stream, key, ConnState::LocalInit, P_REQUEST)
    }

    /// A guest-initiated connection the host accepted: a RESPONSE goes to the guest.
    pub fn new_peer(stream: UnixStream, key: ConnKey, buf_alloc: u32, fwd_cnt: u32) -> Self {
        let mut c = Self::new(stream, key, ConnState::Established, P_RESPONSE);
        c.update_peer_credit(buf_alloc, fwd_cnt);
        c
    }

    /// Records the guest's receive-buffer state, carried by every packet it sends.
    pub fn update_peer_credit(&mut self, buf_alloc: u32, fwd_cnt: u32) {
        let before = self.peer_credit();
        self.peer_buf_alloc = buf_alloc;
        self.peer_fwd_cnt = Wrapping(fwd_cnt);
        if self.peer_credit() > before {
            self.credit_requested = false;
        }
    }

    /// Bytes the guest can still take.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Bytes held on the guest-to-host side.
    pub fn buffered(&self) -> usize {
        self.tx_buf.len() + self.ack.len()
    }

    fn out_pending(&self) -> bool {
        !self.tx_buf.is_empty() || !self.ack.is_empty()
    }

    /// Whether the Unix socket needs write-readiness events.
    pub fn wants_out(&self) -> bool {
        self.out_pending()
    }

    fn can_read(&self) -> bool {
        self.state == ConnState::Established && !self.host_eof && !self.guest_shut_recv
    }

    /// Whether the connection has a packet for the guest now.
    pub fn wants_rx(&self) -> bool {
        self.kill.is_none()
            && (self.pending != 0
                || (self.can_read() && self.readable && self.peer_credit() > 0)
                || (self.can_read() && self.readable && !self.credit_requested))
    }

    /// Marks the connection for removal, with or without a RST to the guest.
    pub fn kill(&mut self, rst: bool) {
        self.kill.get_or_insert(rst);
    }

    /// `Some(rst)` once the connection should be removed.
    pub fn finished(&self) -> Option<bool> {
        if let Some(rst) = self.kill {
            return Some(rst);
        }
        let out_done = !self.out_pending();
        if self.guest_shut_send && self.guest_shut_recv && out_done {
            return Some(true);
        }
        if self.host_eof && self.pending & P_SHUTDOWN == 0 && self.host_write_shut {
            return Some(true);
        }
        None
    }

    /// The guest's RESPONSE to our REQUEST: tell the host process.
    pub fn on_response(&mut self) {
        if self.state != ConnState::LocalInit || self.pending & P_REQUEST != 0 {
            self.kill(true);
            return;
        }
        self.state = ConnState::Established;
        self.ack = format!("OK {}\n", self.key.local_port).into_bytes();
        self.flush();
    }

    /// The guest asks for our credit.
    pub fn on_credit_request(&mut self) {
        self.pending |= P_CREDIT_UPDATE;
    }

    /// Data from the guest (an RW packet).
    pub fn on_guest_data(&mut self, data: &mut Reader<'_>) {
        if self.state != ConnState::Established || self.guest_shut_send {
            self.kill(true);
            return;
        }
        let len = data.available_bytes();
        if self.tx_buf.len() + len > CONN_BUF_SIZE as usize {
            // The guest ignored our credit.
            self.kill(true);
            return;
        }
        if len == 0 {
            return;
        }
        // At most MAX_PKT_DATA (checked by the parser).
        let mut buf = vec![0u8; len];
        if data.read_exact(&mut buf).is_err() {
            self.kill(true);
            return;
        }
        let mut written = 0;
        if !self.out_pending() {
            match self.stream.write(&buf) {
                Ok(n) => written = n,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
                Err(_) => {
                    self.kill(true);
                    return;
                }
            }
            self.forwarded(written);
        }
        self.tx_buf.extend(&buf[written..]);
    }

    /// The guest shut one or both directions down.
    pub fn on_guest_shutdown(&mut self, flags: u32) {
        self.guest_shut_recv |= flags & SHUTDOWN_F_RECEIVE != 0;
        self.guest_shut_send |= flags & SHUTDOWN_F_SEND != 0;
        self.flush();
    }

    fn forwarded(&mut self, n: usize) {
        self.fwd_cnt += Wrapping(n as u32);
        if (self.fwd_cnt - self.fwd_cnt_sent).0 >= CREDIT_UPDATE_THRESHOLD {
            self.pending |= P_CREDIT_UPDATE;
        }
    }

    /// Writes what the Unix socket will take (on EPOLLOUT and after each change).
    pub fn flush(&mut self) {
        if self.kill.is_some() {
            return;
        }
        while !self.ack.is_empty() {
            match self.stream.write(&self.ack) {
                Ok(n) => {
                    self.ack.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return self.kill(true),
            }
        }
        while !self.tx_buf.is_empty() {
            let (a, _) = self.tx_buf.as_slices();
            match self.stream.write(a) {
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    self.forwarded(n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return self.kill(true),
            }
        }
        if self.tx_buf.capacity() > 64 * 1024 {
            self.tx_buf.shrink_to(0);
        }
        if self.guest_shut_send && !self.host_write_shut {
            // Half-close: the host process reads EOF.
            let _ = self.stream.shutdown(Shutdown::Write);
            self.host_write_shut = true;
        }
    }

    /// Fills one guest receive buffer with the next packet. The caller has set the addressing
    /// fields with [`init_rx_header`].
    pub fn fill_rx<B: BitmapSlice>(&mut self, pkt: &mut VsockPacket<'_, B>) -> RxFill {
        let (op, len) = match self.next_rx(pkt) {
            Ok(Some(x)) => x,
            Ok(None) => return RxFill::Nothing,
            Err(_) => {
                self.kill(true);
                return RxFill::Kill;
            }
        };
        let flags = if op == OP_SHUTDOWN {
            self.shutdown_flags
        } else {
            0
        };
        pkt.set_op(op)
            .set_len(len)
            .set_flags(flags)
            .set_buf_alloc(CONN_BUF_SIZE)
            .set_fwd_cnt(self.fwd_cnt.0);
        // Every packet carries our credit.
        self.fwd_cnt_sent = self.fwd_cnt;
        self.pending &= !P_CREDIT_UPDATE;
        RxFill::Sent(len)
    }

    fn take(&mut self, bit: u8) -> bool {
        let set = self.pending & bit != 0;
        self.pending &= !bit;
        set
    }

    fn next_rx<B: BitmapSlice>(
        &mut self,
        pkt: &mut VsockPacket<'_, B>,
    ) -> io::Result<Option<(u16, u32)>> {
        if self.take(P_REQUEST) {
            return Ok(Some((OP_REQUEST, 0)));
        }
        if self.take(P_RESPONSE) {
            return Ok(Some((OP_RESPONSE, 0)));
        }
        if self.can_read() && self.readable {
            let credit = self.peer_credit();
            if credit > 0 {
                if let Some(n) = self.read_into(pkt, credit)? {
                    return Ok(Some(n));
                }
            } else if !self.credit_requested {
                self.credit_requested = true;
                self.pending |= P_CREDIT_REQUEST;
            }
        }
        if self.take(P_SHUTDOWN) {
            return Ok(Some((OP_SHUTDOWN, 0)));
        }
        if self.take(P_CREDIT_UPDATE) {
            return Ok(Some((OP_CREDIT_UPDATE, 0)));
        }
        if self.take(P_CREDIT_REQUEST) {
            return Ok(Some((OP_CREDIT_REQUEST, 0)));
        }
        Ok(None)
    }

    /// Reads host data into the packet's buffer; `None` if the socket had nothing.
    fn read_into<B: BitmapSlice>(
        &mut self,
        pkt: &mut VsockPacket<'_, B>,
        credit: u32,
    ) -> io::Result<Option<(u16, u32)>> {
        let Some(data) = pkt.data_slice() else {
            return Ok(None);
        };
        let max = data.len().min(credit as usize).min(MAX_PKT_DATA as usize);
        if max == 0 {
            return Ok(None);
        }
        let Ok(mut window) = data.subslice(0, max) else {
            return Ok(None);
        };
        loop {
            match self.stream.read_volatile(&mut window) {
                Ok(0) => {
                    // The host process shut its write side: tell the guest, after the data.
                    self.host_eof = true;
                    self.readable = false;
                    self.shutdown_flags = SHUTDOWN_F_SEND;
                    return Ok(Some((OP_SHUTDOWN, 0)));
                }
                Ok(n) => {
                    self.rx_cnt += Wrapping(n as u32);
                    return Ok(Some((OP_RW, n as u32)));
                }
                Err(VolatileMemoryError::IOError(e)) if e.kind() == ErrorKind::WouldBlock => {
                    self.readable = false;
                    return Ok(None);
                }
                Err(VolatileMemoryError::IOError(e)) if e.kind() == ErrorKind::Interrupted => {}
                Err(VolatileMemoryError::IOError(e)) => return Err(e),
                Err(e) => return Err(io::Error::other(e.to_string())),
            }
        }
    }

    /// How long a host-initiated handshake has been waiting for the guest, if it is.
    pub fn handshake_age(&self) -> Option<Duration> {
        (self.state == ConnState::LocalInit && self.kill.is_none()).then(|| self.created.elapsed())
    }

    /// The guest did not answer our REQUEST in time.
    pub fn on_handshake_timeout(&mut self) {
        let rst = self.pending & P_REQUEST == 0;
        self.kill(rst);
    }

    /// The host process closed before the guest answered, or its socket errored.
    pub fn on_host_hangup(&mut self) {
        self.readable = true;
        if self.state == ConnState::LocalInit {
            // Reset only if the guest has seen the REQUEST.
            let rst = self.pending & P_REQUEST == 0;
            self.kill(rst);
        }
    }
}
