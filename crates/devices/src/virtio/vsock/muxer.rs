//! The host side of the hybrid vsock: the Unix listener, pending `CONNECT` handshakes, the
//! connection table, and the packet flow between the guest's queues and the connections.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{self, ErrorKind, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use virtio_queue::{Queue, QueueOwnedT};
use vmm_sys_util::timerfd::TimerFd;

use super::connection::{Connection, RxFill};
use super::packet::*;
use super::uds::connect_nonblocking;
use crate::guest_warn;
use crate::virtio::queue::{add_used, pop_chain, Mem};
use crate::virtio::{EventSet, FdOp};

/// Most connections at once (each may buffer up to `CONN_BUF_SIZE` guest bytes).
pub const MAX_CONNECTIONS: usize = 256;
/// Most host clients that connected but have not finished their `CONNECT` line.
pub const MAX_PENDING_HOST: usize = 64;
/// Longest `CONNECT <port>\n` line accepted.
const MAX_CONNECT_LINE: usize = 32;
/// Most RSTs queued for the guest for connections that no longer exist.
const MAX_RST_QUEUE: usize = 1024;
/// First port handed to host-initiated connections (as Firecracker does).
const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// How long a host client may take to send its `CONNECT` line, and the guest to answer the
/// REQUEST, before the attempt is dropped (Firecracker's value).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

struct PendingHost {
    stream: UnixStream,
    line: Vec<u8>,
    since: Instant,
}

/// The connection multiplexer.
pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    pending: HashMap<RawFd, PendingHost>,
    // Ordered, so that service order (and tests) are deterministic.
    conns: BTreeMap<ConnKey, Connection>,
    by_fd: HashMap<RawFd, ConnKey>,
    rst_queue: VecDeque<ConnKey>,
    registered: HashMap<RawFd, EventSet>,
    fd_ops: Vec<FdOp>,
    graveyard: Vec<UnixStream>,
    next_local_port: u32,
    /// Ticks while handshakes are in progress, to expire them.
    timer: TimerFd,
    timer_armed: bool,
    connect_timeout: Duration,
}

impl Muxer {
    /// Listens on `uds_path` (which must not exist).
    pub fn new(guest_cid: u64, uds_path: &Path) -> io::Result<Self> {
        let timer = TimerFd::new()?;
        set_nonblocking(timer.as_raw_fd())?;
        let listener = UnixListener::bind(uds_path)?;
        listener.set_nonblocking(true)?;
        let mut m = Self {
            guest_cid,
            uds_path: uds_path.to_path_buf(),
            listener,
            pending: HashMap::new(),
            conns: BTreeMap::new(),
            by_fd: HashMap::new(),
            rst_queue: VecDeque::new(),
            registered: HashMap::new(),
            fd_ops: Vec::new(),
            graveyard: Vec::new(),
            next_local_port: FIRST_LOCAL_PORT,
            timer,
            timer_armed: false,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        };
        m.sync_interest();
        Ok(m)
    }

    /// The listener's path.
    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    /// Changes how long handshakes may take (see [`DEFAULT_CONNECT_TIMEOUT`]).
    pub fn set_connect_timeout(&mut self, timeout: Duration) {
        self.connect_timeout = timeout;
    }

    /// Number of live connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Bytes held by the device for all connections (bounded by
    /// `MAX_CONNECTIONS * CONN_BUF_SIZE` plus small handshake lines).
    pub fn buffered_bytes(&self) -> usize {
        self.conns.values().map(Connection::buffered).sum::<usize>()
            + self.pending.values().map(|p| p.line.len()).sum::<usize>()
    }

    /// Drops every connection (device reset); the listener stays.
    pub fn reset(&mut self) {
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for key in keys {
            self.remove(key, false);
        }
        for (_, p) in self.pending.drain() {
            let _ = p.stream.shutdown(std::net::Shutdown::Both);
            self.graveyard.push(p.stream);
        }
        self.rst_queue.clear();
        self.next_local_port = FIRST_LOCAL_PORT;
        self.sync_interest();
    }

    /// Applies pending fd watch changes, then closes the sockets they concerned.
    pub fn drain_fd_ops(&mut self, apply: &mut dyn FnMut(FdOp)) {
        for op in self.fd_ops.drain(..) {
            apply(op);
        }
        self.graveyard.clear();
    }

    /// Guest TX: handles every packet the guest sent. Returns whether buffers were used.
    pub fn process_tx(&mut self, mem: &Mem, txq: &mut Queue) -> bool {
        let mut used = false;
        while let Some(chain) = pop_chain(txq, mem) {
            let head = chain.head_index();
            match parse_tx(mem, chain) {
                Ok(mut pkt) => self.handle_guest_packet(&mut pkt),
                Err(e) => guest_warn!("virtio-vsock: dropping malformed TX packet: {e}"),
            }
            used |= add_used(txq, mem, head, 0);
        }
        self.sync_interest();
        used
    }

    fn handle_guest_packet(&mut self, pkt: &mut TxPacket<'_>) {
        if pkt.src_cid() != self.guest_cid || pkt.dst_cid() != HOST_CID {
            guest_warn!(
                "virtio-vsock: dropping packet {} -> {} (guest CID is {})",
                pkt.src_cid(),
                pkt.dst_cid(),
                self.guest_cid
            );
            return;
        }
        let key = ConnKey {
            local_port: pkt.dst_port(),
            peer_port: pkt.src_port(),
        };
        let op = pkt.op();
        if pkt.type_() != TYPE_STREAM {
            if op != OP_RST {
                self.queue_rst(key);
            }
            return;
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            match op {
                OP_REQUEST => self.guest_connect(key, pkt.buf_alloc(), pkt.fwd_cnt()),
                OP_RST => {}
                _ => self.queue_rst(key),
            }
            return;
        };
        conn.update_peer_credit(pkt.buf_alloc(), pkt.fwd_cnt());
        match op {
            OP_RST => conn.kill(false),
            OP_RESPONSE => conn.on_response(),
            OP_RW => conn.on_guest_data(&mut pkt.data),
            OP_SHUTDOWN => conn.on_guest_shutdown(pkt.flags()),
            OP_CREDIT_UPDATE => {}
            OP_CREDIT_REQUEST => conn.on_credit_request(),
            // A second REQUEST on a live connection, or an unknown op.
            _ => conn.kill(true),
        }
        self.reap(key);
    }

    /// The guest connects to host port `key.local_port`: forward to `<uds_path>_<port>`.
    fn guest_connect(&mut self, key: ConnKey, buf_alloc: u32, fwd_cnt: u32) {
        if self.conns.len() >= MAX_CONNECTIONS {
            guest_warn!(
                "virtio-vsock: connection limit reached, refusing port {}",
                key.local_port
            );
            return self.queue_rst(key);
        }
        let mut path = self.uds_path.clone().into_os_string();
        path.push(format!("_{}", key.local_port));
        match connect_nonblocking(Path::new(&path)) {
            Ok(stream) => {
                self.by_fd.insert(stream.as_raw_fd(), key);
                self.conns
                    .insert(key, Connection::new_peer(stream, key, buf_alloc, fwd_cnt));
            }
            Err(e) => {
                guest_warn!("virtio-vsock: guest connect to {path:?} refused: {e}");
                self.queue_rst(key);
            }
        }
    }

    fn queue_rst(&mut self, key: ConnKey) {
        if self.rst_queue.len() < MAX_RST_QUEUE {
            self.rst_queue.push_back(key);
        }
    }

    /// Removes `key` if it is finished.
    fn reap(&mut self, key: ConnKey) {
        if let Some(rst) = self.conns.get(&key).and_then(Connection::finished) {
            self.remove(key, rst);
        }
    }

    fn remove(&mut self, key: ConnKey, rst: bool) {
        if let Some(conn) = self.conns.remove(&key) {
            self.by_fd.remove(&conn.stream.as_raw_fd());
            // The host process sees the close now; the fd itself is closed only after the event loop stopped watching it (see `drain_fd_ops`).
            let _ = conn.stream.shutdown(std::net::Shutdown::Both);
            self.graveyard.push(conn.stream);
            if rst {
                self.queue_rst(key);
            }
        }
    }

    /// A host fd became ready. Returns whether guest buffers were used.
    pub fn process_host_event(
        &mut self,
        rxq: Option<(&Mem, &mut Queue)>,
        fd: RawFd,
        events: EventSet,
    ) -> bool {
        if fd == self.listener.as_raw_fd() {
            self.accept();
        } else if fd == self.timer.as_raw_fd() {
            // Nonblocking: a stale wakeup reads EAGAIN.
            let _ = self.timer.wait();
            self.expire_handshakes();
        } else if self.pending.contains_key(&fd) {
            self.read_connect_line(fd);
        } else if let Some(&key) = self.by_fd.get(&fd) {
            if let Some(conn) = self.conns.get_mut(&key) {
                if events.intersects(EventSet::HANG_UP | EventSet::ERROR) {
                    conn.on_host_hangup();
                }
                if events.intersects(EventSet::IN | EventSet::READ_HANG_UP) {
                    conn.readable = true;
                }
                if events.contains(EventSet::OUT) {
                    conn.flush();
                }
            }
            self.reap(key);
        }
        let used = match rxq {
            Some((mem, q)) => self.process_rx(mem, q),
            None => false,
        };
        self.sync_interest();
        used
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.pending.len() >= MAX_PENDING_HOST || self.conns.len() >= MAX_CONNECTIONS
                    {
                        log::warn!("virtio-vsock: too many host connections, closing a new one");
                        continue;
                    }
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let line = Vec::with_capacity(MAX_CONNECT_LINE);
                    self.pending.insert(
                        stream.as_raw_fd(),
                        PendingHost {
                            stream,
                            line,
                            since: Instant::now(),
                        },
                    );
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    if e.kind() != ErrorKind::WouldBlock {
                        log::warn!("virtio-vsock: accept on {:?} failed: {e}", self.uds_path);
                    }
                    return;
                }
            }
        }
    }

    /// Reads `CONNECT <port>\n` one byte at a time, so that data the host sends right after
    /// the line stays in the socket for the guest.
    fn read_connect_line(&mut self, fd: RawFd) {
        let Some(p) = self.pending.get_mut(&fd) else {
            return;
        };
        let port = loop {
            let mut b = [0u8; 1];
            match p.stream.read(&mut b) {
                Ok(1) if b[0] == b'\n' => break parse_connect(&p.line),
                Ok(1) if p.line.len() < MAX_CONNECT_LINE => p.line.push(b[0]),
                Ok(_) => break None, // EOF or line too long
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => break None,
            }
        };
        let Some(p) = self.pending.remove(&fd) else {
            return;
        };
        let Some(peer_port) = port else {
            log::warn!("virtio-vsock: bad CONNECT line from a host client, closing it");
            self.graveyard.push(p.stream);
            return;
        };
        if self.conns.len() >= MAX_CONNECTIONS {
            self.graveyard.push(p.stream);
            return;
        }
        let local_port = self.alloc_local_port();
        let key = ConnKey {
            local_port,
            peer_port,
        };
        self.by_fd.insert(fd, key);
        let mut conn = Connection::new_local(p.stream, key);
        // Data the client sent after the line is read once established.
        conn.readable = true;
        self.conns.insert(key, conn);
    }

    /// Drops host clients that did not finish their `CONNECT` line and host-initiated
    /// connections the guest did not answer, in time.
    fn expire_handshakes(&mut self) {
        let timeout = self.connect_timeout;
        let stale: Vec<RawFd> = self
            .pending
            .iter()
            .filter(|(_, p)| p.since.elapsed() >= timeout)
            .map(|(fd, _)| *fd)
            .collect();
        for fd in stale {
            if let Some(p) = self.pending.remove(&fd) {
                let _ = p.stream.shutdown(std::net::Shutdown::Both);
                self.graveyard.push(p.stream);
            }
        }
        let expired: Vec<ConnKey> = self
            .conns
            .iter()
            .filter(|(_, c)| c.handshake_age().is_some_and(|age| age >= timeout))
            .map(|(k, _)| *k)
            .collect();
        for key in expired {
            guest_warn!(
                "virtio-vsock: guest did not answer connection to port {}",
                key.peer_port
            );
            if let Some(c) = self.conns.get_mut(&key) {
                c.on_handshake_timeout();
            }
            self.reap(key);
        }
    }

    fn handshakes_in_progress(&self) -> bool {
        !self.pending.is_empty() || self.conns.values().any(|c| c.handshake_age().is_some())
    }

    fn alloc_local_port(&mut self) -> u32 {
        loop {
            let port = self.next_local_port;
            self.next_local_port = port.checked_add(1).unwrap_or(FIRST_LOCAL_PORT);
            if !self.conns.keys().any(|k| k.local_port == port) {
                return port;
            }
        }
    }

    /// Guest RX: fills the guest's receive buffers with queued control packets and host data.
    /// Returns whether buffers were used.
    pub fn process_rx(&mut self, mem: &Mem, rxq: &mut Queue) -> bool {
        let mut used = false;
        let mut held = None;
        'service: loop {
            let mut progress = false;
            while let Some(&key) = self.rst_queue.front() {
                let Some(chain) = held.take().or_else(|| pop_chain(rxq, mem)) else {
                    break 'service;
                };
                let head = chain.head_index();
                let mut c = chain.clone();
                let len = match VsockPacket::from_rx_virtq_chain(mem, &mut c, MAX_PKT_DATA) {
                    Ok(mut pkt) => {
                        init_rx_header(&mut pkt, self.guest_cid, key);
                        pkt.set_op(OP_RST);
                        self.rst_queue.pop_front();
                        PKT_HEADER_SIZE as u32
                    }
                    Err(e) => {
                        guest_warn!("virtio-vsock: malformed RX buffer: {e}");
                        0
                    }
                };
                used |= add_used(rxq, mem, head, len);
                progress = true;
            }
            let ready: Vec<ConnKey> = self
                .conns
                .iter()
                .filter(|(_, c)| c.wants_rx())
                .map(|(k, _)| *k)
                .collect();
            for key in ready {
                let Some(chain) = held.take().or_else(|| pop_chain(rxq, mem)) else {
                    break 'service;
                };
                let head = chain.head_index();
                let mut c = chain.clone();
                let mut pkt = match VsockPacket::from_rx_virtq_chain(mem, &mut c, MAX_PKT_DATA) {
                    Ok(pkt) => pkt,
                    Err(e) => {
                        guest_warn!("virtio-vsock: malformed RX buffer: {e}");
                        used |= add_used(rxq, mem, head, 0);
                        progress = true;
                        continue;
                    }
                };
                let Some(conn) = self.conns.get_mut(&key) else {
                    held = Some(chain);
                    continue;
                };
                init_rx_header(&mut pkt, self.guest_cid, key);
                match conn.fill_rx(&mut pkt) {
                    RxFill::Sent(len) => {
                        used |= add_used(rxq, mem, head, PKT_HEADER_SIZE as u32 + len);
                        progress = true;
                    }
                    RxFill::Nothing => held = Some(chain),
                    RxFill::Kill => {
                        held = Some(chain);
                        progress = true;
                    }
                }
                self.reap(key);
            }
            if !progress {
                break;
            }
        }
        if held.is_some() {
            // Give the unused buffer back to the ring.
            rxq.go_to_previous_position();
        }
        used
    }

    /// Brings the event loop's watch list in line with what each socket needs now.
    pub fn sync_interest(&mut self) {
        let busy = self.handshakes_in_progress();
        if busy != self.timer_armed {
            let tick = self.connect_timeout / 4;
            let result = if busy {
                self.timer.reset(
                    tick.max(Duration::from_millis(1)),
                    Some(tick.max(Duration::from_millis(1))),
                )
            } else {
                self.timer.clear()
            };
            match result {
                Ok(()) => self.timer_armed = busy,
                Err(e) => log::error!("virtio-vsock: cannot set the handshake timer: {e}"),
            }
        }
        let mut desired: HashMap<RawFd, EventSet> = HashMap::new();
        desired.insert(self.listener.as_raw_fd(), EventSet::IN);
        desired.insert(self.timer.as_raw_fd(), EventSet::IN);
        for fd in self.pending.keys() {
            desired.insert(*fd, EventSet::IN);
        }
        for conn in self.conns.values() {
            // Edge-triggered: `readable` remembers readiness until a read returns EAGAIN, so a
            // socket we cannot read (no guest credit) does not wake the loop again and again.
            let mut set = EventSet::IN | EventSet::EDGE_TRIGGERED;
            if conn.wants_out() {
                set |= EventSet::OUT;
            }
            desired.insert(conn.stream.as_raw_fd(), set);
        }
        let stale: Vec<RawFd> = self
            .registered
            .keys()
            .filter(|fd| !desired.contains_key(fd))
            .copied()
            .collect();
        for fd in stale {
            self.registered.remove(&fd);
            self.fd_ops.push(FdOp::Remove(fd));
        }
        let mut changes: Vec<(RawFd, EventSet)> = desired
            .into_iter()
            .filter(|(fd, set)| self.registered.get(fd) != Some(set))
            .collect();
        changes.sort_by_key(|(fd, _)| *fd);
        for (fd, set) in changes {
            let op = if self.registered.contains_key(&fd) {
                FdOp::Modify(fd, set)
            } else {
                FdOp::Add(fd, set)
            };
            self.registered.insert(fd, set);
            self.fd_ops.push(op);
        }
    }
}

impl Drop for Muxer {
    fn drop(&mut self) {
        // We created the socket file; leave no stale one behind.
        let _ = std::fs::remove_file(&self.uds_path);
    }
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on an fd we own, with integer arguments only; results are checked.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Parses `CONNECT <port>` (without the newline).
fn parse_connect(line: &[u8]) -> Option<u32> {
    let line = std::str::from_utf8(line).ok()?;
    let port = line.trim_end_matches('\r').strip_prefix("CONNECT ")?;
    port.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::parse_connect;

    #[test]
    fn connect_line() {
        assert_eq!(parse_connect(b"CONNECT 52"), Some(52));
        assert_eq!(parse_connect(b"CONNECT 52\r"), Some(52));
        assert_eq!(parse_connect(b"CONNECT"), None);
        assert_eq!(parse_connect(b"CONNECT -1"), None);
        assert_eq!(parse_connect(b"CONNECT 99999999999"), None);
        assert_eq!(parse_connect(b"connect 5"), None);
        assert_eq!(parse_connect(&[0xff, 0xfe]), None);
    }
}
