//! `crx-runc` through the real binary, without a VM: bad bundles (one line, exit 1, nothing
//! left behind), a create whose VM cannot start (nothing left behind), `spec`, `features`,
//! and the commands on missing containers.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};

fn runc(root: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_crx-runc"))
        .arg("--root")
        .arg(root)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A bundle in `dir`: `config` (None: no config.json) and a rootfs directory if asked.
fn bundle(dir: &Path, config: Option<&str>, rootfs: bool) -> PathBuf {
    let b = dir.join("bundle");
    fs::create_dir_all(&b).unwrap();
    if let Some(c) = config {
        fs::write(b.join("config.json"), c).unwrap();
    }
    if rootfs {
        fs::create_dir_all(b.join("rootfs/bin")).unwrap();
        // For the bad case of a root.path that is a symbolic link (made once per bundle).
        let _ = std::os::unix::fs::symlink("rootfs", b.join("rootfs-link"));
    }
    b
}

fn good_config(patch: Value) -> String {
    let mut v = json!({"ociVersion": "1.0.2", "root": {"path": "rootfs"},
        "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {"namespaces": [{"type": "network"}]}});
    for (k, x) in patch.as_object().unwrap() {
        v[k] = x.clone();
    }
    v.to_string()
}

/// The message of a logrus text line (`time=... level=LEVEL msg="..."`, runc's format on
/// stderr without `--log`), unquoted.
fn logged_msg(line: &str, level: &str) -> String {
    let line = line.trim_end();
    assert!(line.starts_with("time="), "a logrus line: {line:?}");
    let rest = line
        .split_once(&format!(" level={level} msg="))
        .unwrap_or_else(|| panic!("level={level} in {line:?}"))
        .1;
    let Some(q) = rest.strip_prefix('"') else {
        return rest.to_owned();
    };
    let (mut msg, mut chars) = (String::new(), q.chars());
    while let Some(c) = chars.next() {
        match c {
            '"' => break,
            '\\' => match chars.next() {
                Some('n') => msg.push('\n'),
                Some(c) => msg.push(c),
                None => break,
            },
            c => msg.push(c),
        }
    }
    msg
}

/// Asserts a one-line error containing `want`, exit 1, and an empty root.
/// A boot directory in `dir` with stand-in boot files and their manifest (written as
/// `cargo xtask boot` writes it): they pass verification, and the boot then fails at crx-vmm.
fn fake_boot_dir(dir: &Path) -> &Path {
    fs::write(dir.join("vmlinux"), "kernel").unwrap();
    fs::write(dir.join("base.cpio"), "initrd").unwrap();
    crx_runtime::boot_files::write_manifest(dir).unwrap();
    dir
}

fn refused(root: &Path, out: &Output, want: &str) {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "one line: {err:?}");
    let msg = logged_msg(&err, "error");
    assert!(msg.contains(want), "want {want:?} in {err:?}");
    let left: Vec<_> = fs::read_dir(root)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn bad_bundles_give_one_line_and_leave_nothing() {
    let no_version = {
        let mut v: Value = serde_json::from_str(&good_config(json!({}))).unwrap();
        v.as_object_mut().unwrap().remove("ociVersion");
        v.to_string()
    };
    let cases: [(&str, Option<String>, bool, &str); 16] = [
        ("missing config", None, true, "no config.json"),
        (
            "invalid json",
            Some("{\"ociVersion\": ".into()),
            true,
            "not a valid OCI runtime spec",
        ),
        (
            "wrong types",
            Some(r#"{"ociVersion": 1}"#.into()),
            true,
            "not a valid OCI runtime spec",
        ),
        (
            "no rootfs",
            Some(good_config(json!({}))),
            false,
            "is not a directory",
        ),
        (
            "unknown mount type",
            Some(good_config(json!({"mounts": [
                {"destination": "/x", "type": "bogusfs", "source": "none"}]}))),
            true,
            "unknown mount type \"bogusfs\"",
        ),
        (
            "createContainer hook",
            Some(good_config(json!({"hooks": {"createContainer": [
                {"path": "/usr/bin/true"}]}}))),
            true,
            "createContainer hooks are not supported",
        ),
        ("no ociVersion", Some(no_version), true, "no ociVersion"),
        (
            "empty args",
            Some(good_config(
                json!({"process": {"args": [], "cwd": "/", "user": {"uid": 0, "gid": 0}}}),
            )),
            true,
            "process.args is empty",
        ),
        (
            "rootfs escaping the bundle",
            Some(good_config(json!({"root": {"path": ".."}}))),
            true,
            "resolves outside the bundle",
        ),
        (
            "rootfs a symbolic link",
            Some(good_config(json!({"root": {"path": "rootfs-link"}}))),
            true,
            "is a symbolic link",
        ),
        (
            "relative hook path",
            Some(good_config(
                json!({"hooks": {"prestart": [{"path": "true"}]}}),
            )),
            true,
            "prestart hook path \"true\" is not absolute",
        ),
        (
            "hostname too long",
            Some(good_config(json!({"hostname": "h".repeat(65)}))),
            true,
            "more than the kernel's 64",
        ),
        (
            "namespace path of another type",
            Some(good_config(json!({"linux": {"namespaces": [
                {"type": "mount"}, {"type": "uts", "path": "/proc/self/ns/net"}]}}))),
            true,
            "uts namespace path /proc/self/ns/net is a network namespace",
        ),
        (
            "host networking",
            Some(good_config(
                json!({"linux": {"namespaces": [{"type": "mount"}]}}),
            )),
            true,
            "a VM cannot share the host's network stack",
        ),
        (
            "the host's network namespace by path",
            Some(good_config(json!({"linux": {"namespaces": [
                {"type": "network", "path": "/proc/self/ns/net"}]}}))),
            true,
            "/proc/self/ns/net is the host's own",
        ),
        (
            "terminal",
            Some(good_config(
                json!({"process": {"args": ["sh"], "cwd": "/", "terminal": true,
                "user": {"uid": 0, "gid": 0}}}),
            )),
            true,
            "--console-socket",
        ),
    ];
    for (what, config, rootfs, want) in cases {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        let b = bundle(d.path(), config.as_deref(), rootfs);
        let out = runc(&root, &["create", "--bundle", b.to_str().unwrap(), "c1"]);
        refused(&root, &out, want);
        // `run` checks the same way (a terminal without a console socket is ours there).
        if what != "terminal" {
            let out = runc(&root, &["run", "--bundle", b.to_str().unwrap(), "c1"]);
            refused(&root, &out, want);
        }
        eprintln!("{what}: ok");
    }
}

#[test]
fn duplicate_and_bad_ids_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    let b = bundle(d.path(), Some(&good_config(json!({}))), true);
    // A container c1 exists (its directory): a second c1 is refused, the first untouched.
    fs::create_dir_all(root.join("c1")).unwrap();
    fs::write(root.join("c1/marker"), "x").unwrap();
    let out = runc(&root, &["create", "--bundle", b.to_str().unwrap(), "c1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("c1 already exists"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(fs::read_to_string(root.join("c1/marker")).unwrap(), "x");
    fs::remove_dir_all(root.join("c1")).unwrap();
    let out = runc(
        &root,
        &["create", "--bundle", b.to_str().unwrap(), "../evil"],
    );
    refused(&root, &out, "invalid container id");
}

/// No VM can start here (no crx-vmm at CRX_VMM): create fails in one line, after starting
/// its monitor, and leaves no directory and no process.
#[test]
fn failed_boot_leaves_nothing() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    let b = bundle(d.path(), Some(&good_config(json!({}))), true);
    fs::write(b.join("rootfs/bin/sh"), "#!/bin/sh\n").unwrap();
    let pid_file = d.path().join("pid");
    let out = Command::new(env!("CARGO_BIN_EXE_crx-runc"))
        .arg("--root")
        .arg(&root)
        .args(["create", "--bundle", b.to_str().unwrap(), "--pid-file"])
        .arg(&pid_file)
        .arg("c1")
        .env("CRX_VMM", d.path().join("no-such-vmm"))
        .env("CRX_BOOT_DIR", fake_boot_dir(d.path()))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    refused(&root, &out, "c1");
    // The missing program is the one named (jailed or not).
    assert!(
        text(&out.stderr).contains("no-such-vmm"),
        "{}",
        text(&out.stderr)
    );
    assert!(!pid_file.exists());
    let list = runc(&root, &["list", "-q"]);
    assert_eq!(text(&list.stdout), "");
}

/// A tampered initrd: create fails in one line naming the file and both digests (the
/// manifest's and the file's), and starts nothing (no crx-vmm is ever looked for).
#[test]
fn a_tampered_initrd_is_refused_in_one_line() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    let b = bundle(d.path(), Some(&good_config(json!({}))), true);
    fs::write(b.join("rootfs/bin/sh"), "#!/bin/sh\n").unwrap();
    let boot = d.path().join("boot");
    fs::create_dir(&boot).unwrap();
    fake_boot_dir(&boot);
    let sums = fs::read_to_string(boot.join("SHA256SUMS")).unwrap();
    let good = sums.lines().find(|l| l.ends_with("base.cpio")).unwrap()[..64].to_owned();
    fs::write(boot.join("base.cpio"), "evil").unwrap();
    let evil = "b5c1fb2efc6d6b4674c2fdcc48ce01b43a3b7c03763c0c3355de0099ee0f8c73";
    let out = Command::new(env!("CARGO_BIN_EXE_crx-runc"))
        .arg("--root")
        .arg(&root)
        .args(["create", "--bundle", b.to_str().unwrap(), "t1"])
        .env("CRX_VMM", d.path().join("no-such-vmm"))
        .env("CRX_BOOT_DIR", &boot)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    refused(&root, &out, "base.cpio");
    let msg = logged_msg(&text(&out.stderr), "error");
    assert!(msg.contains(&good), "the manifest's digest: {msg}");
    assert!(msg.contains(evil), "the file's digest: {msg}");
    assert!(!msg.contains("no-such-vmm"), "{msg}");
}

#[test]
fn spec_writes_a_loadable_default_once() {
    let d = tempfile::tempdir().unwrap();
    let out = runc(d.path(), &["spec", "--bundle", d.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: Value =
        serde_json::from_slice(&fs::read(d.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(v["process"]["args"], json!(["sh"]));
    assert_eq!(v["root"]["path"], "rootfs");
    assert_eq!(v["process"]["terminal"], false);
    let out = runc(d.path(), &["spec", "--bundle", d.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("exists"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn features_describe_support() {
    let d = tempfile::tempdir().unwrap();
    let out = runc(d.path(), &["features"]);
    assert_eq!(out.status.code(), Some(0));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["hooks"],
        json!([
            "prestart",
            "createRuntime",
            "startContainer",
            "poststart",
            "poststop"
        ])
    );
    assert!(v["ociVersionMax"].as_str().unwrap().starts_with("1."));
    assert_eq!(v["linux"]["cgroup"]["v2"], true);
    assert!(v["annotations"]["io.crx.isolation"].is_string());
    let ns = v["annotations"]["io.crx.namespace-paths"].as_str().unwrap();
    assert!(ns.contains("uts and mount become a new namespace"), "{ns}");
}

#[test]
fn missing_containers() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    for args in [
        &["state", "nope"][..],
        &["start", "nope"],
        &["kill", "nope", "KILL"],
        &["delete", "nope"],
        &["pause", "nope"],
        &["exec", "nope", "true"],
        &["ps", "nope"],
        &["checkpoint", "nope"],
    ] {
        let out = runc(&root, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = text(&out.stderr);
        assert!(err.contains("nope does not exist"), "{args:?}: {err}");
    }
    assert_eq!(
        runc(&root, &["delete", "--force", "nope"]).status.code(),
        Some(0)
    );
    let out = runc(&root, &["list"]);
    assert_eq!(
        text(&out.stdout),
        "ID\tPID\tSTATUS\tBUNDLE\tCREATED\tOWNER\n"
    );
    let out = runc(&root, &["list", "--format", "json"]);
    assert_eq!(text(&out.stdout).trim(), "[]");
}

/// `checkpoint`/`restore` (CRIU in runc) are refused with the reason, the container untouched.
#[test]
fn checkpoint_and_restore_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    record(&root, "c1", "running", Some(std::process::id()));
    let before = fs::read(root.join("c1/state.json")).unwrap();
    let out = runc(&root, &["checkpoint", "--image-path", "/tmp/img", "c1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("checkpoint of c1: not supported"));
    let out = runc(
        &root,
        &[
            "restore",
            "--bundle",
            "/b",
            "--image-path",
            "/tmp/img",
            "c1",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("restore of c1: not supported"));
    assert_eq!(fs::read(root.join("c1/state.json")).unwrap(), before);
}

/// `--log FILE --log-format json`: errors land in the log as JSON lines (conmon reads them).
#[test]
fn errors_go_to_the_json_log() {
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("log.json");
    let out = Command::new(env!("CARGO_BIN_EXE_crx-runc"))
        .args(["--root", d.path().to_str().unwrap(), "--log"])
        .arg(&log)
        .args(["--log-format", "json", "--systemd-cgroup", "state", "nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let line: Value = serde_json::from_str(fs::read_to_string(&log).unwrap().trim()).unwrap();
    assert_eq!(line["level"], "error");
    assert!(line["msg"]
        .as_str()
        .unwrap()
        .contains("nope does not exist"));
    assert!(line["time"].as_str().unwrap().ends_with('Z'));
}

/// A container directory as a killed command or monitor leaves it, in the record's own format.
fn record(root: &Path, id: &str, phase: &str, monitor: Option<u32>) {
    let dir = root.join(id);
    fs::create_dir_all(&dir).unwrap();
    let start = monitor.and_then(crx_runtime::record::process_start_time);
    let r = json!({"id": id, "bundle": "/b", "rootfs": "/b/rootfs",
        "created": "2026-11-28T00:00:00.000000000Z", "annotations": {}, "phase": phase,
        "monitor_pid": monitor, "monitor_start": start, "vmm_pid": null, "exit_code": null,
        "exit_signal": null, "error": null});
    fs::write(dir.join("state.json"), r.to_string()).unwrap();
    fs::write(dir.join("config.json"), "{}").unwrap();
}

/// Whatever a killed command left is consistent: a directory without a record (create killed
/// before writing it) or whose monitor is gone reads as `stopped` and `delete` removes it; a
/// live monitor keeps the recorded status, and `delete --force` kills it.
#[test]
fn leftovers_of_killed_commands_read_consistently() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    fs::create_dir_all(root.join("norecord")).unwrap();
    record(&root, "gone", "running", Some(4_194_999)); // beyond pid_max: dead
    let mut monitor = Command::new("sleep").arg("600").spawn().unwrap();
    record(&root, "live", "running", Some(monitor.id()));
    let state = |id: &str| -> Value {
        let out = runc(&root, &["state", id]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    assert_eq!(state("norecord")["status"], "stopped");
    assert_eq!(state("gone")["status"], "stopped");
    assert_eq!(state("gone")["pid"], 0);
    assert_eq!(state("live")["status"], "running");
    assert_eq!(state("live")["pid"], monitor.id());
    let list = runc(&root, &["list", "-q"]);
    assert_eq!(text(&list.stdout), "gone\nlive\nnorecord\n");
    for id in ["norecord", "gone"] {
        let out = runc(&root, &["delete", id]);
        assert_eq!(out.status.code(), Some(0), "{id}: {}", text(&out.stderr));
        assert!(!root.join(id).exists());
    }
    let out = runc(&root, &["delete", "live"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("is running"),
        "{}",
        text(&out.stderr)
    );
    let out = runc(&root, &["delete", "--force", "live"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(!root.join("live").exists());
    // The monitor was killed (SIGKILL), not left behind.
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(monitor.wait().unwrap().signal(), Some(9));
}

/// Errors as runc's callers parse them: a logrus line with `level=error` (stderr without
/// `--log`, JSON with `--log-format json`, the file with `--log`, then a plain stderr line
/// too), carrying the whole cause chain and never a Debug dump of the parsed arguments.
#[test]
fn errors_carry_the_word_and_the_whole_cause() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    let b = bundle(d.path(), Some("{\"ociVersion\": "), true);
    let create = ["create", "--bundle", b.to_str().unwrap(), "c1"];
    // The cause: serde_json's own words, after ours.
    let whole = |msg: &str| {
        assert!(msg.contains("not a valid OCI runtime spec"), "{msg}");
        assert!(msg.contains("EOF while parsing"), "the cause: {msg}");
    };
    let out = runc(&root, &create);
    assert_eq!(out.status.code(), Some(1));
    whole(&logged_msg(&text(&out.stderr), "error"));

    let mut json = vec!["--log-format", "json"];
    json.extend(create);
    let out = runc(&root, &json);
    let line: Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(line["level"], "error");
    whole(line["msg"].as_str().unwrap());

    let log = d.path().join("log");
    let mut logged = vec!["--log", log.to_str().unwrap(), "--debug"];
    logged.extend(create);
    let out = runc(&root, &logged);
    let err = text(&out.stderr);
    assert!(err.starts_with("crx-runc: error: "), "{err}");
    whole(&err);
    let lines = fs::read_to_string(&log).unwrap();
    let mut lines = lines.lines();
    let debug = lines.next().unwrap();
    assert!(
        debug.contains("level=debug") && debug.contains("create --bundle"),
        "{debug}"
    );
    assert!(!debug.contains("Create {"), "no Debug dump: {debug}");
    whole(&logged_msg(lines.next().unwrap(), "error"));

    // A cause relayed from the monitor (it could not boot the VM): the paths it tried.
    let good = bundle(&d.path().join("good"), Some(&good_config(json!({}))), true);
    fs::write(good.join("rootfs/bin/sh"), "#!/bin/sh\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_crx-runc"))
        .arg("--root")
        .arg(&root)
        .args(["create", "--bundle", good.to_str().unwrap(), "c2"])
        .env("CRX_VMM", d.path().join("no-such-vmm"))
        .env("CRX_BOOT_DIR", fake_boot_dir(d.path()))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let msg = logged_msg(&text(&out.stderr), "error");
    // (crx-vmm is what is missing: the boot files are there and verified.)
    assert!(msg.contains("c2") && msg.contains("created: "), "{msg}");
    assert!(msg.contains(&*d.path().to_string_lossy()), "{msg}");
}

/// `exec` into a paused container is refused, and with `--ignore-paused` waits for it to be
/// resumed: it asks the monitor (`wait-unpaused` on its socket, played here by the test) and
/// blocks until the answer; then the record says running, and the exec goes on to the agent.
#[test]
fn exec_into_a_paused_container_needs_ignore_paused() {
    use std::io::{BufRead, BufReader, Write};
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    let mut monitor = Command::new("sleep").arg("600").spawn().unwrap();
    record(&root, "p1", "paused", Some(monitor.id()));
    let out = runc(&root, &["exec", "p1", "true"]);
    assert_eq!(out.status.code(), Some(1));
    let msg = logged_msg(&text(&out.stderr), "error");
    assert!(msg.contains("p1 is paused"), "{msg}");

    let sock = std::os::unix::net::UnixListener::bind(root.join("p1/monitor.sock")).unwrap();
    let mut waiting = Command::new(env!("CARGO_BIN_EXE_crx-runc"))
        .arg("--root")
        .arg(&root)
        .args(["exec", "--ignore-paused", "p1", "true"])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (conn, _) = sock.accept().unwrap();
    let mut line = String::new();
    BufReader::new(&conn).read_line(&mut line).unwrap();
    assert_eq!(line, "wait-unpaused\n");
    assert!(
        waiting.try_wait().unwrap().is_none(),
        "waits for the answer"
    );
    record(&root, "p1", "running", Some(monitor.id()));
    (&conn).write_all(b"ok\n").unwrap();
    let out = waiting.wait_with_output().unwrap();
    // No VM behind the record: the exec fails at the agent, not at the state check.
    assert_eq!(out.status.code(), Some(1));
    let msg = logged_msg(&text(&out.stderr), "error");
    assert!(!msg.contains("paused"), "{msg}");
    let _ = monitor.kill();
    let _ = monitor.wait();
}
