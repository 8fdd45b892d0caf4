//! The command line without VMs: errors, exit codes, empty listings. No KVM needed.

use std::path::Path;
use std::process::{Command, Output};

fn crx(root: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_crx"))
        .arg("--root")
        .arg(root)
        .args(args)
        .env_remove("CRX_ROOT")
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn unknown_image_is_a_one_line_125() {
    let dir = tempfile::tempdir().unwrap();
    let out = crx(dir.path(), &["run", "nope:1", "true"]);
    assert_eq!(out.status.code(), Some(125));
    let e = stderr(&out);
    assert!(e.starts_with("crx: image nope:1 not found"), "{e}");
    assert_eq!(e.lines().count(), 1, "{e}");
    // No partial state.
    let homes = dir.path().join("instances");
    assert!(!homes.exists() || std::fs::read_dir(homes).unwrap().count() == 0);
}

/// `run -d` starts in a monitor (the runtime's): its failure comes back over the monitor's
/// pipe as the same one line, and nothing is left.
#[test]
fn detached_unknown_image_is_the_monitors_one_line_125() {
    let dir = tempfile::tempdir().unwrap();
    let out = crx(dir.path(), &["run", "-d", "--rm", "nope:1", "true"]);
    assert_eq!(out.status.code(), Some(125));
    let e = stderr(&out);
    assert!(e.starts_with("crx: image nope:1 not found"), "{e}");
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(out.stdout.is_empty(), "no id printed");
    let homes = dir.path().join("instances");
    assert!(!homes.exists() || std::fs::read_dir(homes).unwrap().count() == 0);
}

#[test]
fn bad_reference_is_125() {
    let dir = tempfile::tempdir().unwrap();
    let out = crx(dir.path(), &["run", "UPPER/Case::x", "true"]);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
}

#[test]
fn unknown_instance_says_how_to_list() {
    let dir = tempfile::tempdir().unwrap();
    for cmd in [
        &["kill", "abc"][..],
        &["rm", "abc"],
        &["logs", "abc"],
        &["inspect", "abc"],
        &["exec", "abc", "true"],
    ] {
        let out = crx(dir.path(), cmd);
        assert_eq!(out.status.code(), Some(125), "{cmd:?}");
        assert!(
            stderr(&out).contains("crx ps -a"),
            "{cmd:?}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn empty_listings() {
    let dir = tempfile::tempdir().unwrap();
    let ps = crx(dir.path(), &["ps", "-a"]);
    assert!(ps.status.success());
    assert_eq!(String::from_utf8_lossy(&ps.stdout).lines().count(), 1);
    let gc = crx(dir.path(), &["gc"]);
    assert!(gc.status.success(), "{}", stderr(&gc));
    let images = crx(dir.path(), &["images"]);
    assert!(images.status.success(), "{}", stderr(&images));
}

#[test]
fn load_without_source_says_what_to_give() {
    let dir = tempfile::tempdir().unwrap();
    let out = crx(dir.path(), &["load"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("--busybox"), "{}", stderr(&out));
    let out = crx(dir.path(), &["load", "/no/such/archive.tar"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("no such file"), "{}", stderr(&out));
    let junk = dir.path().join("junk.tar");
    std::fs::write(&junk, b"junk").unwrap();
    let out = crx(dir.path(), &["load", junk.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("neither an OCI layout"),
        "{}",
        stderr(&out)
    );
    assert_eq!(stderr(&out).lines().count(), 1);
}

/// `load DIR` (an OCI layout), `images`, `rmi`, `gc --images`: no VM involved.
#[test]
fn load_layout_list_remove() {
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.exists(),
        "this test needs /bin/busybox (apt-get install busybox-static)"
    );
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    crx_image::build_busybox_layout(busybox, &layout, "bb:1").unwrap();
    let root = dir.path().join("root");
    let out = crx(&root, &["load", layout.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("loaded bb:1 sha256:"));
    let images = String::from_utf8_lossy(&crx(&root, &["images"]).stdout).into_owned();
    assert!(images.contains("bb:1"), "{images}");
    let out = crx(&root, &["rmi", "bb:1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = crx(&root, &["gc", "--images"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 disks"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let images = String::from_utf8_lossy(&crx(&root, &["images"]).stdout).into_owned();
    assert!(!images.contains("bb:1"), "{images}");
    let out = crx(&root, &["run", "bb:1", "true"]);
    assert_eq!(out.status.code(), Some(125));
}

#[test]
fn too_long_a_root_is_refused_before_any_vm() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("r".repeat(100));
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.exists(),
        "this test needs /bin/busybox (apt-get install busybox-static)"
    );
    let out = crx(&root, &["load", "--busybox"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Stand-in boot files with their manifest: they pass verification, the root is refused.
    let boot = dir.path().join("boot");
    std::fs::create_dir(&boot).unwrap();
    std::fs::write(boot.join("vmlinux"), "kernel").unwrap();
    std::fs::write(boot.join("base.cpio"), "initrd").unwrap();
    crx_runtime::boot_files::write_manifest(&boot).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_crx"))
        .arg("--root")
        .arg(&root)
        .args(["run", "busybox", "true"])
        .env_remove("CRX_ROOT")
        .env("CRX_BOOT_DIR", &boot)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("shorter --root"), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_dir(root.join("instances"))
            .unwrap()
            .filter(|e| !e
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with('.'))
            .count(),
        0
    );
}

/// `inspect` shows the measured boot: the boot files and digests the instance's state recorded.
#[test]
fn inspect_shows_the_boot_digests() {
    use crx_runtime::boot_files::{BootDigest, BootDigests};
    let dir = tempfile::tempdir().unwrap();
    let mut home =
        crx_runtime::Home::create(dir.path(), Some("m"), "busybox", "sha256:0", vec![]).unwrap();
    let digests = BootDigests {
        kernel: BootDigest {
            path: "/boot/vmlinux".into(),
            sha256: "a".repeat(64),
        },
        initrd: BootDigest {
            path: "/boot/base.cpio".into(),
            sha256: "b".repeat(64),
        },
    };
    home.state.boot = Some(digests.clone());
    home.save().unwrap();
    let out = crx(dir.path(), &["inspect", "m"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["boot"], serde_json::to_value(&digests).unwrap());
    assert_eq!(v["boot"]["initrd"]["sha256"], "b".repeat(64));
    assert_eq!(v["state"]["boot"], v["boot"]);
}

/// A VMM started without seccomp (`CRX_SECCOMP=0`) is shown as such: `inspect` prints the
/// instance's confinement record, `check` names the instance.
#[test]
fn inspect_and_check_show_a_vmm_started_without_seccomp() {
    use crx_runtime::jail::{Confinement, JailRecord};
    let dir = tempfile::tempdir().unwrap();
    let home =
        crx_runtime::Home::create(dir.path(), Some("m"), "busybox", "sha256:0", vec![]).unwrap();
    let record = Confinement {
        seccomp: false,
        jail: Some(JailRecord {
            jailer: "/usr/bin/crx-jailer".into(),
            uid: 0x5000_0007,
            root: home.dir.join("vm"),
        }),
        cgroup: None,
        cgroup_off: Some("no cgroup2 hierarchy at /sys/fs/cgroup".into()),
    };
    record.save(&home.dir).unwrap();
    let out = crx(dir.path(), &["inspect", "m"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["confinement"], serde_json::to_value(&record).unwrap());
    assert_eq!(v["confinement"]["seccomp"], false);
    let out = crx(dir.path(), &["check"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let id: String = home.state.id.chars().take(12).collect();
    assert!(
        text.contains(&format!(
            "unconfined instances: started without a layer: {id} (no seccomp)"
        )),
        "{text}"
    );
}
