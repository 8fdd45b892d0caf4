//! End to end: the layers this crate writes, with crx-init as PID 1, boot a real Linux guest under
//! QEMU TCG on the host (tier 3's host part: test names start with `labhost_`). Needs
//! `CRX_GUEST_KERNEL` (a bzImage) and `CRX_INIT_STATIC` (a static crx-init), which
//! `cargo xtask test` sets, and `qemu-system-x86_64`; without them the tests fail.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crx_initrd::{parse_spec, Archive, Entry, FileSource, WriteOptions};

fn inputs() -> (PathBuf, PathBuf) {
    // Never skipped: a missing input fails the test (see the module doc).
    let k = std::env::var_os("CRX_GUEST_KERNEL").map(PathBuf::from);
    let i = std::env::var_os("CRX_INIT_STATIC").map(PathBuf::from);
    let qemu = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok();
    match (k, i, qemu) {
        (Some(k), Some(i), true) => (k, i),
        _ => panic!(
            "set CRX_GUEST_KERNEL and CRX_INIT_STATIC (cargo xtask test does) and install \
             qemu-system-x86"
        ),
    }
}

fn initrd(dir: &Path, init: &Path, specs: &[&str]) -> PathBuf {
    let layers = Path::new(env!("CARGO_MANIFEST_DIR")).join("layers");
    let mut defs = BTreeMap::new();
    defs.insert("CRX_INIT".to_string(), init.display().to_string());
    defs.insert("BUSYBOX".to_string(), "/bin/busybox".to_string());
    let mut bytes = Vec::new();
    for spec in specs {
        let text = std::fs::read_to_string(layers.join(spec)).unwrap();
        let a = parse_spec(&text, &layers, &defs).unwrap();
        bytes.extend(a.to_bytes(WriteOptions::default()).unwrap());
    }
    let p = dir.join("initrd.cpio");
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Boots and returns the serial output once `until` appears, the VM exits, or 120 s pass.
fn boot(kernel: &Path, initrd: &Path, append: &str, until: &str) -> String {
    boot_with(kernel, initrd, append, until, &[])
}

fn boot_with(kernel: &Path, initrd: &Path, append: &str, until: &str, extra: &[String]) -> String {
    let mut child = Command::new("qemu-system-x86_64")
        .args(extra)
        .args([
            "-M",
            "microvm,acpi=off",
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-m",
            "256",
        ])
        .args(["-nographic", "-no-reboot", "-kernel"])
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(append)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut log = Vec::new();
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(b) => log.extend(b),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(_) => {}
        }
        if String::from_utf8_lossy(&log).contains(until) {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    String::from_utf8_lossy(&log).into_owned()
}

#[test]
fn labhost_system_vm_mode_reports_exit_status() {
    let (kernel, init) = inputs();
    let dir = tempfile::tempdir().unwrap();
    let rd = initrd(dir.path(), &init, &["base.spec", "debug.spec"]);
    let log = boot(
        &kernel,
        &rd,
        "console=ttyS0 reboot=t panic=-1 crxhostname=guest1 crxrun=/bin/busybox crxarg=sh \
         crxarg=-c crxarg=\"hostname; grep -c cgroup2 /proc/mounts; cmp /init /proc/1/exe && echo SAME; exit 7\"",
        "reboot: Restarting system",
    );
    assert!(
        log.contains("guest1\n") || log.contains("guest1\r\n"),
        "{log}"
    );
    assert!(
        log.contains("SAME"),
        "/init differs from what was packed:\n{log}"
    );
    assert!(log.contains("crx-init: exit status 7"), "{log}");
    assert!(log.contains("reboot: Restarting system"), "{log}");
}

#[test]
fn labhost_agent_mode_listens_on_vsock() {
    let (kernel, init) = inputs();
    let dir = tempfile::tempdir().unwrap();
    let rd = initrd(dir.path(), &init, &["base.spec", "debug.spec"]);
    let log = boot(
        &kernel,
        &rd,
        "console=ttyS0 reboot=t panic=-1",
        "vsock:1024",
    );
    assert!(
        log.contains("crx-init: agent listening on vsock:1024"),
        "{log}"
    );
}

#[test]
fn labhost_tool_layer_runs_a_dynamic_binary() {
    let (kernel, init) = inputs();
    let dir = tempfile::tempdir().unwrap();
    let rd = initrd(dir.path(), &init, &["base.spec", "mkfs.spec"]);
    let log = boot(
        &kernel,
        &rd,
        "console=ttyS0 reboot=t panic=-1 crxrun=/usr/sbin/mkfs.ext4 crxarg=-F crxarg=/tmp/img crxarg=4M",
        "reboot: Restarting system",
    );
    assert!(
        log.contains("Creating filesystem with 4096 1k blocks"),
        "{log}"
    );
    assert!(log.contains("crx-init: exit status 0"), "{log}");
}

/// The agent (started by a script in the guest, on a Unix socket) creates a container with
/// libcontainer from a read-only ext4 image on virtio-blk plus a tmpfs overlay, with its stdin,
/// stdout and stderr on stream connections, starts it, execs a second process in it (stdout on
/// its own stream), waits for both exit statuses, removes it, and shuts down.
#[test]
fn labhost_agent_runs_a_container_from_a_disk_image() {
    let (kernel, init) = inputs();
    let dir = tempfile::tempdir().unwrap();
    // The container image: busybox and a few applets, as an ext4 disk.
    let root = dir.path().join("ctr");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    for d in ["proc", "dev", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for a in ["sh", "echo", "hostname", "cat"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).unwrap();
    }
    let img = dir.path().join("ctr.ext4");
    let st = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-d"])
        .arg(&root)
        .arg(&img)
        .arg("16M")
        .status()
        .expect("mke2fs (apt package e2fsprogs)");
    assert!(st.success());

    let spec = spec_json(
        "read l; echo hello-from-container $(hostname) $l; echo to-stderr >&2; \
         while [ ! -s /tmp/go ]; do sleep 0.1; done; \
         while [ -e /proc/$(cat /tmp/go) ]; do sleep 0.1; done; exit 5",
    );
    let create = format!(
        r#"{{"op":"create_container","id":"c1","spec":{spec},"rootfs":{{"device":"/dev/vda","fs_type":"ext4","writable":{{"kind":"tmpfs","size_bytes":null}}}}}}"#
    );
    // A second container from the same image that only ends when killed.
    let spec2 = spec_json("while true; do sleep 1; done");
    let create2 = create
        .replace(r#""id":"c1""#, r#""id":"c2""#)
        .replace(&spec, &spec2);
    let script = r#"
/init --agent --listen unix:/run/a.sock &
i=0; while [ ! -S /run/a.sock ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
echo line-from-host > /tmp/in
mkfifo /tmp/fifo
sleep 1000 > /tmp/fifo &
/init --call unix:/run/a.sock --stdin c4=/tmp/fifo --stdin c1=/tmp/in --stdout c1=/tmp/out --stderr c1=/tmp/err \
  --stdout c1/e1=/tmp/eout @/create.json '{"op":"start","id":"c1"}' \
  '{"op":"list_processes","id":"c1"}' '{"op":"stats","id":"c1"}' \
  '{"op":"pause","id":"c1"}' '{"op":"resume","id":"c1"}' @/exec.json \
  '{"op":"wait","id":"c1","exec_id":"e1"}' '{"op":"wait","id":"c1","exec_id":null}' \
  '{"op":"remove","id":"c1"}' \
  @/create2.json '{"op":"start","id":"c2"}' '{"op":"signal","id":"c2","exec_id":null,"signal":9}' \
  '{"op":"wait","id":"c2","exec_id":null}' '{"op":"remove","id":"c2"}' \
  @/create4.json '{"op":"start","id":"c4"}' '{"op":"close_stdin","id":"c4","exec_id":null}' \
  '{"op":"wait","id":"c4","exec_id":null}' '{"op":"remove","id":"c4"}' \
  @/create3.json '{"op":"start","id":"c3"}' '{"op":"shutdown"}'
rc=$?
echo "STREAMS out=[$(cat /tmp/out)] err=[$(cat /tmp/err)] exec=[$(cat /tmp/eout)]"
exit $rc
"#;
    let mut extra = Archive::new();
    extra
        .insert(
            "/test.sh",
            Entry::file(FileSource::Bytes(script.into()), 0o755),
        )
        .unwrap();
    extra
        .insert(
            "/create.json",
            Entry::file(FileSource::Bytes(create.clone().into()), 0o644),
        )
        .unwrap();
    extra
        .insert(
            "/create2.json",
            Entry::file(FileSource::Bytes(create2.clone().into()), 0o644),
        )
        .unwrap();
    // A third one is still running at shutdown: the helper kills and removes it. Its image is
    // a directory (the same tree, packed into the initrd), which the agent bind-mounts.
    let create3 = create2.replace(r#""id":"c2""#, r#""id":"c3""#).replace(
        r#""device":"/dev/vda","fs_type":"ext4""#,
        r#""device":"/ctrdir","fs_type":"none""#,
    );
    assert!(create3.contains("/ctrdir"));
    // A fourth reads its stdin (a stream fed from a FIFO that stays open) until `close_stdin`.
    let create4 = create
        .replace(r#""id":"c1""#, r#""id":"c4""#)
        .replace(&spec, &spec_json("cat > /dev/null; exit 9"));
    extra
        .insert(
            "/create4.json",
            Entry::file(FileSource::Bytes(create4.into()), 0o644),
        )
        .unwrap();
    extra.add_host_tree("/ctrdir", &root).unwrap();
    extra
        .insert(
            "/create3.json",
            Entry::file(FileSource::Bytes(create3.into()), 0o644),
        )
        .unwrap();
    // The exec releases the container's init, which waits for /tmp/go (the exec's pid) and then
    // for the exec to be gone: were the init to exit first, the kernel would SIGKILL the exec
    // with the rest of the container's pid namespace.
    let exec = r#"{"op":"exec","id":"c1","exec_id":"e1","process":{"terminal":false,
        "user":{"uid":0,"gid":0},"args":["/bin/sh","-c","echo $$ > /tmp/go; echo exec-out; exit 3"],
        "env":["PATH=/bin"],"cwd":"/"}}"#;
    extra
        .insert(
            "/exec.json",
            Entry::file(FileSource::Bytes(exec.into()), 0o644),
        )
        .unwrap();
    let rd = initrd(dir.path(), &init, &["base.spec", "debug.spec"]);
    let mut bytes = std::fs::read(&rd).unwrap();
    bytes.extend(extra.to_bytes(WriteOptions::default()).unwrap());
    std::fs::write(&rd, bytes).unwrap();

    let drive = vec![
        "-drive".to_string(),
        format!(
            "file={},if=none,id=d0,format=raw,readonly=on",
            img.display()
        ),
        "-device".to_string(),
        "virtio-blk-device,drive=d0".to_string(),
    ];
    let log = boot_with(
        &kernel,
        &rd,
        "console=ttyS0 reboot=t panic=-1 crxrun=/bin/busybox crxarg=sh crxarg=/test.sh",
        "reboot: Restarting system",
        &drive,
    );
    // The container's stdio were the stream connections: stdin came from the host side, stdout
    // and stderr went back separately.
    assert!(
        log.contains(
            "STREAMS out=[hello-from-container ctr line-from-host] err=[to-stderr] exec=[exec-out]"
        ),
        "{log}"
    );
    assert!(log.contains(r#"{"result":"processes","pids":["#), "{log}");
    assert!(
        log.contains(r#"{"result":"stats","cpu_usage_ns":"#),
        "{log}"
    );
    let exec_exit = log.find(r#"{"result":"exited","code":3,"signal":null}"#);
    let init_exit = log.find(r#"{"result":"exited","code":5,"signal":null}"#);
    assert!(exec_exit.is_some() && init_exit > exec_exit, "{log}");
    // SIGKILL for c2: 128 + 9.
    assert!(
        log.contains(r#"{"result":"exited","code":137,"signal":9}"#),
        "{log}"
    );
    assert!(
        log.contains(r#"{"result":"exited","code":9,"signal":null}"#),
        "{log}"
    );
    assert!(
        log.contains("crx-init: shutdown: removed container c3"),
        "{log}"
    );
    assert!(log.contains("crx-init: exit status 0"), "{log}");
}

/// A minimal OCI runtime spec for the busybox image, running `sh -c CMD` (CMD without `"`).
fn spec_json(cmd: &str) -> String {
    format!(
        r#"{{"ociVersion":"1.0.2",
 "process":{{"terminal":false,"user":{{"uid":0,"gid":0}},
   "args":["/bin/sh","-c","{cmd}"],
   "env":["PATH=/bin"],"cwd":"/"}},
 "root":{{"path":"rootfs","readonly":false}},
 "hostname":"ctr",
 "mounts":[{{"destination":"/proc","type":"proc","source":"proc"}},
   {{"destination":"/dev","type":"tmpfs","source":"tmpfs","options":["nosuid","mode=755","size=65536k"]}}],
 "linux":{{"namespaces":[{{"type":"pid"}},{{"type":"ipc"}},{{"type":"uts"}},{{"type":"mount"}}]}}}}"#
    )
    .replace('\n', " ")
}
