//! The device against a recording mock backend: config space, feature masking, the vhost-user
//! setup sequence at DRIVER_OK, call -> interrupt relay, and a backend that dies.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::bus::BusDevice;
use crate::virtio::test_utils::Driver;
use crate::virtio::{status, Interrupt, MmioTransport};

#[derive(Default)]
struct Log {
    calls: Vec<String>,
    regions: Vec<(u64, u64, u64)>,
    rings: Vec<VringConfigData>,
}

struct Mock {
    features: u64,
    log: Arc<Mutex<Log>>,
    fail_at: Option<&'static str>,
    sock: Option<RawFd>,
}

impl Mock {
    fn rec(&self, what: &'static str, arg: String) -> vhost::Result<()> {
        self.log.lock().unwrap().calls.push(format!("{what}{arg}"));
        if self.fail_at == Some(what) {
            return Err(vhost::Error::VhostUserProtocol(
                vhost::vhost_user::Error::SocketBroken(std::io::Error::from_raw_os_error(
                    libc::EPIPE,
                )),
            ));
        }
        Ok(())
    }
}

impl VhostUserConn for Mock {
    fn get_features(&mut self) -> vhost::Result<u64> {
        self.rec("GET_FEATURES", String::new())
            .map(|()| self.features)
    }
    fn set_features(&mut self, f: u64) -> vhost::Result<()> {
        self.rec("SET_FEATURES", format!(" {f:#x}"))
    }
    fn get_protocol_features(&mut self) -> vhost::Result<u64> {
        self.rec("GET_PROTOCOL_FEATURES", String::new())
            .map(|()| 0xffff)
    }
    fn set_protocol_features(&mut self, f: u64) -> vhost::Result<()> {
        self.rec("SET_PROTOCOL_FEATURES", format!(" {f:#x}"))
    }
    fn set_mem_table(&mut self, regions: &[VhostUserMemoryRegionInfo]) -> vhost::Result<()> {
        self.log.lock().unwrap().regions = regions
            .iter()
            .map(|r| (r.guest_phys_addr, r.memory_size, r.mmap_offset))
            .collect();
        self.rec("SET_MEM_TABLE", format!(" {}", regions.len()))
    }
    fn set_vring_num(&mut self, q: usize, num: u16) -> vhost::Result<()> {
        self.rec("SET_VRING_NUM", format!(" {q} {num}"))
    }
    fn set_vring_addr(&mut self, q: usize, c: &VringConfigData) -> vhost::Result<()> {
        self.log.lock().unwrap().rings.push(*c);
        self.rec("SET_VRING_ADDR", format!(" {q}"))
    }
    fn set_vring_base(&mut self, q: usize, base: u16) -> vhost::Result<()> {
        self.rec("SET_VRING_BASE", format!(" {q} {base}"))
    }
    fn get_vring_base(&mut self, q: usize) -> vhost::Result<u32> {
        self.rec("GET_VRING_BASE", format!(" {q}")).map(|()| 0)
    }
    fn set_vring_call(&mut self, q: usize, _fd: &EventFd) -> vhost::Result<()> {
        self.rec("SET_VRING_CALL", format!(" {q}"))
    }
    fn set_vring_kick(&mut self, q: usize, _fd: &EventFd) -> vhost::Result<()> {
        self.rec("SET_VRING_KICK", format!(" {q}"))
    }
    fn set_vring_enable(&mut self, q: usize, on: bool) -> vhost::Result<()> {
        self.rec("SET_VRING_ENABLE", format!(" {q} {on}"))
    }
    fn socket_fd(&self) -> Option<RawFd> {
        self.sock
    }
}

#[derive(Default)]
struct CountIrq(AtomicUsize);

impl Interrupt for CountIrq {
    fn trigger(&self) -> std::io::Result<()> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// 2 MiB + 2 MiB of memfd-backed guest RAM with a hole between (two regions, like RAM split
/// around the MMIO hole).
fn shared_mem() -> GuestMemoryMmap {
    // SAFETY: the name is a valid NUL-terminated string; the result is checked.
    let fd = unsafe { libc::memfd_create(c"fs-test".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let file = Arc::new(unsafe { File::from_raw_fd(fd) });
    file.set_len(4 << 20).unwrap();
    GuestMemoryMmap::from_ranges_with_files([
        (
            GuestAddress(0),
            2 << 20,
            Some(FileOffset::from_arc(file.clone(), 0)),
        ),
        (
            GuestAddress(0x100_0000),
            2 << 20,
            Some(FileOffset::from_arc(file, 2 << 20)),
        ),
    ])
    .unwrap()
}

const FEATURES: u64 = VIRTIO_F_VERSION_1
    | VHOST_USER_F_PROTOCOL_FEATURES
    | (1 << 28)
    | (1 << 29)
    | (1 << 34) // packed ring: not passed through
    | (1 << 33); // access platform: not passed through

fn mock(log: &Arc<Mutex<Log>>, fail_at: Option<&'static str>, sock: Option<RawFd>) -> Box<Mock> {
    Box::new(Mock {
        features: FEATURES,
        log: log.clone(),
        fail_at,
        sock,
    })
}

fn rd(t: &mut impl BusDevice, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

fn wr(t: &mut impl BusDevice, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

/// Drives the transport like Linux: features (the offered low and high words), both queues,
/// DRIVER_OK. Returns the status read back.
fn bring_up(t: &mut MmioTransport<Fs>, mem: &GuestMemoryMmap) -> u32 {
    wr(t, 0x70, status::ACKNOWLEDGE | status::DRIVER);
    for sel in 0..2 {
        wr(t, 0x14, sel);
        let offered = rd(t, 0x10);
        wr(t, 0x24, sel);
        wr(t, 0x20, offered);
    }
    wr(
        t,
        0x70,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    for q in 0..2u32 {
        let drv = Driver::new(mem, 0x10_0000 + u64::from(q) * 0x4_0000, 256);
        wr(t, 0x30, q);
        wr(t, 0x38, 256);
        wr(t, 0x80, drv.desc_table() as u32);
        wr(t, 0x90, drv.avail_addr() as u32);
        wr(t, 0xa0, drv.used_addr() as u32);
        wr(t, 0x44, 1);
    }
    wr(
        t,
        0x70,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
    );
    rd(t, 0x70)
}

#[test]
fn config_space_is_tag_then_request_queue_count() {
    let log = Arc::new(Mutex::new(Log::default()));
    let dev = Fs::new("myfs", mock(&log, None, None)).unwrap();
    assert_eq!(dev.device_type(), 26);
    let mut cfg = [0xffu8; 40];
    dev.read_config(0, &mut cfg);
    assert_eq!(&cfg[..4], b"myfs");
    assert!(cfg[4..36].iter().all(|&b| b == 0));
    assert_eq!(u32::from_le_bytes(cfg[36..].try_into().unwrap()), 1);
    let mut past = [0xffu8; 4];
    dev.read_config(40, &mut past);
    assert_eq!(past, [0; 4]);
    assert_eq!(dev.queue_max_sizes(), &[QUEUE_SIZE, QUEUE_SIZE]);
    // A full 36-byte tag fits; 37 bytes, empty or NUL do not.
    assert!(Fs::new(&"t".repeat(36), mock(&log, None, None)).is_ok());
    for bad in ["", "a\0b", &"t".repeat(37)] {
        assert!(matches!(
            Fs::new(bad, mock(&log, None, None)),
            Err(FsError::BadTag(_))
        ));
    }
}

#[test]
fn features_are_masked_and_protocol_features_negotiated_at_creation() {
    let log = Arc::new(Mutex::new(Log::default()));
    let dev = Fs::new("t", mock(&log, None, None)).unwrap();
    assert_eq!(
        dev.features(),
        VIRTIO_F_VERSION_1 | (1 << 28) | (1 << 29),
        "packed rings, platform access and the vhost-user bit are not offered to the guest"
    );
    assert_eq!(
        log.lock().unwrap().calls,
        [
            "GET_FEATURES",
            "GET_PROTOCOL_FEATURES",
            "SET_PROTOCOL_FEATURES 0x1"
        ]
    );
    // Without PROTOCOL_FEATURES there is no protocol negotiation.
    let log2 = Arc::new(Mutex::new(Log::default()));
    let mut m = mock(&log2, None, None);
    m.features = VIRTIO_F_VERSION_1;
    Fs::new("t", m).unwrap();
    assert_eq!(log2.lock().unwrap().calls, ["GET_FEATURES"]);
}

#[test]
fn driver_ok_sends_the_vring_setup_with_host_addresses() {
    let mem = shared_mem();
    let log = Arc::new(Mutex::new(Log::default()));
    let dev = Fs::new("t", mock(&log, None, None)).unwrap();
    let irq = Arc::new(CountIrq::default());
    let mut t = MmioTransport::new(dev, mem.clone(), irq.clone()).unwrap();
    log.lock().unwrap().calls.clear();
    let st = bring_up(&mut t, &mem);
    assert_eq!(st & status::DEVICE_NEEDS_RESET, 0, "status {st:#x}");
    assert!(t.is_activated());
    let l = log.lock().unwrap();
    let acked = VIRTIO_F_VERSION_1 | (1 << 28) | (1 << 29) | VHOST_USER_F_PROTOCOL_FEATURES;
    let mut expect = vec![format!("SET_FEATURES {acked:#x}"), "SET_MEM_TABLE 2".into()];
    for q in 0..2 {
        for s in [
            format!("SET_VRING_NUM {q} 256"),
            format!("SET_VRING_ADDR {q}"),
            format!("SET_VRING_BASE {q} 0"),
            format!("SET_VRING_CALL {q}"),
            format!("SET_VRING_KICK {q}"),
            format!("SET_VRING_ENABLE {q} true"),
        ] {
            expect.push(s);
        }
    }
    assert_eq!(l.calls, expect);
    assert_eq!(
        l.regions,
        [(0, 2 << 20, 0), (0x100_0000, 2 << 20, 2 << 20)],
        "every RAM region, with its memfd offset"
    );
    let drv = Driver::new(&mem, 0x10_0000, 256);
    let host = |gpa: u64| mem.get_host_address(GuestAddress(gpa)).unwrap() as u64;
    assert_eq!(l.rings[0].desc_table_addr, host(drv.desc_table()));
    assert_eq!(l.rings[0].avail_ring_addr, host(drv.avail_addr()));
    assert_eq!(l.rings[0].used_ring_addr, host(drv.used_addr()));
    assert_eq!(l.rings[0].queue_size, 256);
    assert_eq!(l.rings[0].queue_max_size, QUEUE_SIZE);
}

#[test]
fn a_call_from_the_backend_raises_the_used_ring_interrupt() {
    let mem = shared_mem();
    let log = Arc::new(Mutex::new(Log::default()));
    let dev = Fs::new("t", mock(&log, None, None)).unwrap();
    assert!(!dev.handles_queue_events(), "kicks go to the backend");
    let irq = Arc::new(CountIrq::default());
    let mut t = MmioTransport::new(dev, mem.clone(), irq.clone()).unwrap();
    let mut fds = Vec::new();
    t.drain_fd_ops(&mut |op| fds.push(op));
    let calls: Vec<RawFd> = fds
        .iter()
        .map(|op| match op {
            FdOp::Add(fd, set) if *set == EventSet::IN => *fd,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(calls.len(), 2);
    // Before activation a call is drained but not forwarded.
    t.process_host_event(calls[1], EventSet::IN);
    assert_eq!(irq.0.load(Ordering::SeqCst), 0);
    bring_up(&mut t, &mem);
    let call = t.device().calls[1].try_clone().unwrap();
    call.write(1).unwrap();
    t.process_host_event(calls[1], EventSet::IN);
    assert_eq!(irq.0.load(Ordering::SeqCst), 1);
    assert_eq!(rd(&mut t, 0x60) & 1, 1, "InterruptStatus says used ring");
    assert!(call.read().is_err(), "the call eventfd was drained");
}

#[test]
fn anonymous_ram_or_a_failing_backend_fails_the_device_not_the_vmm() {
    // Anonymous RAM (no memfd) cannot be shared.
    let mem = crate::virtio::test_utils::test_mem();
    let log = Arc::new(Mutex::new(Log::default()));
    let dev = Fs::new("t", mock(&log, None, None)).unwrap();
    let mut t = MmioTransport::new(dev, mem.clone(), Arc::new(CountIrq::default())).unwrap();
    let st = bring_up(&mut t, &mem);
    assert!(!t.is_activated());
    assert_ne!(st & status::DEVICE_NEEDS_RESET, 0);
    assert!(!log.lock().unwrap().calls.iter().any(|c| c.contains("MEM")));

    // A backend whose socket breaks mid-setup.
    let mem = shared_mem();
    let dev = Fs::new("t", mock(&log, Some("SET_VRING_ADDR"), None)).unwrap();
    let mut t = MmioTransport::new(dev, mem.clone(), Arc::new(CountIrq::default())).unwrap();
    let st = bring_up(&mut t, &mem);
    assert!(!t.is_activated());
    assert_ne!(st & status::DEVICE_NEEDS_RESET, 0);

    // Creation fails with a typed error naming the request.
    match Fs::new("t", mock(&log, Some("GET_FEATURES"), None)) {
        Err(FsError::Request("GET_FEATURES", _)) => {}
        other => panic!("unexpected {:?}", other.err()),
    }
}

#[test]
fn backend_hang_up_is_noticed_once_and_later_activation_fails() {
    let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
    let mem = shared_mem();
    let log = Arc::new(Mutex::new(Log::default()));
    let dev = Fs::new("t", mock(&log, None, Some(a.as_raw_fd()))).unwrap();
    let mut t = MmioTransport::new(dev, mem.clone(), Arc::new(CountIrq::default())).unwrap();
    let mut ops = Vec::new();
    t.drain_fd_ops(&mut |op| ops.push(op));
    assert!(ops.contains(&FdOp::Add(
        a.as_raw_fd(),
        EventSet::READ_HANG_UP | EventSet::HANG_UP
    )));
    t.process_host_event(a.as_raw_fd(), EventSet::HANG_UP);
    t.process_host_event(a.as_raw_fd(), EventSet::HANG_UP);
    ops.clear();
    t.drain_fd_ops(&mut |op| ops.push(op));
    assert_eq!(ops, [FdOp::Remove(a.as_raw_fd())]);
    let st = bring_up(&mut t, &mem);
    assert!(!t.is_activated());
    assert_ne!(st & status::DEVICE_NEEDS_RESET, 0);
}

#[test]
fn reset_stops_the_rings_and_a_new_driver_ok_sets_them_up_again() {
    let mem = shared_mem();
    let log = Arc::new(Mutex::new(Log::default()));
    let dev = Fs::new("t", mock(&log, None, None)).unwrap();
    let mut t = MmioTransport::new(dev, mem.clone(), Arc::new(CountIrq::default())).unwrap();
    bring_up(&mut t, &mem);
    log.lock().unwrap().calls.clear();
    wr(&mut t, 0x70, 0);
    assert_eq!(
        log.lock().unwrap().calls,
        ["GET_VRING_BASE 0", "GET_VRING_BASE 1"]
    );
    bring_up(&mut t, &mem);
    assert!(t.is_activated());
    assert!(log
        .lock()
        .unwrap()
        .calls
        .iter()
        .any(|c| c == "SET_VRING_KICK 1"));
}

#[test]
fn a_snapshot_before_any_request_restores_onto_a_new_backend() {
    use crate::virtio::TransportSnapshot;
    let mem = shared_mem();
    let irq = Arc::new(CountIrq::default());
    let log = Arc::new(Mutex::new(Log::default()));
    let dev = Fs::new("t", mock(&log, None, None)).unwrap();
    let mut t = MmioTransport::new(dev, mem.clone(), irq.clone()).unwrap();
    bring_up(&mut t, &mem);
    let setup = log.lock().unwrap().calls.split_off(3); // after the creation's negotiation
    let state = t.save_state().unwrap();
    // The clone's own backend (another virtiofsd) gets the same setup at restore.
    let log2 = Arc::new(Mutex::new(Log::default()));
    let dev2 = Fs::new("t", mock(&log2, None, None)).unwrap();
    let mut r = MmioTransport::new(dev2, mem.clone(), irq).unwrap();
    log2.lock().unwrap().calls.clear();
    r.restore_state(&state).unwrap();
    assert!(r.is_activated());
    assert_eq!(log2.lock().unwrap().calls, setup);
    assert_eq!(r.save_state().unwrap(), state);
}

#[test]
fn a_share_the_guest_used_is_not_snapshotted() {
    use crate::virtio::TransportSnapshot;
    let mem = shared_mem();
    let log = Arc::new(Mutex::new(Log::default()));
    let dev = Fs::new("t", mock(&log, None, None)).unwrap();
    let mut t = MmioTransport::new(dev, mem.clone(), Arc::new(CountIrq::default())).unwrap();
    // Not yet activated: nothing to lose.
    assert!(t.save_state().is_ok());
    bring_up(&mut t, &mem);
    assert!(t.save_state().is_ok());
    // The guest mounted: FUSE_INIT made available on the request queue (queue 1).
    let mut drv = Driver::new(&mem, 0x10_0000 + 0x4_0000, 256);
    drv.publish(0);
    match t.save_state() {
        Err(crate::state::DeviceStateError::NotSnapshottable("virtio-fs", why)) => {
            assert!(why.contains("used the share"), "{why}")
        }
        other => panic!("a used share was snapshotted: {other:?}"),
    }
}

/// virtiofsd: `$CRX_VIRTIOFSD`, else what `cargo xtask virtiofsd` publishes in the cache.
fn virtiofsd_binary() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("CRX_VIRTIOFSD") {
        return p.into();
    }
    let cache = std::env::var_os("CRX_CACHE").unwrap_or_else(|| "/var/cache/crx".into());
    let p = std::path::Path::new(&cache).join("virtiofsd-1.14.0/bin/virtiofsd");
    assert!(
        p.is_file(),
        "{} is missing: run `cargo xtask virtiofsd` (tier 3 does)",
        p.display()
    );
    p
}

/// The real protocol against a real virtiofsd, no guest, no KVM: connect, negotiate, activate
/// with memfd RAM, then one FUSE_INIT request through the request queue, kicked by writing the
/// queue eventfd (as KVM's ioeventfd would) and answered on the call eventfd. Runs in tier 3
/// (`labhost_`), after `cargo xtask virtiofsd`.
#[test]
fn labhost_virtiofsd_answers_fuse_init_without_a_guest() {
    use std::time::{Duration, Instant};
    use vm_memory::Bytes;

    let dir = std::env::temp_dir().join(format!("crx-fs-test-{}", std::process::id()));
    let shared = dir.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let sock = dir.join("fs.sock");
    let _ = std::fs::remove_file(&sock);
    let mut child = std::process::Command::new(virtiofsd_binary())
        .arg("--socket-path")
        .arg(&sock)
        .arg("--shared-dir")
        .arg(&shared)
        .args(["--sandbox", "none", "--cache", "never"])
        .stderr(std::fs::File::create(dir.join("virtiofsd.log")).unwrap())
        .spawn()
        .expect("spawning virtiofsd");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let end = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(Instant::now() < end, "no socket from virtiofsd");
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.try_wait();
    let _kill = Kill(child);

    let conn = connect(&sock, Fs::queue_count()).expect("connect");
    let dev = Fs::new("t", Box::new(conn)).expect("negotiation");
    assert_ne!(dev.backend_features() & VIRTIO_F_VERSION_1, 0);
    assert_ne!(dev.backend_features() & VHOST_USER_F_PROTOCOL_FEATURES, 0);
    let mem = shared_mem();
    let mut t = MmioTransport::new(dev, mem.clone(), Arc::new(CountIrq::default())).unwrap();
    let st = bring_up(&mut t, &mem);
    assert!(t.is_activated(), "status {st:#x}");

    // FUSE_INIT (opcode 26): in header (40 bytes) + init_in (64 bytes), 7.31.
    const UNIQUE: u64 = 0x1234;
    let mut req = Vec::new();
    req.extend_from_slice(&104u32.to_le_bytes());
    req.extend_from_slice(&26u32.to_le_bytes());
    req.extend_from_slice(&UNIQUE.to_le_bytes());
    req.extend_from_slice(&[0u8; 8 + 4 * 3 + 4]); // nodeid, uid, gid, pid, extlen+pad
    req.extend_from_slice(&7u32.to_le_bytes());
    req.extend_from_slice(&31u32.to_le_bytes());
    req.extend_from_slice(&[0u8; 56]);
    assert_eq!(req.len(), 104);
    let (req_at, reply_at) = (0x18_0000u64, 0x19_0000u64);
    mem.write_slice(&req, GuestAddress(req_at)).unwrap();
    let mut drv = Driver::new(&mem, 0x10_0000 + 0x4_0000, 256);
    let head = drv.add(&[
        crate::virtio::test_utils::r(req_at, 104),
        crate::virtio::test_utils::w(reply_at, 4096),
    ]);
    t.queue_evts()[1].write(1).unwrap();
    let call = t.device().calls[1].try_clone().unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    while call.read().is_err() {
        assert!(Instant::now() < end, "no call from virtiofsd within 10 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    let used = drv.used();
    assert_eq!(used.len(), 1);
    assert_eq!(used[0].0, head);
    let mut out = [0u8; 24];
    mem.read_slice(&mut out, GuestAddress(reply_at)).unwrap();
    let len = u32::from_le_bytes(out[0..4].try_into().unwrap());
    let error = i32::from_le_bytes(out[4..8].try_into().unwrap());
    let unique = u64::from_le_bytes(out[8..16].try_into().unwrap());
    let major = u32::from_le_bytes(out[16..20].try_into().unwrap());
    assert_eq!((error, unique, major), (0, UNIQUE, 7), "reply {out:?}");
    assert_eq!(used[0].1, len, "used length is the reply length");
    let _ = std::fs::remove_dir_all(&dir);
}
