//! virtio-net end to end, in the nested lab: a tap with an address on the lab host, crx-vmm
//! attached to it (`--net tap=NAME,mac=..,mtu=..`), a busybox guest that configures eth0,
//! pings the host and moves a few MB each way over TCP; the bytes are compared on the
//! receiving side. Prints the throughput each way, timed on the host.
//!
//! Run inside the lab (`target/debug/xtask lab -- target/debug/deps/lab_net-HASH lab_
//! --test-threads 1`). A missing kernel, `/dev/kvm`, busybox or `ip` is a failure, never a skip.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crx_initrd::{parse_spec, WriteOptions};

const TIMEOUT: Duration = Duration::from_secs(300);
const TAP: &str = "crxnet0";
const HOST_IP: &str = "10.77.0.1";
const GUEST_IP: &str = "10.77.0.2";
const MAC: &str = "02:00:00:77:00:02";
/// `seq 1 SEQ_MAX`: deterministic bytes both sides can produce (6,888,897 bytes).
const SEQ_MAX: u32 = 1_000_000;

fn kernel() -> PathBuf {
    let dir = std::env::var_os("CRX_GUEST_KERNEL_DIR").expect(
        "CRX_GUEST_KERNEL_DIR is not set: run lab tests inside the nested lab \
         (`target/debug/xtask lab -- TEST-BINARY lab_`)",
    );
    let k = Path::new(&dir).join("vmlinux");
    assert!(k.is_file(), "{} is missing", k.display());
    assert!(
        Path::new("/dev/kvm").exists(),
        "/dev/kvm is missing: run lab tests inside the nested lab"
    );
    k
}

fn seq_bytes() -> Vec<u8> {
    let mut v = Vec::new();
    for i in 1..=SEQ_MAX {
        writeln!(v, "{i}").unwrap();
    }
    v
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("running `ip` (apt package iproute2)");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A persistent tap with the host's address, deleted when dropped.
struct HostTap;

impl HostTap {
    fn create() -> HostTap {
        // A leftover from an earlier, killed run.
        let _ = Command::new("ip").args(["link", "del", TAP]).output();
        ip(&["tuntap", "add", "dev", TAP, "mode", "tap"]);
        let tap = HostTap;
        ip(&["addr", "add", &format!("{HOST_IP}/24"), "dev", TAP]);
        ip(&["link", "set", TAP, "up"]);
        tap
    }
}

impl Drop for HostTap {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", TAP]).output();
    }
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
    assert!(
        Path::new("/bin/busybox").is_file(),
        "/bin/busybox is missing (apt package busybox-static)"
    );
    let script = format!(
        "#!/bin/sh\n\
         mount -t proc proc /proc\nmount -t sysfs sys /sys\nmount -t devtmpfs dev /dev\n\
         mount -t tmpfs tmp /tmp\n\
         echo CRX-INIT-START\n{GUEST_BODY}\necho CRX-INIT-END\nreboot -f\n"
    );
    let init = dir.join("init.sh");
    std::fs::write(&init, script).unwrap();
    let spec = format!(
        "busybox /bin/busybox /bin/busybox\n\
         dir /proc\ndir /sys\ndir /dev\ndir /tmp\n\
         file /init {} 0755\n",
        init.display()
    );
    let a = parse_spec(&spec, dir, &BTreeMap::new()).expect("initrd spec");
    let out = dir.join("init.cpio");
    std::fs::write(&out, a.to_bytes(WriteOptions::default()).unwrap()).unwrap();
    out
}

/// crx-vmm with the console in a file, killed when dropped.
struct Vm {
    child: Child,
    console: PathBuf,
    stderr: PathBuf,
}

impl Vm {
    fn spawn(dir: &Path, initrd: &Path) -> Vm {
        let console = dir.join("console");
        let stderr = dir.join("vmm.stderr");
        let child = Command::new(env!("CARGO_BIN_EXE_crx-vmm"))
            .args(["--memory-mib", "256", "--kernel"])
            .arg(kernel())
            .arg("--initrd")
            .arg(initrd)
            .arg("--serial")
            .arg(format!("file:{}", console.display()))
            .arg("--net")
            .arg(format!("tap={TAP},mac={MAC},mtu=1400"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("spawning crx-vmm");
        Vm {
            child,
            console,
            stderr,
        }
    }

    fn console(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.console).unwrap_or_default()).into_owned()
    }

    fn logs(&self) -> String {
        format!(
            "--- console ---\n{}\n--- crx-vmm stderr ---\n{}",
            self.console(),
            std::fs::read_to_string(&self.stderr).unwrap_or_default()
        )
    }

    /// Panics with the logs if the VM has exited or `end` has passed.
    fn check_alive(&mut self, what: &str, end: Instant) {
        if let Some(st) = self.child.try_wait().unwrap() {
            panic!("crx-vmm exited ({st}) while {what}\n{}", self.logs());
        }
        assert!(Instant::now() < end, "timed out {what}\n{}", self.logs());
    }

    fn wait_console(&mut self, needle: &str) {
        let end = Instant::now() + TIMEOUT;
        while !self.console().contains(needle) {
            self.check_alive(&format!("waiting for {needle:?}"), end);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn value(&self, key: &str) -> String {
        self.console()
            .lines()
            .find_map(|l| {
                l.trim_end_matches('\r')
                    .strip_prefix(key)
                    .map(str::to_string)
            })
            .unwrap_or_else(|| panic!("{key} not on the console\n{}", self.logs()))
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
    vm.wait_console("IN-DONE");
    start.elapsed()
}

#[test]
fn lab_net_ping_and_tcp_both_ways() {
    let tmp = tempfile::tempdir().unwrap();
    let _tap = HostTap::create();
    let listener = TcpListener::bind(format!("{HOST_IP}:7001")).expect("listening on the tap");
    let want = seq_bytes();
    let mut vm = Vm::spawn(tmp.path(), &initrd(tmp.path()));
    vm.wait_console("GUEST-SENDING");
    assert_eq!(vm.value("MAC="), MAC);
    assert_eq!(vm.value("MTU="), "1400");
    assert_eq!(vm.value("PING="), "3 packets received", "{}", vm.logs());
    let up = receive_from_guest(&mut vm, &listener, &want);
    vm.wait_console("GUEST-LISTENING");
    let down = send_to_guest(&mut vm, &want);
    vm.wait_console("CRX-INIT-END");
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
