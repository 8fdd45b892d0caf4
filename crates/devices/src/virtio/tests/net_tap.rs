//! The tap backend against the host kernel (needs root: CAP_SYS_ADMIN for a fresh network
//! namespace per test, CAP_NET_ADMIN for the tap). Frames go through a real tap, seen from the
//! host side with a packet socket bound to it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use virtio_bindings::virtio_net::*;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, VolatileSlice};

use crate::virtio::net::{Net, NetBackend, NetOptions, Tap, TapError, TxFrame, HDR_LEN, RXQ, TXQ};
use crate::virtio::test_utils::*;
use crate::virtio::{EventFd, EventSet, VirtioDevice, VIRTIO_F_VERSION_1};

/// An experimental EtherType (IEEE 802 local use): nothing else in the namespace sends it.
const ETHERTYPE: u16 = 0x88b5;

/// Runs `f` on a thread of its own in a new, empty network namespace.
fn in_fresh_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: unshare takes no pointers; it moves only this thread to a new namespace.
        let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            r,
            0,
            "unshare(CLONE_NEWNET): {} (the tap tests need root; run the tiers as root)",
            io::Error::last_os_error()
        );
        f()
    })
    .join()
    .unwrap()
}

fn check(r: libc::c_int, what: &str) -> libc::c_int {
    assert!(r >= 0, "{what}: {}", io::Error::last_os_error());
    r
}

/// Brings interface `name` up.
fn link_up(name: &str) {
    // SAFETY: a plain socket call; the fd is owned right away.
    let sock = unsafe {
        OwnedFd::from_raw_fd(check(
            libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0),
            "socket",
        ))
    };
    // SAFETY: all zeroes is a valid ifreq.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write one ifreq, valid for the calls.
    unsafe {
        check(
            libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req),
            "SIOCGIFFLAGS",
        );
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        check(
            libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req),
            "SIOCSIFFLAGS",
        );
    }
}

/// A packet socket on interface `name` for our EtherType: the host's side of the wire.
fn packet_socket(name: &str) -> OwnedFd {
    let proto = ETHERTYPE.to_be();
    // SAFETY: a plain socket call; the fd is owned right away.
    let sock = unsafe {
        OwnedFd::from_raw_fd(check(
            libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)),
            "socket(AF_PACKET)",
        ))
    };
    let cname = std::ffi::CString::new(name).unwrap();
    // SAFETY: a valid NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    assert_ne!(index, 0, "if_nametoindex({name})");
    // SAFETY: all zeroes is a valid sockaddr_ll.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = proto;
    addr.sll_ifindex = index as i32;
    // SAFETY: `addr` is a valid sockaddr_ll of the given size.
    check(
        unsafe {
            libc::bind(
                sock.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        },
        "bind(AF_PACKET)",
    );
    sock
}

/// Waits until `fd` is readable (or fails the test after 10 s: a frame that never comes).
fn wait_readable(fd: RawFd) {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = check(unsafe { libc::poll(&mut p, 1, 10_000) }, "poll");
    assert_eq!(n, 1, "no frame arrived within 10 s");
}

fn recv(fd: RawFd) -> Vec<u8> {
    wait_readable(fd);
    let mut buf = vec![0u8; 70_000];
    // SAFETY: `buf` is valid for writes of its length.
    let n = check(
        unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) } as i32,
        "recv",
    );
    buf.truncate(n as usize);
    buf
}

fn send(fd: RawFd, frame: &[u8]) {
    // SAFETY: `frame` is valid for reads of its length.
    let n = unsafe { libc::send(fd, frame.as_ptr().cast(), frame.len(), 0) };
    assert_eq!(
        n,
        frame.len() as isize,
        "send: {}",
        io::Error::last_os_error()
    );
}

/// A broadcast Ethernet frame of our EtherType with `len` bytes of payload.
fn eth_frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend([0x02, 0, 0, 0, 0, 0x99]);
    f.extend(ETHERTYPE.to_be_bytes());
    f.extend((0..len).map(|i| (i as u8).wrapping_mul(seed)));
    f
}

/// Reads frames from the tap until one of ours (the kernel sends IPv6 chatter too).
fn read_ours(tap: &mut Tap) -> Vec<u8> {
    let mut buf = vec![0u8; 70_000];
    loop {
        wait_readable(tap.raw_fd().unwrap());
        let n = tap.read_frame(&mut buf).unwrap();
        if buf[HDR_LEN + 12..HDR_LEN + 14] == ETHERTYPE.to_be_bytes() {
            return buf[..n].to_vec();
        }
    }
}

#[test]
fn tap_moves_frames_both_ways() {
    in_fresh_netns(|| {
        let mut tap = Tap::open("crxtap0").unwrap();
        assert_eq!(tap.name(), "crxtap0");
        link_up("crxtap0");
        let host = packet_socket("crxtap0");
        // Guest to host: a header then the frame, in two pieces of "guest memory" (one frame).
        let f = eth_frame(1000, 7);
        let mut mem = f.clone();
        let (a, b) = mem.split_at_mut(100);
        let frame = TxFrame {
            header: [0u8; HDR_LEN],
            body: vec![VolatileSlice::from(a), VolatileSlice::from(b)],
        };
        tap.write_frame(&frame).unwrap();
        assert_eq!(recv(host.as_raw_fd()), f);
        // Host to guest.
        let g = eth_frame(1400, 3);
        send(host.as_raw_fd(), &g);
        let got = read_ours(&mut tap);
        assert_eq!(&got[HDR_LEN..], &g[..]);
        assert_eq!(got[0], 0, "no offload flags without TUNSETOFFLOAD");
        // Offloads: what a Linux guest asks for is accepted.
        let all = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
        tap.set_offload(all).unwrap();
        let _ = tap.supports_ufo();
        // Nothing left to read: a nonblocking read says so.
        let mut buf = vec![0u8; 70_000];
        loop {
            match tap.read_frame(&mut buf) {
                Ok(_) => continue, // IPv6 chatter
                Err(e) => {
                    assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
                    break;
                }
            }
        }
    });
}

#[test]
fn tap_from_fd_requires_the_vnet_header() {
    in_fresh_netns(|| {
        for (flags, ok) in [
            (libc::IFF_TAP | libc::IFF_NO_PI, false),
            (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR, true),
        ] {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/net/tun")
                .unwrap();
            // SAFETY: all zeroes is a valid ifreq.
            let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
            for (d, s) in req.ifr_name.iter_mut().zip(b"crxfd0") {
                *d = *s as libc::c_char;
            }
            req.ifr_ifru.ifru_flags = flags as libc::c_short;
            // SAFETY: TUNSETIFF reads and writes one ifreq.
            check(
                unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) },
                "TUNSETIFF",
            );
            let r = Tap::from_fd(OwnedFd::from(file));
            assert_eq!(r.is_ok(), ok, "{r:?}");
            if let Err(e) = r {
                assert!(matches!(e, TapError::Flags(_)), "{e}");
            }
        }
        // Not a tun fd at all.
        let null = std::fs::File::open("/dev/null").unwrap();
        assert!(matches!(
            Tap::from_fd(OwnedFd::from(null)),
            Err(TapError::NotTun(_))
        ));
        assert!(matches!(Tap::open("a/b"), Err(TapError::Name(_))));
        assert!(matches!(Tap::open(&"x".repeat(16)), Err(TapError::Name(_))));
    });
}

#[test]
fn device_over_a_tap_end_to_end() {
    in_fresh_netns(|| {
        let tap = Tap::open("crxtap1").unwrap();
        let fd = tap.raw_fd().unwrap();
        link_up("crxtap1");
        let host = packet_socket("crxtap1");
        let opts = NetOptions {
            mac: "02:00:00:00:00:99".parse().unwrap(),
            mtu: None,
            ufo: false,
        };
        let mut net = Net::new(Box::new(tap), opts);
        let mem = test_mem();
        let mut rx = Driver::new(&mem, 0, 64);
        let mut tx = Driver::new(&mem, 0x8000, 64);
        let mut qs: [Queue; 2] = [rx.queue(), tx.queue()];
        let evts = [EventFd::new(0).unwrap(), EventFd::new(0).unwrap()];
        let acked = VIRTIO_F_VERSION_1
            | (1 << VIRTIO_NET_F_MRG_RXBUF)
            | (1 << VIRTIO_NET_F_MAC)
            | (1 << VIRTIO_NET_F_CSUM)
            | (1 << VIRTIO_NET_F_GUEST_CSUM);
        net.activate_queues(acked, &mem, &qs, &evts).unwrap();
        // Guest to host, split over two descriptors.
        let f = eth_frame(500, 5);
        let mut bytes = vec![0u8; HDR_LEN];
        bytes.extend(&f);
        mem.write_slice(&bytes, GuestAddress(0x10_0000)).unwrap();
        tx.add(&[r(0x10_0000, 20), r(0x10_0014, bytes.len() as u32 - 20)]);
        assert!(net.process_queue(&mem, &mut qs, TXQ));
        assert_eq!(recv(host.as_raw_fd()), f);
        assert_eq!(net.stats().tx_frames, 1);
        // Host to guest: post buffers, send, let the device read the tap until ours arrives.
        for i in 0..32 {
            rx.add(&[w(0x20_0000 + i * 0x1000, 2048)]);
        }
        net.process_queue(&mem, &mut qs, RXQ);
        let g = eth_frame(1200, 9);
        send(host.as_raw_fd(), &g);
        let found = loop {
            wait_readable(fd);
            net.process_host_event(Some((&mem, &mut qs)), fd, EventSet::IN);
            let used = rx.used();
            let ours = used.iter().find_map(|&(head, len)| {
                let mut buf = vec![0u8; len as usize];
                mem.read_slice(&mut buf, GuestAddress(0x20_0000 + u64::from(head) * 0x1000))
                    .unwrap();
                (buf.get(HDR_LEN + 12..HDR_LEN + 14) == Some(&ETHERTYPE.to_be_bytes()[..]))
                    .then_some(buf)
            });
            if let Some(buf) = ours {
                break buf;
            }
        };
        assert_eq!(&found[HDR_LEN..], &g[..]);
        assert_eq!(u16::from_le_bytes([found[10], found[11]]), 1, "num_buffers");
    });
}
