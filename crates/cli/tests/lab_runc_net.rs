//! crx-runc in a network namespace prepared as CNI's bridge plugin leaves one (a veth `eth0`
//! holding the container's address and a default route, its peer on the host): the container
//! reaches the host and the host reaches the container, with the address the namespace held;
//! `delete --force` after a SIGKILL of the monitor leaves the namespace as it was; a network
//! entry without a path gives loopback only. Real microVMs: inside the nested lab (tier 3):
//! `cargo xtask lab -- target/debug/deps/lab_runc_net-HASH lab_ --test-threads 1`.
//!
//! The test process is a child subreaper (as conmon is): the monitor `create` leaves behind
//! becomes our child.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crx_testkit::net::fetch;
use crx_testkit::text;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

static ONE_VM: Mutex<()> = Mutex::new(());

const NS: &str = "crx-runc-net";
const HOST_IF: &str = "crxnet-host";
const HOST_IP: &str = "10.77.0.1";
const CONTAINER_IP: &str = "10.77.0.2";

struct Lab {
    dir: tempfile::TempDir,
    _g: MutexGuard<'static, ()>,
}

impl Lab {
    fn new() -> Lab {
        let g = ONE_VM.lock().unwrap_or_else(|e| e.into_inner());
        nix::sys::prctl::set_child_subreaper(true).unwrap();
        Lab {
            dir: tempfile::tempdir().unwrap(),
            _g: g,
        }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn runc(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_crx-runc"))
            .arg("--root")
            .arg(self.root())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// A busybox bundle running `args` with `namespaces` (the lab's /bin/busybox).
    fn bundle(&self, args: &[&str], namespaces: Value) -> PathBuf {
        let b = self.dir.path().join("bundle");
        let rootfs = b.join("rootfs");
        for d in ["bin", "proc", "dev", "sys", "tmp", "www"] {
            fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        for applet in ["sh", "cat", "sleep", "ip", "wget", "httpd"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        fs::write(rootfs.join("www/hello"), "from the container\n").unwrap();
        let spec = json!({
            "ociVersion": "1.0.2",
            "process": {"terminal": false, "user": {"uid": 0, "gid": 0}, "args": args,
                "env": ["PATH=/bin"], "cwd": "/"},
            "root": {"path": "rootfs"},
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/sys", "type": "sysfs", "source": "sysfs"}],
            "linux": {"namespaces": namespaces}
        });
        fs::write(b.join("config.json"), spec.to_string()).unwrap();
        b
    }
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// The namespace `NS` with `eth0` (CONTAINER_IP/24, default route via HOST_IP) whose peer
/// `HOST_IF` (HOST_IP/24) is in the lab host's namespace; all removed when dropped.
struct PreparedNetns;

impl PreparedNetns {
    fn new() -> PreparedNetns {
        drop(PreparedNetns);
        run("ip", &["netns", "add", NS]);
        let n = PreparedNetns;
        run(
            "ip",
            &[
                "link", "add", HOST_IF, "type", "veth", "peer", "name", "eth0", "netns", NS,
            ],
        );
        run(
            "ip",
            &["addr", "add", &format!("{HOST_IP}/24"), "dev", HOST_IF],
        );
        run("ip", &["link", "set", HOST_IF, "up"]);
        let ns = |args: &[&str]| run("ip", &[&["-n", NS], args].concat());
        ns(&["addr", "add", &format!("{CONTAINER_IP}/24"), "dev", "eth0"]);
        ns(&["link", "set", "eth0", "mtu", "1400", "up"]);
        ns(&["link", "set", "lo", "up"]);
        ns(&["route", "add", "default", "via", HOST_IP]);
        n
    }

    fn path() -> String {
        format!("/run/netns/{NS}")
    }

    /// What the namespace holds that CRX may have added: (taps, qdiscs on eth0's ingress,
    /// filters there), each as `tc`/`ip` print them.
    fn ours() -> (String, String, String) {
        let links = run("ip", &["-n", NS, "-o", "link"]);
        let taps = links
            .lines()
            .filter(|l| l.contains("crxtap"))
            .collect::<Vec<_>>()
            .join("\n");
        let qdiscs = run("tc", &["-n", NS, "qdisc", "show", "dev", "eth0", "ingress"]);
        let filters = run(
            "tc",
            &["-n", NS, "filter", "show", "dev", "eth0", "ingress"],
        );
        (taps, qdiscs.trim().to_owned(), filters.trim().to_owned())
    }

    fn eth0() -> String {
        run("ip", &["-n", NS, "-o", "addr", "show", "dev", "eth0"])
    }

    fn mac() -> String {
        let link = run("ip", &["-n", NS, "-o", "link", "show", "dev", "eth0"]);
        let after = link.split("link/ether ").nth(1).unwrap();
        after.split_whitespace().next().unwrap().to_owned()
    }
}

impl Drop for PreparedNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", NS]).output();
        let _ = Command::new("ip").args(["link", "del", HOST_IF]).output();
    }
}

/// busybox httpd serving `dir` on the lab host, killed when dropped.
struct HostServer(Child);

impl HostServer {
    fn start(dir: &Path) -> HostServer {
        let child = Command::new("/bin/busybox")
            .args(["httpd", "-f", "-p", &format!("{HOST_IP}:8000"), "-h"])
            .arg(dir)
            .spawn()
            .unwrap();
        HostServer(child)
    }
}

impl Drop for HostServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_gone(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let _ = nix::sys::wait::waitpid(
            Pid::from_raw(pid),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        );
        if kill(Pid::from_raw(pid), None).is_err() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{pid} still runs");
}

/// Both ways through the namespace's veth, with its address; then the monitor SIGKILLed and
/// `delete --force`: no tap, no qdisc, no filter left, the veth's address kept.
#[test]
fn lab_runc_net_both_ways_then_delete_force_after_kill9() {
    let lab = Lab::new();
    let _ns = PreparedNetns::new();
    let before = PreparedNetns::ours();
    assert_eq!(before, (String::new(), String::new(), String::new()));
    let served = lab.dir.path().join("served");
    fs::create_dir_all(&served).unwrap();
    fs::write(served.join("f"), "from the host\n").unwrap();
    let _server = HostServer::start(&served);
    let script = format!(
        "ip -o addr show; ip -o link show; ip route; \
         for i in 1 2 3 4 5 6 7 8 9 10; do \
           wget -q -O - http://{HOST_IP}:8000/f && break; sleep 1; done; \
         httpd -f -p 80 -h /www"
    );
    let ns = json!([{"type": "pid"}, {"type": "mount"},
        {"type": "network", "path": PreparedNetns::path()}]);
    let b = lab.bundle(&["sh", "-c", &script], ns);
    let out_path = lab.dir.path().join("out");
    let created = Command::new(env!("CARGO_BIN_EXE_crx-runc"))
        .arg("--root")
        .arg(lab.root())
        .args(["create", "--bundle", b.to_str().unwrap(), "n1"])
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out_path).unwrap())
        .stderr(Stdio::inherit())
        .status()
        .unwrap();
    assert!(created.success());
    // Created: the tap and the redirects are in place, the veth untouched otherwise.
    let (taps, qdiscs, filters) = PreparedNetns::ours();
    assert!(taps.contains("crxtap0"), "{taps}");
    assert!(qdiscs.contains("ingress"), "{qdiscs}");
    assert!(filters.contains("mirred"), "{filters}");
    let out = lab.runc(&["start", "n1"]);
    assert!(out.status.success(), "start: {}", text(&out.stderr));

    let got = fetch(&format!("http://{CONTAINER_IP}/hello"));
    let said = fs::read_to_string(&out_path).unwrap_or_default();
    assert_eq!(
        got.as_deref(),
        Ok("from the container\n"),
        "the container said:\n{said}"
    );
    // The container has the namespace's address, MAC and route, and reached the host.
    assert!(said.contains(&format!("inet {CONTAINER_IP}/24")), "{said}");
    assert!(said.contains(&PreparedNetns::mac()), "{said}");
    assert!(said.contains(&format!("default via {HOST_IP}")), "{said}");
    assert!(said.contains("mtu 1400"), "{said}");
    assert!(said.contains("from the host\n"), "{said}");

    let state: Value = serde_json::from_slice(&lab.runc(&["state", "n1"]).stdout).unwrap();
    let monitor = state["pid"].as_i64().unwrap() as i32;
    kill(Pid::from_raw(monitor), Signal::SIGKILL).unwrap();
    wait_gone(monitor);
    let out = lab.runc(&["delete", "--force", "n1"]);
    assert!(out.status.success(), "delete: {}", text(&out.stderr));
    assert_eq!(
        PreparedNetns::ours(),
        (String::new(), String::new(), String::new())
    );
    assert!(PreparedNetns::eth0().contains(&format!("{CONTAINER_IP}/24")));
    assert!(!lab.root().join("n1").exists());
}

/// A network namespace without a path: the VM has its loopback alone, up (no Ethernet
/// interface; a kernel's own tunnel devices such as `sit0` may be listed, down).
#[test]
fn lab_runc_net_without_a_path_is_loopback_only() {
    let lab = Lab::new();
    let ns = json!([{"type": "pid"}, {"type": "mount"}, {"type": "network"}]);
    let b = lab.bundle(&["ip", "-o", "link", "show"], ns);
    let out = lab.runc(&["run", "--bundle", b.to_str().unwrap(), "n2"]);
    let said = text(&out.stdout);
    assert!(out.status.success(), "run: {}\n{said}", text(&out.stderr));
    assert!(said.contains("lo: <LOOPBACK,UP"), "{said}");
    assert!(!said.contains("link/ether"), "{said}");
}
