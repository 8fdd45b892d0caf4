//! `crx run`'s own network in the nested lab (tier 3): the default CNI bridge (`crx0`, Debian's
//! containernetworking-plugins), `-p` fetched from the lab host, an instance reaching another
//! by its address, `--network none`, `--hostname`/`--dns`/`--add-host`, and after every test
//! nothing left: no veth on `crx0`, no namespace mount, no address lease, no iptables rule
//! naming an instance's address, no tap.
//! `cargo xtask lab -- target/debug/deps/lab_run_net-HASH lab_ --test-threads=1`.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use crx_testkit::net::fetch;
use crx_testkit::{code, text, Lab};
use serde_json::Value;

const CRX: &str = env!("CARGO_BIN_EXE_crx");
/// The default network's range (crx_runtime::net::run::DEFAULT_SUBNET).
const SUBNET_PREFIX: &str = "10.66.0.";
const LEASES: &str = "/var/lib/cni/networks/crx";

/// A lab with busybox loaded.
fn lab() -> Lab {
    let lab = Lab::new();
    let out = lab.run(CRX, &["load", "--busybox"]);
    assert_eq!(code(&out), 0, "load --busybox: {}", text(&out.stderr));
    lab
}

fn crx(lab: &Lab, args: &[&str]) -> Output {
    let out = lab.run(CRX, args);
    assert_eq!(code(&out), 0, "crx {args:?}: {}", text(&out.stderr));
    out
}

/// `crx inspect KEY` as JSON.
fn inspect(lab: &Lab, key: &str) -> Value {
    serde_json::from_slice(&crx(lab, &["inspect", key]).stdout).unwrap()
}

/// The instance's first address, without its prefix.
fn address(lab: &Lab, key: &str) -> String {
    let v = inspect(lab, key);
    let a = v["network"]["addresses"][0].as_str().unwrap_or_default();
    a.split('/').next().unwrap_or_default().to_owned()
}

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").args(["-c", cmd]).output().unwrap();
    text(&out.stdout)
}

/// What instances may leave behind on the lab host, counted (all zero when nothing leaks).
#[derive(Debug, Default, PartialEq, Eq)]
struct Leaks {
    veths_on_crx0: usize,
    taps: usize,
    netns_mounts: usize,
    leases: usize,
    iptables_rules: usize,
}

fn leaks(root: &Path) -> Leaks {
    let lines = |s: String, pat: &str| s.lines().filter(|l| l.contains(pat)).count();
    let leases = std::fs::read_dir(LEASES).into_iter().flatten().flatten();
    Leaks {
        veths_on_crx0: lines(sh("ip -o link show master crx0 2>/dev/null"), "veth"),
        taps: lines(
            sh("ip -all netns exec ip -o link 2>/dev/null; ip -o link"),
            "crxtap",
        ),
        netns_mounts: lines(
            std::fs::read_to_string("/proc/self/mountinfo").unwrap(),
            &root.display().to_string(),
        ),
        leases: leases
            .filter(|e| e.file_name().to_string_lossy().starts_with(SUBNET_PREFIX))
            .count(),
        iptables_rules: lines(sh("iptables-save"), SUBNET_PREFIX)
            - lines(sh("iptables-save"), &format!("{SUBNET_PREFIX}0/24 ")),
    }
}

fn assert_no_leaks(lab: &Lab) {
    assert_eq!(
        leaks(&lab.root()),
        Leaks::default(),
        "{}",
        sh("iptables-save")
    );
}

const SERVE: &str = "mkdir -p /www && echo hello-from-crx > /www/index.html && \
                     exec httpd -f -p 80 -h /www";

#[test]
fn lab_run_net_publish_is_fetched_on_localhost() {
    let lab = lab();
    crx(
        &lab,
        &[
            "run", "-d", "--name", "web", "-p", "8081:80", "busybox", "sh", "-c", SERVE,
        ],
    );
    let ip = address(&lab, "web");
    assert!(ip.starts_with(SUBNET_PREFIX), "{}", inspect(&lab, "web"));
    let page = fetch("http://127.0.0.1:8081/").expect("fetch on 127.0.0.1:8081");
    assert_eq!(page, "hello-from-crx\n");
    // And from the lab host by the instance's own address.
    assert_eq!(fetch(&format!("http://{ip}/")).unwrap(), "hello-from-crx\n");
    crx(&lab, &["rm", "-f", "web"]);
    assert_no_leaks(&lab);
}

#[test]
fn lab_run_net_a_client_reaches_a_server_instance_by_address() {
    let lab = lab();
    crx(
        &lab,
        &["run", "-d", "--name", "srv", "busybox", "sh", "-c", SERVE],
    );
    let ip = address(&lab, "srv");
    fetch(&format!("http://{ip}/")).unwrap();
    let got = crx(
        &lab,
        &[
            "run",
            "--rm",
            "busybox",
            "wget",
            "-q",
            "-O",
            "-",
            &format!("http://{ip}/"),
        ],
    );
    assert_eq!(text(&got.stdout), "hello-from-crx\n");
    crx(&lab, &["rm", "-f", "srv"]);
    assert_no_leaks(&lab);
}

#[test]
fn lab_run_net_none_has_only_lo_and_bridge_has_eth0() {
    let lab = lab();
    // Loopback alone, up (a kernel's own tunnel devices such as `sit0` may be listed, down).
    let links = ["ip", "-o", "link", "show"];
    let none = crx(
        &lab,
        &[&["run", "--rm", "--network", "none", "busybox"][..], &links].concat(),
    );
    let said = text(&none.stdout);
    assert!(said.contains("lo: <LOOPBACK,UP"), "{said}");
    assert!(!said.contains("link/ether"), "{said}");
    let bridge = crx(&lab, &[&["run", "--rm", "busybox"][..], &links].concat());
    let said = text(&bridge.stdout);
    assert!(
        said.contains("eth0") && said.contains("link/ether"),
        "{said}"
    );
    let out = lab.run(
        CRX,
        &["run", "--rm", "--network", "none", "-p", "1:1", "busybox"],
    );
    assert_ne!(code(&out), 0);
    assert_no_leaks(&lab);
}

#[test]
fn lab_run_net_hostname_dns_and_add_host_are_seen_inside() {
    let lab = lab();
    let out = crx(
        &lab,
        &[
            "run",
            "--rm",
            "--hostname",
            "box1",
            "--dns",
            "10.66.0.53",
            "--add-host",
            "db.test:10.1.2.3",
            "busybox",
            "sh",
            "-c",
            "hostname; cat /etc/hostname; cat /etc/resolv.conf; cat /etc/hosts",
        ],
    );
    let t = text(&out.stdout);
    assert!(t.starts_with("box1\nbox1\n"), "{t}");
    assert!(t.contains("nameserver 10.66.0.53"), "{t}");
    assert!(t.contains("10.1.2.3\tdb.test"), "{t}");
    assert!(
        t.lines()
            .any(|l| l.starts_with(SUBNET_PREFIX) && l.ends_with("box1")),
        "{t}"
    );
    assert_no_leaks(&lab);
}

/// `kill -9` of a detached instance's monitor (its VMM dies with it), then `crx gc`.
#[test]
fn lab_run_net_gc_after_kill_9_leaves_nothing() {
    let lab = lab();
    crx(
        &lab,
        &[
            "run", "-d", "--name", "k9", "-p", "8082:80", "busybox", "sh", "-c", SERVE,
        ],
    );
    let ip = address(&lab, "k9");
    fetch(&format!("http://{ip}/")).unwrap();
    assert_ne!(leaks(&lab.root()), Leaks::default());
    let monitor = inspect(&lab, "k9")["state"]["monitor_pid"].as_u64();
    let vmm = inspect(&lab, "k9")["state"]["vmm_pid"].as_u64().unwrap();
    for pid in monitor.into_iter().chain([vmm]) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    // The VMM gone (the lab test is the subreaper of orphans: reap them).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while Path::new(&format!("/proc/{vmm}")).exists() && std::time::Instant::now() < deadline {
        let _ = nix::sys::wait::waitpid(None, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = lab
        .command(CRX, &["gc"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "gc: {}", text(&out.stderr));
    assert_no_leaks(&lab);
}

/// `-v` both ways: a host file read in the container, a container write seen on the host, and
/// a `:ro` volume refusing writes; nothing mounted is left.
#[test]
fn lab_run_net_volumes_both_ways_and_ro_refused() {
    let lab = lab();
    let vol = lab.dir.path().join("vol");
    std::fs::create_dir(&vol).unwrap();
    std::fs::write(vol.join("h.txt"), "from-host\n").unwrap();
    let rw = format!("{}:/data", vol.display());
    let ro = format!("{}:/ro:ro", vol.display());
    let out = crx(
        &lab,
        &[
            "run",
            "--rm",
            "-v",
            &rw,
            "-v",
            &ro,
            "busybox",
            "sh",
            "-c",
            "cat /data/h.txt; echo from-guest > /data/g.txt; \
             if echo x > /ro/y; then echo wrote-ro; else echo ro-refused; fi",
        ],
    );
    let t = text(&out.stdout);
    assert_eq!(t, "from-host\nro-refused\n", "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(vol.join("g.txt")).unwrap(),
        "from-guest\n"
    );
    assert!(!vol.join("y").exists());
    assert_no_leaks(&lab);
}
