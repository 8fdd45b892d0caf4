//! virtio-fs end to end, in the nested lab: virtiofsd (built by `cargo xtask virtiofsd`) shares
//! a host directory, crx-vmm boots the guest kernel with a busybox `/init` that mounts the tag.
//!
//! Run inside the lab (`target/debug/xtask lab -- target/debug/deps/lab_virtiofs-HASH lab_
//! --test-threads 1`). A missing kernel, `/dev/kvm`, busybox or virtiofsd is a failure, never a
//! skip. One VM at a time (a lock): the lab has two slow emulated cores.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crx_testkit::vm::value;
use crx_testkit::{busybox, env};

const TIMEOUT: Duration = Duration::from_secs(180);

/// `$CRX_VIRTIOFSD`, else the cache entry `cargo xtask virtiofsd` publishes.
fn virtiofsd() -> PathBuf {
    if let Some(p) = std::env::var_os("CRX_VIRTIOFSD") {
        return p.into();
    }
    let cache = std::env::var_os("CRX_CACHE").unwrap_or_else(|| "/var/cache/crx".into());
    let p = Path::new(&cache).join("virtiofsd-1.14.0/bin/virtiofsd");
    assert!(
        p.is_file(),
        "{} is missing: run `cargo xtask virtiofsd` on the host first",
        p.display()
    );
    p
}

/// What each thread of process `pid` is doing: its state, the system call it waits in
/// (`/proc/PID/task/TID/syscall`: number, arguments), and its kernel stack where the kernel
/// shows one. Printed before a stuck process is killed, to tell where it hung.
fn proc_state(what: &str, pid: u32) -> String {
    let mut s = format!("--- {what} (pid {pid}) threads ---\n");
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        s.push_str("(gone)\n");
        return s;
    };
    for task in tasks.flatten() {
        let t = task.path();
        let read = |f: &str| std::fs::read_to_string(t.join(f)).unwrap_or_default();
        let stat = read("stat");
        let state = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split(' ').next())
            .unwrap_or("?");
        s.push_str(&format!(
            "{} {} state {state} syscall {}\n",
            task.file_name().to_string_lossy(),
            read("comm").trim(),
            read("syscall").trim()
        ));
        for frame in read("stack").lines() {
            s.push_str(&format!("    {frame}\n"));
        }
    }
    s
}

/// Kills `child` and reaps it, giving up after 10 s: a process stuck in the kernel does not
/// die of SIGKILL, and waiting for it would hang the test past all its time limits. Returns
/// the process's state if it did not die.
fn kill_bounded(child: &mut Child, what: &str) -> Option<String> {
    if let Ok(Some(_)) = child.try_wait() {
        return None;
    }
    let _ = child.kill();
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if let Ok(Some(_)) = child.try_wait() {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(format!(
        "{what} did not die within 10 s of SIGKILL (left behind):\n{}",
        proc_state(what, child.id())
    ))
}

/// A virtiofsd serving `dir` on `socket`, killed when dropped.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn spawn(dir: &Path, socket: &Path, cache: &str, readonly: bool, log: PathBuf) -> Daemon {
        let mut cmd = Command::new(virtiofsd());
        cmd.arg("--socket-path")
            .arg(socket)
            .arg("--shared-dir")
            .arg(dir)
            .arg(format!("--cache={cache}"))
            .args(["--sandbox", "none"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        if readonly {
            cmd.arg("--readonly");
        }
        let mut child = cmd.spawn().expect("spawning virtiofsd");
        let end = Instant::now() + Duration::from_secs(20);
        while !socket.exists() {
            if let Some(st) = child.try_wait().unwrap() {
                panic!(
                    "virtiofsd exited {st}: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(Instant::now() < end, "virtiofsd made no socket in 20 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        Daemon { child, log }
    }
}

impl Daemon {
    /// Its threads' state and its log.
    fn diagnose(&self) -> String {
        format!(
            "{}--- virtiofsd log {} ---\n{}",
            proc_state("virtiofsd", self.child.id()),
            self.log.display(),
            std::fs::read_to_string(&self.log).unwrap_or_default()
        )
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(stuck) = kill_bounded(&mut self.child, "virtiofsd") {
            eprintln!("{stuck}");
        }
    }
}

/// busybox plus an `/init` that mounts the basics, runs `body` and reboots.
fn initrd(dir: &Path, body: &str) -> PathBuf {
    let script = busybox::init_script(&["proc", "sys", "dev"], body);
    busybox::init_initrd(dir, &["/proc", "/sys", "/dev", "/tmp", "/mnt"], &script)
}

/// crx-vmm with the console in a file (the testkit's [`crx_testkit::vm::Vm`]), diagnosed
/// when late with the state of its threads and of the shares' daemons.
struct Vm(crx_testkit::vm::Vm);

impl Vm {
    fn spawn(dir: &Path, initrd: &Path, fs: &[(&str, &Path)]) -> Vm {
        let kernel = env::guest_kernel("vmlinux");
        let mut args: Vec<std::ffi::OsString> = vec![
            "--memory-mib".into(),
            "256".into(),
            "--kernel".into(),
            kernel.into(),
            "--initrd".into(),
            initrd.into(),
        ];
        for (tag, socket) in fs {
            args.push("--fs".into());
            args.push(format!("{tag}={}", socket.display()).into());
        }
        let vmm = Path::new(env!("CARGO_BIN_EXE_crx-vmm"));
        Vm(crx_testkit::vm::Vm::spawn_vmm(vmm, dir, "vm", args))
    }

    fn console(&self) -> String {
        self.0.console_text()
    }

    fn logs(&self) -> String {
        self.0.logs()
    }

    /// Everything known about a VM that is late: console, stderr, and what each thread of
    /// crx-vmm and of `daemons` waits in (taken while they still run).
    fn stuck(&mut self, daemons: &[&Daemon]) -> String {
        let mut s = format!(
            "after {:?}:\n{}\n{}",
            self.0.spawned.elapsed(),
            self.logs(),
            proc_state("crx-vmm", self.0.child.id())
        );
        for d in daemons {
            s.push_str(&d.diagnose());
        }
        if let Some(left) = kill_bounded(&mut self.0.child, "crx-vmm") {
            s.push_str(&left);
        }
        s
    }

    /// Waits (bounded) for crx-vmm to exit.
    fn wait(&mut self, timeout: Duration, daemons: &[&Daemon]) -> ExitStatus {
        let end = Instant::now() + timeout;
        loop {
            if let Some(st) = self.0.child.try_wait().unwrap() {
                eprintln!("VM exited {st} after {:?}", self.0.spawned.elapsed());
                return st;
            }
            if Instant::now() > end {
                panic!(
                    "crx-vmm still running after {timeout:?}\n{}",
                    self.stuck(daemons)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (bounded) for `needle` on the guest's console.
    fn wait_console(&mut self, needle: &str, daemons: &[&Daemon]) {
        let end = Instant::now() + TIMEOUT;
        while !self.console().contains(needle) {
            if let Some(st) = self.0.child.try_wait().unwrap() {
                panic!("crx-vmm exited ({st}) before {needle:?}\n{}", self.logs());
            }
            if Instant::now() > end {
                panic!("{needle:?} not on the console {}", self.stuck(daemons));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Some(stuck) = kill_bounded(&mut self.0.child, "crx-vmm") {
            eprintln!("{stuck}");
        }
    }
}

const GUEST_BODY: &str = r#"
mkdir -p /mnt/rw /mnt/ro
mount -t virtiofs rwfs /mnt/rw || echo MOUNT-RW-FAILED
mount -t virtiofs rofs /mnt/ro || echo MOUNT-RO-FAILED
echo "HOST-SAYS=$(cat /mnt/rw/from-host.txt)"
echo guest-wrote-this > /mnt/rw/from-guest.txt
echo GUEST-WROTE
ls /mnt/rw/late.txt 2>/dev/null && echo LATE-TOO-EARLY
echo GUEST-POLLING
i=0
while [ ! -f /mnt/rw/late.txt ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done
echo "LATE=$(cat /mnt/rw/late.txt) polls=$i"
echo "RO-READ=$(cat /mnt/ro/ro.txt)"
if echo x > /mnt/ro/new.txt; then echo RO-WRITE=succeeded; else echo RO-WRITE=refused; fi
if rm /mnt/ro/ro.txt; then echo RO-RM=succeeded; else echo RO-RM=refused; fi
t0=$(cut -d' ' -f1 /proc/uptime)
dd if=/dev/zero of=/mnt/rw/big bs=1M count=16 conv=fsync 2>/dev/null || echo DD-WRITE-FAILED
t1=$(cut -d' ' -f1 /proc/uptime)
dd if=/mnt/rw/big of=/dev/null bs=1M 2>/dev/null || echo DD-READ-FAILED
t2=$(cut -d' ' -f1 /proc/uptime)
dd if=/mnt/rw/big of=/dev/null bs=1M 2>/dev/null || echo DD-READ-FAILED
t3=$(cut -d' ' -f1 /proc/uptime)
for f in $(seq 1 100); do echo $f > /mnt/rw/small.$f; done
t4=$(cut -d' ' -f1 /proc/uptime)
echo "TIMES=$t0 $t1 $t2 $t3 $t4"
umount /mnt/rw
umount /mnt/ro
"#;

fn secs(s: &str) -> f64 {
    s.parse().unwrap_or(f64::NAN)
}

/// Both directions, live, with a read-only share beside it; prints the measured times.
fn shares_live(cache: &str) {
    let _one = crx_testkit::one_vm();
    let tmp = tempfile::tempdir().unwrap();
    let (rw, ro) = (tmp.path().join("rw"), tmp.path().join("ro"));
    std::fs::create_dir(&rw).unwrap();
    std::fs::create_dir(&ro).unwrap();
    std::fs::write(rw.join("from-host.txt"), "hello-from-host\n").unwrap();
    std::fs::write(ro.join("ro.txt"), "read-only-content\n").unwrap();
    let (rw_sock, ro_sock) = (tmp.path().join("rw.sock"), tmp.path().join("ro.sock"));
    let d1 = Daemon::spawn(&rw, &rw_sock, cache, false, tmp.path().join("rw.log"));
    let d2 = Daemon::spawn(&ro, &ro_sock, cache, true, tmp.path().join("ro.log"));
    let daemons = [&d1, &d2];
    let initrd = initrd(tmp.path(), GUEST_BODY);
    let mut vm = Vm::spawn(
        tmp.path(),
        &initrd,
        &[("rwfs", &rw_sock), ("rofs", &ro_sock)],
    );
    vm.wait_console("GUEST-WROTE", &daemons);
    // The guest's write is on the host while the VM runs.
    assert_eq!(
        std::fs::read_to_string(rw.join("from-guest.txt")).unwrap_or_default(),
        "guest-wrote-this\n",
        "{}",
        vm.logs()
    );
    // A file the host writes now shows up in the running guest, which has already looked it
    // up (and failed) and is polling for it.
    vm.wait_console("GUEST-POLLING", &daemons);
    std::thread::sleep(Duration::from_millis(300));
    let written = Instant::now();
    std::fs::write(rw.join("late.txt"), "host-late\n").unwrap();
    vm.wait_console("LATE=", &daemons);
    let seen = written.elapsed();
    let st = vm.wait(TIMEOUT, &daemons);
    let out = vm.console();
    eprintln!("{out}");
    assert_eq!(st.code(), Some(0), "{}", vm.logs());
    assert!(!out.contains("MOUNT-"), "a mount failed\n{out}");
    assert_eq!(value(&out, "HOST-SAYS="), Some("hello-from-host"), "{out}");
    assert!(!out.contains("LATE-TOO-EARLY"), "{out}");
    let polls: u32 = value(&out, "LATE=host-late polls=")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("the guest never saw the host's late write\n{out}"));
    assert!(
        polls > 0,
        "the guest found the file before the host wrote it\n{out}"
    );
    assert_eq!(value(&out, "RO-READ="), Some("read-only-content"), "{out}");
    assert_eq!(value(&out, "RO-WRITE="), Some("refused"), "{out}");
    assert_eq!(value(&out, "RO-RM="), Some("refused"), "{out}");
    assert!(!ro.join("new.txt").exists());
    assert!(ro.join("ro.txt").exists());
    assert!(!out.contains("DD-"), "{out}");
    assert_eq!(std::fs::metadata(rw.join("big")).unwrap().len(), 16 << 20);
    assert_eq!(
        std::fs::read_to_string(rw.join("small.100")).unwrap(),
        "100\n"
    );
    let t: Vec<f64> = value(&out, "TIMES=")
        .expect("TIMES")
        .split(' ')
        .map(secs)
        .collect();
    eprintln!(
        "virtio-fs cache={cache}: host write seen by the guest after {:?}; \
         16 MiB write+fsync {:.2} s, read {:.2} s, read again {:.2} s, 100 small files {:.2} s",
        seen,
        t[1] - t[0],
        t[2] - t[1],
        t[3] - t[2],
        t[4] - t[3]
    );
}

#[test]
fn lab_virtiofs_shares_live_both_ways_cache_auto() {
    shares_live("auto");
}

#[test]
fn lab_virtiofs_shares_live_both_ways_cache_never() {
    shares_live("never");
}

/// A backend killed under a mounted share: the guest's access blocks, but the VMM neither
/// hangs nor panics: it still stops cleanly on SIGTERM.
#[test]
fn lab_virtiofs_backend_killed_vmm_still_stops() {
    let _one = crx_testkit::one_vm();
    let tmp = tempfile::tempdir().unwrap();
    let shared = tmp.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("f"), "x\n").unwrap();
    let sock = tmp.path().join("fs.sock");
    let mut daemon = Daemon::spawn(&shared, &sock, "never", false, tmp.path().join("d.log"));
    let body = "mkdir -p /mnt/s\nmount -t virtiofs s /mnt/s && echo \"MOUNTED=$(cat /mnt/s/f)\"\n\
                while [ ! -e /dev/null.stop ]; do sleep 1; cat /mnt/s/f >/dev/null & done";
    let initrd = initrd(tmp.path(), body);
    let mut vm = Vm::spawn(tmp.path(), &initrd, &[("s", &sock)]);
    vm.wait_console("MOUNTED=x", &[&daemon]);
    if let Some(stuck) = kill_bounded(&mut daemon.child, "virtiofsd") {
        panic!("{stuck}\n{}", vm.stuck(&[]));
    }
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        vm.0.child.try_wait().unwrap().is_none(),
        "crx-vmm died with its backend\n{}",
        vm.logs()
    );
    let sent = Instant::now();
    // SAFETY: kill(2) on our own child's pid, which has not been reaped (checked above).
    let rc = unsafe { libc::kill(vm.0.child.id() as i32, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let st = vm.wait(Duration::from_secs(30), &[]);
    eprintln!(
        "SIGTERM -> exit after {:?}; virtiofsd log: {}",
        sent.elapsed(),
        std::fs::read_to_string(&daemon.log).unwrap_or_default()
    );
    assert_eq!(st.code(), Some(0), "{}", vm.logs());
    let stderr = std::fs::read_to_string(&vm.0.stderr).unwrap_or_default();
    assert_eq!(
        stderr
            .matches("the vhost-user backend closed its socket")
            .count(),
        1,
        "the hang-up is logged once\n{}",
        vm.logs()
    );
}
