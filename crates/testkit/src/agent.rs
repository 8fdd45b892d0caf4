//! What a test hands the guest agent: a busybox ext4 disk, a container spec, an exec process.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A busybox tree in `dir/rootfs` for an agent test's disk.
pub fn busybox_tree(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    crate::busybox::tree(
        &root,
        &["proc", "dev", "sys", "tmp", "etc"],
        &["sh", "echo", "cat", "sleep", "hostname", "touch"],
    );
    root
}

/// An ext4 image of `tree` (mke2fs -d, e2fsprogs).
pub fn ext4_image(tree: &Path, out: &Path) {
    let st = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-d"])
        .arg(tree)
        .arg(out)
        .arg("16M")
        .status()
        .expect("mke2fs (apt package e2fsprogs)");
    assert!(st.success(), "mke2fs failed");
}

/// A minimal OCI runtime spec for the busybox tree, running `sh -c CMD`.
pub fn spec(cmd: &str) -> serde_json::Value {
    serde_json::json!({
        "ociVersion": "1.0.2",
        "process": exec_process(cmd),
        "root": {"path": "rootfs", "readonly": false},
        "hostname": "ctr",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "mode=755", "size=65536k"]}
        ],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]}
    })
}

/// The OCI `process` of a container or an exec: `sh -c CMD` as root in `/`.
pub fn exec_process(cmd: &str) -> serde_json::Value {
    serde_json::json!({
        "terminal": false,
        "user": {"uid": 0, "gid": 0},
        "args": ["/bin/sh", "-c", cmd],
        "env": ["PATH=/bin"],
        "cwd": "/"
    })
}

/// The rootfs of the busybox ext4 image on /dev/vda with a tmpfs writable layer.
pub fn rootfs_vda() -> crx_proto::Rootfs {
    crx_proto::Rootfs {
        device: "/dev/vda".into(),
        fs_type: "ext4".into(),
        writable: crx_proto::WritableLayer::Tmpfs { size_bytes: None },
    }
}
