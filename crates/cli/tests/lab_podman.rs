//! podman (Debian's package) running containers with `--runtime BIN`: the same scenarios with
//! `runc` (the baseline, which proves the harness) and with `crx-runc` (every container in a
//! microVM). Inside the nested lab (tier 3):
//! `cargo xtask lab -- target/debug/deps/lab_podman-HASH lab_`.
//!
//! podman runs with its own storage root, cgroupfs (the lab has no systemd) and file events;
//! the image is the offline busybox image loaded from an OCI archive. Networks are podman's
//! own (CNI: the bridge, portmap and firewall plugins of Debian's containernetworking-plugins):
//! a port published on the lab host, two containers on one network, `none` and `host`; after
//! each, nothing of crx-runc's is left (no tap, no tc redirect, no namespace).

mod tools;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crx_testkit::net::fetch;
use crx_testkit::output_within;
use tools::{assert_ran_where_expected, busybox_archive, runtimes, text};

const IMAGE: &str = "localhost/busybox:latest";
/// The longest one podman command may take in the lab (they take 2 to 60 s): a hang fails its
/// test with `ps` and the sandboxes' logs, not the whole binary at the lab's limit.
const PODMAN_LIMIT: Duration = Duration::from_secs(240);

struct Podman {
    root: PathBuf,
    runroot: PathBuf,
    dir: tempfile::TempDir,
}

static PODMAN: OnceLock<Podman> = OnceLock::new();
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn podman_env() -> (&'static Podman, MutexGuard<'static, ()>) {
    let guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let p = PODMAN.get_or_init(|| {
        // Under /var (the lab's ext4 root): overlay storage needs a filesystem that has it.
        let dir = tempfile::Builder::new()
            .prefix("crx-podman-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let p = Podman {
            root: dir.path().join("root"),
            runroot: dir.path().join("run"),
            dir,
        };
        load_busybox(&p);
        p
    });
    (p, guard)
}

fn load_busybox(p: &Podman) {
    let archive = busybox_archive(p.dir.path(), IMAGE);
    let out = podman(p, "runc", &["load", "-i"], &[archive.to_str().unwrap()]);
    assert!(out.status.success(), "load: {}", text(&out.stderr));
    let out = podman(
        p,
        "runc",
        &["images", "--format", "{{.Repository}}:{{.Tag}}"],
        &[],
    );
    assert!(
        text(&out.stdout).contains("busybox"),
        "{}",
        text(&out.stdout)
    );
}

fn podman_cmd(p: &Podman, runtime: &str) -> Command {
    let mut c = Command::new("podman");
    c.arg("--root")
        .arg(&p.root)
        .arg("--runroot")
        .arg(&p.runroot)
        .args(["--runtime", runtime])
        .args(["--cgroup-manager", "cgroupfs", "--events-backend", "file"])
        .args(["--storage-driver", "overlay"])
        // What podman waits on, should a command hang (output_within reports it).
        .args(["--log-level", "debug"]);
    c
}

fn podman(p: &Podman, runtime: &str, args: &[&str], more: &[&str]) -> Output {
    within(p, podman_cmd(p, runtime).args(args).args(more))
}

/// `cmd` run to its end within [`PODMAN_LIMIT`]; a hang reports crx-runc's and podman's logs.
fn within(p: &Podman, cmd: &mut Command) -> Output {
    let logs = [Path::new(crx::oci::DEFAULT_ROOT), &p.runroot];
    output_within(cmd, PODMAN_LIMIT, &logs)
}

#[test]
fn lab_podman_run_rm_output_and_exit_code() {
    let (p, _g) = podman_env();
    for (name, rt) in runtimes() {
        let out = podman(
            p,
            &rt,
            &["run", "--rm", "--network", "none", IMAGE],
            &[
                "sh",
                "-c",
                "echo out-$0; echo err-$0 >&2; cat /proc/cmdline; exit 4",
            ],
        );
        assert_eq!(out.status.code(), Some(4), "{name}: {}", text(&out.stderr));
        assert!(
            text(&out.stdout).contains("out-sh"),
            "{name}: {}",
            text(&out.stdout)
        );
        assert!(
            text(&out.stderr).contains("err-sh"),
            "{name}: {}",
            text(&out.stderr)
        );
        assert_ran_where_expected(name, &text(&out.stdout));
    }
}

#[test]
fn lab_podman_it_gives_a_terminal() {
    let (p, _g) = podman_env();
    for (name, rt) in runtimes() {
        // `script` gives podman a terminal on its stdin/stdout, as a user's shell would.
        let mut inner = podman_cmd(p, &rt);
        inner.args(["run", "--rm", "-it", "--network", "none", IMAGE, "sh", "-c"]);
        // The second's pause is podman's: `run -it` can lose what a container writes before
        // its attach is wired (containers/podman#9859), seen here with runc too.
        inner.arg("sleep 1; tty; exit 6");
        let line = std::iter::once(inner.get_program())
            .chain(inner.get_args())
            .map(|a| shell_quote(&a.to_string_lossy()))
            .collect::<Vec<_>>()
            .join(" ");
        let out = within(p, Command::new("script").args(["-qec", &line, "/dev/null"]));
        assert_eq!(
            out.status.code(),
            Some(6),
            "{name}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        assert!(
            text(&out.stdout).contains("/dev/pts/"),
            "{name}: {}",
            text(&out.stdout)
        );
    }
}

#[test]
fn lab_podman_exec_volume_and_stop() {
    let (p, _g) = podman_env();
    for (name, rt) in runtimes() {
        let vol = tempfile::tempdir_in("/var/tmp").unwrap();
        std::fs::write(vol.path().join("from-host"), "host data\n").unwrap();
        let cname = format!("stop-{name}");
        let out = podman(
            p,
            &rt,
            &["run", "-d", "--name", &cname, "--network", "none"],
            &[
                "-v",
                &format!("{}:/data", vol.path().display()),
                IMAGE,
                "sleep",
                "600",
            ],
        );
        assert!(
            out.status.success(),
            "{name}: run -d: {}",
            text(&out.stderr)
        );

        let exec = podman(
            p,
            &rt,
            &["exec", &cname],
            &[
                "sh",
                "-c",
                "cat /data/from-host; echo guest data > /data/from-guest; exit 2",
            ],
        );
        assert_eq!(
            exec.status.code(),
            Some(2),
            "{name}: {}",
            text(&exec.stderr)
        );
        assert!(
            text(&exec.stdout).contains("host data"),
            "{name}: {}",
            text(&exec.stdout)
        );
        assert_eq!(
            std::fs::read_to_string(vol.path().join("from-guest")).unwrap_or_default(),
            "guest data\n",
            "{name}: a write in the container must reach the host directory"
        );

        let started = Instant::now();
        let stop = podman(p, &rt, &["stop", "-t", "2", &cname], &[]);
        assert!(
            stop.status.success(),
            "{name}: stop: {}",
            text(&stop.stderr)
        );
        assert!(started.elapsed() < Duration::from_secs(120));
        let state = podman(
            p,
            &rt,
            &["inspect", "--format", "{{.State.Status}}", &cname],
            &[],
        );
        assert_eq!(text(&state.stdout).trim(), "exited", "{name}");
        let rm = podman(p, &rt, &["rm", &cname], &[]);
        assert!(rm.status.success(), "{name}: rm: {}", text(&rm.stderr));
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// `ip`/`tc` ARGS in the named network namespace `ns` (None: the lab host's): stdout.
fn in_ns(ns: Option<&str>, cmd: &str, args: &[&str]) -> String {
    let mut c = Command::new(cmd);
    if let Some(n) = ns {
        c.args(["-n", n]);
    }
    text(&c.args(args).output().unwrap().stdout)
}

/// What crx-runc may leave in network namespaces, in the lab host's and in every named one:
/// taps named `crxtap*`, tc filters with a `mirred` action, and podman's namespaces.
fn network_leftovers() -> Vec<String> {
    let list = in_ns(None, "ip", &["netns", "list"]);
    let named: Vec<&str> = list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let mut left: Vec<String> = named.iter().map(|n| format!("namespace {n}")).collect();
    for ns in std::iter::once(None).chain(named.iter().copied().map(Some)) {
        for l in in_ns(ns, "ip", &["-o", "link"]).lines() {
            // `2: eth0@if5: <...` -> eth0
            let name = l.split(':').nth(1).unwrap_or("").trim();
            let name = name.split('@').next().unwrap_or("");
            if name.starts_with("crxtap") {
                left.push(format!("{ns:?}: tap {name}"));
            }
            let filters = in_ns(ns, "tc", &["filter", "show", "dev", name, "ingress"]);
            if filters.contains("mirred") {
                left.push(format!("{ns:?}: redirect on {name}"));
            }
        }
    }
    left
}

/// `podman run -d -p 8080:80` of busybox httpd: the lab host fetches a file on 127.0.0.1:8080
/// (podman's CNI portmap DNAT to the container's address, the tc redirect to the VM).
#[test]
fn lab_podman_publish_serves_a_file() {
    let (p, _g) = podman_env();
    for (name, rt) in runtimes() {
        let www = tempfile::tempdir_in("/var/tmp").unwrap();
        std::fs::write(www.path().join("hello.txt"), format!("served by {name}\n")).unwrap();
        let cname = format!("web-{name}");
        let out = podman(
            p,
            &rt,
            &["run", "-d", "--name", &cname, "-p", "8080:80"],
            &[
                "-v",
                &format!("{}:/www:ro", www.path().display()),
                IMAGE,
                "httpd",
                "-f",
                "-p",
                "80",
                "-h",
                "/www",
            ],
        );
        assert!(
            out.status.success(),
            "{name}: run -d: {}",
            text(&out.stderr)
        );
        let got = fetch("http://127.0.0.1:8080/hello.txt");
        let logs = podman(p, &rt, &["logs", &cname], &[]);
        let rm = podman(p, &rt, &["rm", "-f", &cname], &[]);
        assert_eq!(
            got,
            Ok(format!("served by {name}\n")),
            "{name}: logs: {}{}",
            text(&logs.stdout),
            text(&logs.stderr)
        );
        assert!(rm.status.success(), "{name}: rm: {}", text(&rm.stderr));
        assert_eq!(network_leftovers(), Vec::<String>::new(), "{name}");
    }
}

/// Two containers on one podman network: a client reaches a server by its address.
#[test]
fn lab_podman_two_containers_on_a_network() {
    let (p, _g) = podman_env();
    let net = "crxtest";
    let _ = podman(p, "runc", &["network", "rm", "-f", net], &[]);
    let out = podman(p, "runc", &["network", "create", net], &[]);
    assert!(
        out.status.success(),
        "network create: {}",
        text(&out.stderr)
    );
    for (name, rt) in runtimes() {
        let www = tempfile::tempdir_in("/var/tmp").unwrap();
        std::fs::write(www.path().join("hello.txt"), "next door\n").unwrap();
        let server = format!("srv-{name}");
        let out = podman(
            p,
            &rt,
            &["run", "-d", "--name", &server, "--network", net],
            &[
                "-v",
                &format!("{}:/www:ro", www.path().display()),
                IMAGE,
                "httpd",
                "-f",
                "-p",
                "80",
                "-h",
                "/www",
            ],
        );
        assert!(
            out.status.success(),
            "{name}: server: {}",
            text(&out.stderr)
        );
        let format = format!("{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}");
        let ip = podman(p, &rt, &["inspect", "--format", &format, &server], &[]);
        let ip = text(&ip.stdout).trim().to_owned();
        assert!(
            ip.parse::<std::net::Ipv4Addr>().is_ok(),
            "{name}: address {ip:?}"
        );
        let client = format!(
            "for i in $(seq 60); do wget -q -O - http://{ip}/hello.txt && exit 0; \
             sleep 1; done; ip addr; exit 1"
        );
        let out = podman(
            p,
            &rt,
            &["run", "--rm", "--network", net, IMAGE],
            &["sh", "-c", &client],
        );
        let rm = podman(p, &rt, &["rm", "-f", &server], &[]);
        assert_eq!(
            (out.status.code(), text(&out.stdout)),
            (Some(0), "next door\n".to_owned()),
            "{name}: client: {}",
            text(&out.stderr)
        );
        assert!(rm.status.success(), "{name}: rm: {}", text(&rm.stderr));
        assert_eq!(network_leftovers(), Vec::<String>::new(), "{name}");
    }
    let out = podman(p, "runc", &["network", "rm", net], &[]);
    assert!(out.status.success(), "network rm: {}", text(&out.stderr));
}

/// `--network none`: loopback alone (no Ethernet interface).
#[test]
fn lab_podman_network_none_is_loopback_only() {
    let (p, _g) = podman_env();
    for (name, rt) in runtimes() {
        let out = podman(
            p,
            &rt,
            &["run", "--rm", "--network", "none", IMAGE],
            &["ip", "-o", "link", "show"],
        );
        let said = text(&out.stdout);
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
        assert!(said.contains("lo: <LOOPBACK,UP"), "{name}: {said}");
        assert!(!said.contains("link/ether"), "{name}: {said}");
        assert_eq!(network_leftovers(), Vec::<String>::new(), "{name}");
    }
}

/// `--network host`: runc shares the lab host's stack; crx-runc refuses, saying why.
#[test]
fn lab_podman_network_host_is_refused_with_the_reason() {
    let (p, _g) = podman_env();
    for (name, rt) in runtimes() {
        let out = podman(
            p,
            &rt,
            &["run", "--rm", "--network", "host", IMAGE],
            &["true"],
        );
        if name == "runc" {
            assert!(out.status.success(), "runc: {}", text(&out.stderr));
            continue;
        }
        assert!(!out.status.success(), "{name} ran with the host's network");
        assert!(
            text(&out.stderr).contains("a VM cannot share the host's network stack"),
            "{name}: {}",
            text(&out.stderr)
        );
        let _ = podman(p, &rt, &["rm", "-a", "-f"], &[]);
    }
}

/// podman's `/etc/hosts`, `/etc/resolv.conf` and `/etc/hostname` (single-file bind mounts)
/// reach the container: `--hostname`, `--add-host` and `--dns` show in them as with runc.
#[test]
fn lab_podman_hosts_resolv_conf_and_hostname() {
    let (p, _g) = podman_env();
    for (name, rt) in runtimes() {
        let out = podman(
            p,
            &rt,
            &["run", "--rm", "--hostname", "crxhost"],
            &[
                "--add-host",
                "crxpeer:192.0.2.7",
                "--dns",
                "192.0.2.53",
                IMAGE,
                "sh",
                "-c",
                "hostname; cat /etc/hostname; echo; cat /etc/hosts /etc/resolv.conf",
            ],
        );
        let said = text(&out.stdout);
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
        let lines: Vec<&str> = said.lines().collect();
        assert_eq!(lines.first(), Some(&"crxhost"), "{name}: {said}");
        assert_eq!(
            lines.get(1),
            Some(&"crxhost"),
            "{name}: /etc/hostname: {said}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["192.0.2.7", "crxpeer"]),
            "{name}: /etc/hosts: {said}"
        );
        assert!(
            lines.iter().any(|l| l.trim() == "nameserver 192.0.2.53"),
            "{name}: /etc/resolv.conf: {said}"
        );
        assert_eq!(network_leftovers(), Vec::<String>::new(), "{name}");
    }
}
