//! containerd (Debian's package) running containers through its runc v2 shim with an OCI
//! runtime binary given by `ctr run --runc-binary`: the same scenario with `runc` (the
//! baseline, which proves the harness) and with `crx-runc` (every container in a microVM).
//! Inside the nested lab (tier 3): `cargo xtask lab -- target/debug/deps/lab_containerd-HASH lab_`.
//!
//! One containerd for the whole binary, on its own socket and directories; the image is the
//! offline busybox image as an OCI archive (`ctr image import`), no registry needed.
//! `ctr run --cni` uses go-cni's defaults (/etc/cni/net.d, /opt/cni/bin): the test writes a
//! bridge + host-local configuration there (and points /opt/cni/bin at Debian's /usr/lib/cni
//! where it is missing), removed afterwards.

mod tools;

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crx_testkit::containerd::Containerd;
use tools::{assert_ran_where_expected, busybox_archive, runtimes, text};

const IMAGE: &str = "docker.io/library/busybox:latest";

static CONTAINERD: OnceLock<Containerd> = OnceLock::new();
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The shared containerd (started on first use, busybox imported) and the one-test lock.
fn containerd() -> (&'static Containerd, MutexGuard<'static, ()>) {
    let guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let c = CONTAINERD.get_or_init(start_containerd);
    (c, guard)
}

fn start_containerd() -> Containerd {
    let c = Containerd::start("crx-containerd-", None);
    let t = tempfile::tempdir().unwrap();
    let archive = busybox_archive(t.path(), IMAGE);
    let out = ctr(
        &c,
        &["image", "import", "--no-unpack"],
        &[archive.to_str().unwrap()],
    );
    assert!(out.status.success(), "import: {}", text(&out.stderr));
    let out = ctr(&c, &["image", "ls", "-q"], &[]);
    assert!(text(&out.stdout).contains(IMAGE), "{}", text(&out.stdout));
    c
}

/// `ctr ARGS MORE` against `c` (bounded in time).
fn ctr(c: &Containerd, args: &[&str], more: &[&str]) -> Output {
    c.ctr(&[args, more].concat())
}

/// `ctr run --rm --runc-binary BIN IMAGE ID CMD...`
fn ctr_run(c: &Containerd, bin: &str, id: &str, cmd: &[&str]) -> Output {
    let mut args = vec!["run", "--rm", "--runc-binary", bin, IMAGE, id];
    args.extend_from_slice(cmd);
    ctr(c, &args, &[])
}

#[test]
fn lab_containerd_ctr_run_output_and_exit_code() {
    let (c, _g) = containerd();
    for (name, bin) in runtimes() {
        let out = ctr_run(
            c,
            &bin,
            &format!("run-{name}"),
            &["sh", "-c", "echo hello from $0; cat /proc/cmdline; exit 3"],
        );
        assert_eq!(out.status.code(), Some(3), "{name}: {}", text(&out.stderr));
        assert!(
            text(&out.stdout).contains("hello from sh"),
            "{name}: {}",
            text(&out.stdout)
        );
        assert_ran_where_expected(name, &text(&out.stdout));
    }
}

#[test]
fn lab_containerd_task_exec_and_kill() {
    let (c, _g) = containerd();
    for (name, bin) in runtimes() {
        let id = format!("bg-{name}");
        let mut run = Command::new("ctr")
            .arg("--address")
            .arg(&c.address)
            .args([
                "run",
                "--rm",
                "--runc-binary",
                &bin,
                IMAGE,
                &id,
                "sleep",
                "600",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let ls = ctr(c, &["task", "ls"], &[]);
            let listing = text(&ls.stdout);
            if listing
                .lines()
                .any(|l| l.starts_with(&id) && l.contains("RUNNING"))
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: task never ran: {listing}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let exec = ctr(
            c,
            &["task", "exec", "--exec-id", "e1", &id],
            &["sh", "-c", "echo in-$0; exit 5"],
        );
        assert_eq!(
            exec.status.code(),
            Some(5),
            "{name}: {}",
            text(&exec.stderr)
        );
        assert!(
            text(&exec.stdout).contains("in-sh"),
            "{name}: {}",
            text(&exec.stdout)
        );

        let kill = ctr(c, &["task", "kill", "--signal", "SIGKILL", &id], &[]);
        assert!(kill.status.success(), "{name}: {}", text(&kill.stderr));
        let status = run.wait().unwrap();
        assert_eq!(
            status.code(),
            Some(137),
            "{name}: ctr run after SIGKILL: {status}"
        );
        let ls = ctr(c, &["container", "ls", "-q"], &[]);
        assert!(
            !text(&ls.stdout).contains(&id),
            "{name}: container left behind"
        );
    }
}

/// The CNI network of the `--cni` test: Debian's bridge + host-local, with the lab host's
/// end (the bridge, holding the gateway address) made first so that a listener can bind to it.
const CNI_NET: &str = "crx-ctr";
const CNI_BRIDGE: &str = "crxctr0";
const CNI_GATEWAY: &str = "10.88.78.1";
const CNI_SUBNET: &str = "10.88.78.0/24";
/// Where containerd 1.6's `ctr run --cni` (go-cni's defaults) looks for configurations and
/// plugins; Debian installs the plugins in /usr/lib/cni.
const CNI_CONF_DIR: &str = "/etc/cni/net.d";
const CNI_BIN_DIR: &str = "/opt/cni/bin";
const DEBIAN_CNI_BIN_DIR: &str = "/usr/lib/cni";
/// Sorted first in the configuration directory: go-cni's default network is the first file.
const CNI_CONF_FILE: &str = "00-crx-ctr-test.conflist";

/// What the `--cni` test adds to the lab host (its root is disposable, but tidy anyway): the
/// configuration, `/opt/cni/bin` pointing at Debian's plugins where it was missing, and the
/// bridge; all removed when dropped.
struct CniSetup {
    ipam: tempfile::TempDir,
    made_conf_dir: bool,
    made_bin_link: bool,
}

impl CniSetup {
    fn new() -> CniSetup {
        let _ = Command::new("ip")
            .args(["link", "del", CNI_BRIDGE])
            .output();
        let ipam = tempfile::Builder::new()
            .prefix("crx-ctr-ipam-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let mut s = CniSetup {
            ipam,
            made_conf_dir: false,
            made_bin_link: false,
        };
        if !std::path::Path::new(CNI_CONF_DIR).exists() {
            std::fs::create_dir_all(CNI_CONF_DIR).unwrap();
            s.made_conf_dir = true;
        }
        let conf = serde_json::json!({
            "cniVersion": "0.4.0",
            "name": CNI_NET,
            "plugins": [{
                "type": "bridge",
                "bridge": CNI_BRIDGE,
                "isGateway": true,
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": CNI_SUBNET, "gateway": CNI_GATEWAY}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": s.ipam.path(),
                }
            }]
        });
        std::fs::write(
            std::path::Path::new(CNI_CONF_DIR).join(CNI_CONF_FILE),
            conf.to_string(),
        )
        .unwrap();
        let bin = std::path::Path::new(CNI_BIN_DIR);
        if std::fs::symlink_metadata(bin).is_err() {
            std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(DEBIAN_CNI_BIN_DIR, bin).unwrap();
            s.made_bin_link = true;
        }
        for p in ["bridge", "host-local"] {
            assert!(
                bin.join(p).exists(),
                "{CNI_BIN_DIR}/{p} is missing (Debian package containernetworking-plugins)"
            );
        }
        for args in [
            &["link", "add", CNI_BRIDGE, "type", "bridge"][..],
            &[
                "addr",
                "add",
                &format!("{CNI_GATEWAY}/24"),
                "dev",
                CNI_BRIDGE,
            ],
            &["link", "set", CNI_BRIDGE, "up"],
        ] {
            let out = Command::new("ip").args(args).output().unwrap();
            assert!(out.status.success(), "ip {args:?}: {}", text(&out.stderr));
        }
        s
    }

    /// The address host-local leased to the container `id` (`CNI_CONTAINERID` is ctr's full
    /// id, `NAMESPACE-ID`), once it has one.
    fn lease_of(&self, id: &str) -> Option<String> {
        std::fs::read_dir(self.ipam.path().join(CNI_NET))
            .into_iter()
            .flatten()
            .flatten()
            .find(|e| {
                e.file_name()
                    .to_string_lossy()
                    .parse::<std::net::Ipv4Addr>()
                    .is_ok()
                    && std::fs::read_to_string(e.path()).is_ok_and(|t| t.contains(id))
            })
            .map(|e| e.file_name().to_string_lossy().into_owned())
    }

    /// What a container of this network may leave on the lab host, one line each: a lease, a
    /// veth on the bridge, an address of the subnet but the bridge's, a tap (in the host's
    /// namespace or a named one), a named namespace (besides `netns_before`), a crx-vmm.
    fn leftovers(&self, netns_before: &[String]) -> Vec<String> {
        let mut left = Vec::new();
        for e in std::fs::read_dir(self.ipam.path().join(CNI_NET))
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.parse::<std::net::Ipv4Addr>().is_ok() {
                left.push(format!("lease {name}"));
            }
        }
        let sh = |cmd: &str| {
            text(
                &Command::new("sh")
                    .args(["-c", cmd])
                    .output()
                    .unwrap()
                    .stdout,
            )
        };
        for l in sh(&format!("ip -o link show master {CNI_BRIDGE}")).lines() {
            left.push(format!("on the bridge: {l}"));
        }
        left.extend(stray_addresses());
        for l in sh("ip -o link; ip -all netns exec ip -o link 2>/dev/null").lines() {
            if l.contains("crxtap") {
                left.push(format!("tap: {l}"));
            }
        }
        for n in named_netns() {
            if !netns_before.contains(&n) {
                left.push(format!("netns {n}"));
            }
        }
        for l in sh("ps -eo pid,args").lines() {
            if l.contains("crx-vmm") {
                left.push(format!("process: {l}"));
            }
        }
        left
    }
}

impl Drop for CniSetup {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", CNI_BRIDGE])
            .output();
        let _ = std::fs::remove_file(std::path::Path::new(CNI_CONF_DIR).join(CNI_CONF_FILE));
        if self.made_conf_dir {
            let _ = std::fs::remove_dir(CNI_CONF_DIR);
            let _ = std::fs::remove_dir("/etc/cni");
        }
        if self.made_bin_link {
            let _ = std::fs::remove_file(CNI_BIN_DIR);
            let _ = std::fs::remove_dir("/opt/cni");
        }
    }
}

/// The subnet's addresses on the lab host but the gateway on the bridge, one line each.
fn stray_addresses() -> Vec<String> {
    let out = Command::new("ip")
        .args(["-o", "-4", "addr"])
        .output()
        .unwrap();
    text(&out.stdout)
        .lines()
        .filter(|l| l.contains("10.88.78.") && !l.contains(&format!("{CNI_BRIDGE} ")))
        .map(|l| format!("address: {l}"))
        .collect()
}

/// The named network namespaces (`/run/netns`).
fn named_netns() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// busybox httpd on the lab host serving `dir` at `addr`, killed when dropped.
struct HostHttpd(Child);

impl HostHttpd {
    fn start(addr: &str, dir: &std::path::Path) -> HostHttpd {
        let child = Command::new("/bin/busybox")
            .args(["httpd", "-f", "-p", addr, "-h"])
            .arg(dir)
            .spawn()
            .expect("/bin/busybox (Debian package busybox-static)");
        HostHttpd(child)
    }
}

impl Drop for HostHttpd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `ctr task ls` shows task `id` RUNNING (`ctr run` did CNI ADD before
/// starting it); the listing when it does not by `deadline`.
fn wait_running(c: &Containerd, id: &str, deadline: Instant) -> Result<(), String> {
    loop {
        let listing = text(&ctr(c, &["task", "ls"], &[]).stdout);
        if listing.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() == 3 && f[0] == id && f[2] == "RUNNING"
        }) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(listing);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `ctr run --rm --cni --runc-binary BIN IMAGE ID sh -c SCRIPT`, in the foreground (ctr does
/// CNI ADD in the task's `/proc/PID/ns/net` between create and start, and CNI DEL, task and
/// container delete when the task ends), its output in files.
struct CtrRunCni {
    child: Child,
    out: PathBuf,
    err: PathBuf,
}

impl CtrRunCni {
    fn spawn(c: &Containerd, dir: &std::path::Path, bin: &str, id: &str, script: &str) -> Self {
        let out = dir.join(format!("{id}.out"));
        let err = dir.join(format!("{id}.err"));
        let child = Command::new("ctr")
            .arg("--address")
            .arg(&c.address)
            .args([
                "run",
                "--rm",
                "--cni",
                "--runc-binary",
                bin,
                IMAGE,
                id,
                "sh",
                "-c",
                script,
            ])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap();
        CtrRunCni { child, out, err }
    }

    /// What ctr printed so far (the container's output, then ctr's own stderr).
    fn said(&self) -> String {
        format!(
            "ctr run said:\n{}\nstderr:\n{}",
            std::fs::read_to_string(&self.out).unwrap_or_default(),
            std::fs::read_to_string(&self.err).unwrap_or_default()
        )
    }

    /// Waits for ctr to exit, for at most `limit`.
    fn wait(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return Some(st);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Polls until nothing of the network is left on the lab host (CNI DEL and the task's end
/// may finish after ctr returns), for at most 30 s; what is still left.
fn wait_for_no_leftovers(cni: &CniSetup, netns_before: &[String]) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = cni.leftovers(netns_before);
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `ctr run --cni` (foreground, `--rm`) on a bridge + host-local network, with runc: the
/// container fetches from a listener of the lab host on the bridge's gateway address, and the
/// lab host fetches from the container's server at the address host-local leased to it; after
/// `ctr task kill` (then ctr's own CNI DEL, task and container delete): no lease, no veth on
/// the bridge, no stray address, no named namespace left.
///
/// With crx-runc the same holds: ctr adds CNI's interface to the task's namespace (the
/// monitor's fresh one, never the lab host's) after create, and the VM, booted at start
/// (ADR 0022), joins it. Nothing of CNI's lands on the lab host's namespace (before the
/// monitor had a namespace of its own, `/proc/PID/ns/net` was the host's: CNI put `eth0` and
/// a default route on the host).
#[test]
fn lab_containerd_ctr_run_cni_both_ways() {
    let (c, _g) = containerd();
    let cni = CniSetup::new();
    let served = tempfile::tempdir().unwrap();
    std::fs::write(served.path().join("f"), "from the host\n").unwrap();
    let _httpd = HostHttpd::start(&format!("{CNI_GATEWAY}:8002"), served.path());
    let netns_before = named_netns();
    let script = format!(
        "ip -o addr show; ip route; i=0; \
         until wget -q -O - http://{CNI_GATEWAY}:8002/f; do \
           i=$((i+1)); [ $i -ge 60 ] && echo host unreachable && break; sleep 1; done; \
         mkdir -p /w && echo from-the-container > /w/hello && exec httpd -f -p 80 -h /w"
    );
    for (name, bin) in runtimes() {
        let started = Instant::now();
        let id = format!("cni-{name}");
        let mut run = CtrRunCni::spawn(c, cni.ipam.path(), &bin, &id, &script);
        both_ways(c, &cni, &mut run, name, &id);
        let stray = stray_addresses();
        assert!(stray.is_empty(), "{name}: on the lab host: {stray:?}");
        let ls = ctr(c, &["container", "ls", "-q"], &[]);
        assert!(!text(&ls.stdout).contains(&id), "{name}: container left");
        let left = wait_for_no_leftovers(&cni, &netns_before);
        assert!(left.is_empty(), "{name}: left behind: {left:#?}");
        eprintln!("{name}: ctr run --cni in {:?}", started.elapsed());
    }
}

/// The container of `run` reaches the host and the host the container, over CNI's network;
/// then its task is killed and `ctr run` ends (137).
fn both_ways(c: &Containerd, cni: &CniSetup, run: &mut CtrRunCni, name: &str, id: &str) {
    wait_running(c, id, Instant::now() + Duration::from_secs(120))
        .unwrap_or_else(|l| panic!("{name}: task never ran: {l}\n{}", run.said()));
    let ip = cni
        .lease_of(&format!("default-{id}"))
        .unwrap_or_else(|| panic!("{name}: no lease in {:?}\n{}", cni.ipam, run.said()));
    let got = crx_testkit::net::fetch(&format!("http://{ip}/hello"));
    assert_eq!(
        got.as_deref(),
        Ok("from-the-container\n"),
        "{name}: fetching from {ip}\n{}",
        run.said()
    );
    // The container printed what it fetched before it served (the shim copies its output to
    // ctr's asynchronously).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !run.said().contains("from the host") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let said = run.said();
    assert!(said.contains("from the host"), "{name}: {said}");
    assert!(said.contains(&format!("inet {ip}/24")), "{name}: {said}");
    assert!(
        said.contains(&format!("default via {CNI_GATEWAY}")),
        "{name}: {said}"
    );
    let kill = ctr(c, &["task", "kill", "--signal", "SIGKILL", id], &[]);
    assert!(kill.status.success(), "{name}: {}", text(&kill.stderr));
    let status = run.wait(Duration::from_secs(60));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(137),
        "{name}: {status:?}\n{}",
        run.said()
    );
}
