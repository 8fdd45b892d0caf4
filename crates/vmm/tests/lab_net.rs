//! virtio-net end to end, in the nested lab: a tap with an address on the lab host, crx-vmm
//! attached to it (`--net tap=NAME,mac=..,mtu=..`), a busybox guest that configures eth0,
//! pings the host and moves a few MB each way over TCP; the bytes are compared on the
//! receiving side. Prints the throughput each way, timed on the host.
//!
//! Run inside the lab (`target/debug/xtask lab -- target/debug/deps/lab_net-HASH lab_
//! --test-threads 1`). A missing kernel, `/dev/kvm`, busybox or `ip` is a failure, never a skip.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crx_testkit::net::HostTap;
use crx_testkit::vm::Vm;
use crx_testkit::{busybox, env};

const TIMEOUT: Duration = Duration::from_secs(300);
const TAP: &str = "crxnet0";
const HOST_IP: &str = "10.77.0.1";
const GUEST_IP: &str = "10.77.0.2";
const MAC: &str = "02:00:00:77:00:02";
/// `seq 1 SEQ_MAX`: deterministic bytes both sides can produce (6,888,897 bytes).
const SEQ_MAX: u32 = 1_000_000;

fn seq_bytes() -> Vec<u8> {
    let mut v = Vec::new();
    for i in 1..=SEQ_MAX {
        writeln!(v, "{i}").unwrap();
    }
    v
}

const GUEST_BODY: &str = r#"
ip link set lo up
ip link set eth0 up
ip addr add 10.77.0.2/24 dev eth0
echo "MAC=$(cat /sys/class/net/eth0/address)"
echo "MTU=$(cat /sys/class/net/eth0/mtu)"
ping -c 3 -W 10 10.77.0.1 > /tmp/ping 2>&1
echo "PING=$(grep -o '[0-9]* packets received' /tmp/ping)"
seq 1 1000000 > /tmp/want
echo GUEST-SENDING
nc 10.77.0.1 7001 < /tmp/want
echo GUEST-LISTENING
nc -l -p 7002 > /tmp/in
echo IN-DONE
echo "IN-LEN=$(wc -c < /tmp/in)"
if cmp -s /tmp/in /tmp/want; then echo IN=match; else echo IN=differ; fi
"#;

fn initrd(dir: &Path) -> PathBuf {
    let script = busybox::init_script(&["proc", "sys", "dev", "tmp"], GUEST_BODY);
    busybox::init_initrd(dir, &["/proc", "/sys", "/dev", "/tmp"], &script)
}

/// crx-vmm on the tap, the console in a file, killed when dropped.
fn spawn_vm(dir: &Path, initrd: &Path) -> Vm {
    let kernel = env::guest_kernel("vmlinux");
    let net = format!("tap={TAP},mac={MAC},mtu=1400");
    let args = [
        "--memory-mib".as_ref(),
        "256".as_ref(),
        "--kernel".as_ref(),
        kernel.as_os_str(),
        "--initrd".as_ref(),
        initrd.as_os_str(),
        "--net".as_ref(),
        net.as_ref(),
    ];
    Vm::spawn_vmm(Path::new(env!("CARGO_BIN_EXE_crx-vmm")), dir, "vm", args)
}

fn mb_per_s(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

/// Guest to host: accepts the guest's connection and reads the whole sequence.
fn receive_from_guest(vm: &mut Vm, listener: &TcpListener, want: &[u8]) -> Duration {
    listener.set_nonblocking(true).unwrap();
    let end = Instant::now() + TIMEOUT;
    let mut conn = loop {
        match listener.accept() {
            Ok((c, _)) => break c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                vm.check_alive("waiting for the guest to connect", end);
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    let start = Instant::now();
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut got = vec![0u8; want.len()];
    conn.read_exact(&mut got)
        .unwrap_or_else(|e| panic!("reading from the guest: {e}\n{}", vm.logs()));
    let took = start.elapsed();
    assert!(got == want, "the bytes from the guest differ");
    took
}

/// Host to guest: connects to the guest's listener (retrying while it starts) and sends.
fn send_to_guest(vm: &mut Vm, data: &[u8]) -> Duration {
    let addr: SocketAddr = format!("{GUEST_IP}:7002").parse().unwrap();
    let end = Instant::now() + TIMEOUT;
    let mut conn = loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(c) => break c,
            Err(_) => {
                vm.check_alive("connecting to the guest", end);
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    let start = Instant::now();
    conn.set_write_timeout(Some(TIMEOUT)).unwrap();
    conn.write_all(data).unwrap();
    conn.shutdown(Shutdown::Write).unwrap();
    vm.wait_console("IN-DONE", TIMEOUT);
    start.elapsed()
}

#[test]
fn lab_net_ping_and_tcp_both_ways() {
    let tmp = tempfile::tempdir().unwrap();
    let _tap = HostTap::create(TAP, &format!("{HOST_IP}/24"));
    let listener = TcpListener::bind(format!("{HOST_IP}:7001")).expect("listening on the tap");
    let want = seq_bytes();
    let mut vm = spawn_vm(tmp.path(), &initrd(tmp.path()));
    vm.wait_console("GUEST-SENDING", TIMEOUT);
    assert_eq!(vm.value("MAC="), MAC);
    assert_eq!(vm.value("MTU="), "1400");
    assert_eq!(vm.value("PING="), "3 packets received", "{}", vm.logs());
    let up = receive_from_guest(&mut vm, &listener, &want);
    vm.wait_console("GUEST-LISTENING", TIMEOUT);
    let down = send_to_guest(&mut vm, &want);
    vm.wait_console("CRX-INIT-END", TIMEOUT);
    assert_eq!(vm.value("IN-LEN="), want.len().to_string());
    assert_eq!(vm.value("IN="), "match", "{}", vm.logs());
    eprintln!(
        "lab_net: {} bytes guest->host in {up:?} ({:.1} MB/s), host->guest in {down:?} \
         ({:.1} MB/s; until the guest's nc exited, console-polled)",
        want.len(),
        mb_per_s(want.len(), up),
        mb_per_s(want.len(), down)
    );
}
