//! Lab tier of issue 17 (host half): a Linux guest snapshotted while it runs (SIGUSR1) is
//! restored in a new crx-vmm process and carries on: its shell loop counts on from where it
//! stopped and its clock has moved on by the time the snapshot spent on disk.
//!
//! Run inside the lab (`target/debug/xtask lab -- target/debug/deps/lab_snapshot-HASH lab_`).
//! A missing `CRX_GUEST_KERNEL_DIR`, kernel, `/dev/kvm` or `/bin/busybox` is a failure.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crx_initrd::{parse_spec, WriteOptions};

const TIMEOUT: Duration = Duration::from_secs(120);

fn kernel() -> PathBuf {
    let dir = std::env::var_os("CRX_GUEST_KERNEL_DIR")
        .expect("CRX_GUEST_KERNEL_DIR is not set: run lab tests inside the nested lab");
    let k = Path::new(&dir).join("vmlinux");
    assert!(k.is_file(), "{} is missing", k.display());
    assert!(Path::new("/dev/kvm").exists(), "/dev/kvm is missing");
    k
}

/// busybox and an `/init` that prints `tick N SECONDS` (the guest's `date +%s`) every 0.2 s.
fn initrd(dir: &Path) -> PathBuf {
    assert!(
        Path::new("/bin/busybox").is_file(),
        "/bin/busybox is missing"
    );
    let init = dir.join("init.sh");
    std::fs::write(
        &init,
        "#!/bin/sh\nmount -t proc proc /proc\nmount -t devtmpfs dev /dev\necho CRX-INIT-START\n\
         i=0\nwhile true; do echo \"tick $i $(date +%s)\"; i=$((i+1)); sleep 0.2; done\n",
    )
    .unwrap();
    let spec = format!(
        "busybox /bin/busybox /bin/busybox\ndir /proc\ndir /dev\nfile /init {} 0755\n",
        init.display()
    );
    let a = parse_spec(&spec, dir, &BTreeMap::new()).expect("initrd spec");
    let out = dir.join("init.cpio");
    std::fs::write(&out, a.to_bytes(WriteOptions::default()).unwrap()).unwrap();
    out
}

/// A crx-vmm child with its console in a file; killed when dropped.
struct Vm {
    child: Child,
    console: PathBuf,
    stderr: PathBuf,
}

impl Vm {
    fn spawn(dir: &Path, name: &str, args: &[&str]) -> Vm {
        let console = dir.join(format!("{name}.console"));
        let stderr = dir.join(format!("{name}.stderr"));
        let child = Command::new(env!("CARGO_BIN_EXE_crx-vmm"))
            .args(args)
            .arg("--serial")
            .arg(format!("file:{}", console.display()))
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
            "--- console ---\n{}\n--- stderr ---\n{}",
            self.console(),
            std::fs::read_to_string(&self.stderr).unwrap_or_default()
        )
    }

    /// The complete `tick N SECONDS` lines so far.
    fn ticks(&self) -> Vec<(u64, u64)> {
        let text = self.console();
        let complete = match text.rfind('\n') {
            Some(i) => &text[..i],
            None => "",
        };
        complete
            .lines()
            .filter_map(|l| {
                let mut w = l.trim().strip_prefix("tick ")?.split(' ');
                Some((w.next()?.parse().ok()?, w.next()?.parse().ok()?))
            })
            .collect()
    }

    /// Polls until `n` tick lines were printed; panics with the logs after the timeout.
    fn wait_ticks(&mut self, n: usize) -> Vec<(u64, u64)> {
        let end = Instant::now() + TIMEOUT;
        loop {
            let t = self.ticks();
            if t.len() >= n {
                return t;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("crx-vmm exited {st} early\n{}", self.logs());
            }
            assert!(Instant::now() < end, "no {n} ticks\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) of our own child.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }

    fn wait(&mut self) -> ExitStatus {
        let end = Instant::now() + TIMEOUT;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < end,
                "crx-vmm did not exit\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn lab_snapshot_linux_guest_continues_after_restore() {
    let k = kernel();
    let d = tempfile::tempdir().unwrap();
    let init = initrd(d.path());
    let snap = d.path().join("snap");
    let base = [
        "--memory-mib",
        "128",
        "--kernel",
        k.to_str().unwrap(),
        "--initrd",
        init.to_str().unwrap(),
    ];
    let mut args = base.to_vec();
    args.extend(["--snapshot-on-signal", snap.to_str().unwrap()]);
    let cold = Instant::now();
    let mut first = Vm::spawn(d.path(), "first", &args);
    first.wait_ticks(1);
    let cold = cold.elapsed();
    first.wait_ticks(10);
    let t0 = Instant::now();
    first.signal(libc::SIGUSR1);
    let st = first.wait();
    assert_eq!(st.code(), Some(0), "{}", first.logs());
    eprintln!("snapshot written in {:?}", t0.elapsed());
    let before = first.ticks();
    let &(last_n, last_s) = before.last().unwrap();
    let mem = std::fs::metadata(snap.join("memory")).unwrap();
    eprintln!(
        "memory file: {} MiB, {} MiB allocated",
        mem.len() >> 20,
        (std::os::unix::fs::MetadataExt::blocks(&mem) * 512) >> 20
    );

    std::thread::sleep(Duration::from_secs(5));
    let mut args = base.to_vec();
    args.extend(["--restore", snap.to_str().unwrap()]);
    let t1 = Instant::now();
    let mut second = Vm::spawn(d.path(), "second", &args);
    second.wait_ticks(1);
    let warm = t1.elapsed();
    let after = second.wait_ticks(5);
    // Polled every 100 ms: a figure to compare, not a measurement to the millisecond.
    eprintln!("spawn -> first tick: cold boot {cold:?}, restore {warm:?}");
    eprintln!(
        "last tick before: {last_n} at {last_s}; first after: {:?}",
        after[0]
    );
    second.signal(libc::SIGTERM);
    assert_eq!(second.wait().code(), Some(0), "{}", second.logs());
    let (n, s) = after[0];
    assert!(
        n == last_n + 1 || n == last_n + 2,
        "the count goes on: last before {last_n}, first after {n}\n{}",
        second.logs()
    );
    assert!(
        s >= last_s + 4,
        "the guest clock moved on by the ~5 s on disk: {last_s} -> {s}\n{}",
        second.logs()
    );
}
