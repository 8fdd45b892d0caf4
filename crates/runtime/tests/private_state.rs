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
                        "user": {"uid": 0, "gid": 0}}}"#,
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
