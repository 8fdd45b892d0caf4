//! State that is private: `crx`'s instance homes and crx-runc's state root, container
//! directories and their files cannot be read by another local user, whatever the umask of
//! the process that made them. The state is made in a child run of this test with umask 0,
//! then read as `nobody` (uid 65534), which must fail. Needs root (as CI runs tier 1).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crx_runtime::home::Home;
use crx_runtime::oci::lifecycle;
use crx_runtime::SandboxFiles;

const CHILD_ENV: &str = "CRX_TEST_PRIVATE_STATE_DIR";
const NOBODY: u32 = 65534;

/// Whether `nobody` can read `path` (`cat` a file, `ls` a directory).
fn nobody_reads(path: &Path) -> bool {
    let tool = if path.is_dir() { "ls" } else { "cat" };
    Command::new(tool)
        .arg(path)
        .uid(NOBODY)
        .gid(NOBODY)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("running {tool} as uid {NOBODY} (needs root): {e}"))
        .success()
}

/// Makes an instance home and a crx-runc container under `base` with umask 0; returns the
/// paths that must be private.
fn make_state(base: &Path) -> Vec<PathBuf> {
    nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    // crx: a home and its spec.
    let root = base.join("crx");
    let home = Home::create(&root, Some("web"), "busybox", "sha256:ab", vec![]).unwrap();
    home.write_spec(&serde_json::json!({"process": {"env": ["SECRET=1"]}}))
        .unwrap();
    // crx-runc: a container as `create` prepares it for its monitor.
    let bundle = base.join("bundle");
    std::fs::create_dir_all(bundle.join("rootfs")).unwrap();
    std::fs::write(
        bundle.join("config.json"),
        r#"{"ociVersion": "1.0.2", "root": {"path": "rootfs"},
            "process": {"args": ["true"], "cwd": "/", "env": ["SECRET=1"],
                        "user": {"uid": 0, "gid": 0}},
            "linux": {"namespaces": [{"type": "network"}]}}"#,
    )
    .unwrap();
    let state_root = base.join("runc");
    let bundle = crx_runtime::oci::bundle::Bundle::load(&bundle).unwrap();
    let (created, _lock) = lifecycle::prepare(&state_root, "c1", &bundle).unwrap();
    let cdir = created.dir.clone();
    vec![
        root.join("instances"),
        home.dir.clone(),
        home.state_path(),
        home.config_path(),
        home.dir.join("../.lock"),
        state_root.clone(),
        cdir.clone(),
        cdir.join("config.json"),
        cdir.join("state.json"),
        cdir.join("lock"),
    ]
}

#[test]
fn state_is_private_whatever_the_umask() {
    if let Some(base) = std::env::var_os(CHILD_ENV) {
        let paths = make_state(Path::new(&base));
        println!();
        for p in paths {
            println!("PATH {}", p.display());
        }
        return;
    }
    let t = tempfile::tempdir().unwrap();
    // Everything above the state may be entered by anyone: only its own modes protect it.
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "state_is_private_whatever_the_umask",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_ENV, t.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let paths: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.strip_prefix("PATH "))
        .map(PathBuf::from)
        .collect();
    assert_eq!(paths.len(), 10, "{text}");
    // The check can fail: a world-readable file beside the state is read.
    let open = t.path().join("open");
    std::fs::write(&open, "x").unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(nobody_reads(&open), "the test cannot read as nobody at all");
    for p in &paths {
        let m = std::fs::metadata(p).unwrap();
        let want = if m.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(m.mode() & 0o777, want, "{}", p.display());
        assert!(!nobody_reads(p), "nobody read {}", p.display());
    }
}

const CONNECT_ENV: &str = "CRX_TEST_PRIVATE_STATE_CONNECT";

/// Run as another user by [`connects_as`]: connects to the socket `$CONNECT_ENV` and exits 0
/// when that worked, 13 when permission was denied, 1 otherwise.
#[test]
fn connect_probe_child() {
    let Some(path) = std::env::var_os(CONNECT_ENV) else {
        return;
    };
    let code = match std::os::unix::net::UnixStream::connect(&path) {
        Ok(_) => 0,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => 13,
        Err(_) => 1,
    };
    std::process::exit(code);
}

/// Whether `uid` (with the same gid) can connect to the socket `path`: this test binary
/// again, as that user.
fn connects_as(uid: u32, path: &Path) -> bool {
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "connect_probe_child", "--test-threads", "1"])
        .env(CONNECT_ENV, path)
        .uid(uid)
        .gid(uid)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("running the probe as uid {uid} (needs root): {e}"));
    match status.code() {
        Some(0) => true,
        Some(13) => false,
        other => panic!("the probe as uid {uid} on {}: {other:?}", path.display()),
    }
}

/// A jailed VM's sockets (ADR 0011), the hybrid-vsock socket in the jail's directory
/// (`HOME/vm`, the jail's user's, 0700) and a virtiofsd socket in the home given to the jail's
/// user, are reached on the host by the runtime (root) alone: not by another local user, not
/// by another sandbox's jail user, and not by the jail's own user through the host's paths
/// (the home above is root's, 0700; the VMM reaches them inside its jail).
#[test]
fn a_jails_sockets_are_reachable_by_the_runtime_alone() {
    let t = tempfile::tempdir().unwrap();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // crx-vmm and crx-jailer side by side (stand-ins: only their presence counts here).
    let bin = t.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    for f in ["crx-vmm", "crx-jailer"] {
        std::fs::write(bin.join(f), "").unwrap();
    }
    let home = Home::create(&t.path().join("crx"), None, "busybox", "sha256:ab", vec![]).unwrap();
    let vm_dir = home.dir.join("vm");
    let mut jail = crx_runtime::jail::VmJail::prepare(&vm_dir, &bin.join("crx-vmm")).unwrap();
    // The vsock socket as crx-vmm makes it in its jail: its user's, 0600.
    let vsock = home.vsock_path();
    assert_eq!(vsock.parent(), Some(vm_dir.as_path()));
    let _vsock = std::os::unix::net::UnixListener::bind(&vsock).unwrap();
    std::fs::set_permissions(&vsock, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&vsock, Some(jail.uid), Some(jail.uid)).unwrap();
    // A virtiofsd socket beside the state, given to the jail's user to bind it in.
    let fs_sock = home.dir.join("root.fs.sock");
    let _fs = std::os::unix::net::UnixListener::bind(&fs_sock).unwrap();
    jail.bind_socket(&fs_sock, 0).unwrap();

    let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
    assert_eq!(mode(&home.dir), 0o700);
    assert_eq!(mode(&vm_dir), 0o700);
    assert_eq!(std::fs::metadata(&vm_dir).unwrap().uid(), jail.uid);
    assert_eq!(mode(&vsock), 0o600);
    let other_sandbox = crx_runtime::jail::uid_for(&t.path().join("other/vm"));
    for sock in [&vsock, &fs_sock] {
        // The probe can fail: root, the runtime, connects.
        assert!(connects_as(0, sock), "root cannot reach {}", sock.display());
        for (who, uid) in [
            ("nobody", NOBODY),
            ("another sandbox's user", other_sandbox),
            ("the jail's own user, from the host", jail.uid),
        ] {
            assert!(!connects_as(uid, sock), "{who} reached {}", sock.display());
        }
    }
}
