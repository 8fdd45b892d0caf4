//! Busybox trees (a container's rootfs), OCI bundles of them, and initrds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crx_initrd::{parse_spec, WriteOptions};
use serde_json::{json, Value};

/// The applets a container rootfs links by default.
pub const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "sleep", "ls", "touch", "id", "pwd", "true", "hostname", "stty",
];

/// Makes `root` a busybox tree: `/bin/busybox` and `applets` linked to it, and `dirs`.
pub fn tree(root: &Path, dirs: &[&str], applets: &[&str]) {
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for d in dirs {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(crate::env::busybox(), bin.join("busybox")).unwrap();
    for a in applets {
        std::os::unix::fs::symlink("busybox", bin.join(a)).unwrap();
    }
}

/// An OCI bundle in `dir` running `args` in a busybox rootfs ([`APPLETS`], `/etc/motd`),
/// with proc, a /dev tmpfs, devpts and a read-only sysfs, in fresh pid, ipc, uts, mount and
/// network namespaces (crx-runc refuses the host's network); `patch` is merged into its config ([`crate::merge`]).
pub fn bundle(dir: &Path, args: &[&str], patch: Value) -> PathBuf {
    let rootfs = dir.join("rootfs");
    tree(
        &rootfs,
        &["proc", "dev", "sys", "tmp", "etc", "data"],
        APPLETS,
    );
    std::fs::write(rootfs.join("etc/motd"), "from the bundle\n").unwrap();
    let mut spec = json!({
        "ociVersion": "1.0.2",
        "process": {"terminal": false, "user": {"uid": 0, "gid": 0}, "args": args,
            "env": ["PATH=/bin", "TERM=xterm"], "cwd": "/"},
        "root": {"path": "rootfs", "readonly": false},
        "hostname": "crx-oci",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]}
        ],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"},
            {"type": "mount"}, {"type": "network"}]}
    });
    crate::merge(&mut spec, patch);
    std::fs::write(dir.join("config.json"), spec.to_string()).unwrap();
    dir.to_owned()
}

/// Writes `bytes` to `dir/name`; returns the path.
pub fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// The initrd `dir/name` built from crx-initrd spec lines `spec` (paths relative to `dir`;
/// `${BUSYBOX}` is /bin/busybox).
pub fn initrd(dir: &Path, name: &str, spec: &str) -> PathBuf {
    initrd_in(dir, name, spec, dir)
}

/// [`initrd`] with the spec's relative paths taken from `base`.
pub fn initrd_in(dir: &Path, name: &str, spec: &str, base: &Path) -> PathBuf {
    let defs = BTreeMap::from([(
        "BUSYBOX".to_string(),
        crate::env::busybox().display().to_string(),
    )]);
    let a = parse_spec(spec, base, &defs).unwrap_or_else(|e| panic!("initrd spec {name}: {e}"));
    let out = dir.join(name);
    std::fs::write(&out, a.to_bytes(WriteOptions::default()).unwrap()).unwrap();
    out
}

/// An `/init` shell script: mounts `mounts` (of proc, sys, dev, tmp), prints `CRX-INIT-START`,
/// runs `body`, prints `CRX-INIT-END` and reboots (the VM exits).
pub fn init_script(mounts: &[&str], body: &str) -> String {
    let mut s = String::from("#!/bin/sh\n");
    for m in mounts {
        s.push_str(match *m {
            "proc" => "mount -t proc proc /proc\n",
            "sys" => "mount -t sysfs sys /sys\n",
            "dev" => "mount -t devtmpfs dev /dev\n",
            "tmp" => "mount -t tmpfs tmp /tmp\n",
            other => panic!("init_script: unknown mount {other}"),
        });
    }
    s.push_str(&format!(
        "echo CRX-INIT-START\n{body}\necho CRX-INIT-END\nreboot -f\n"
    ));
    s
}

/// An initrd `dir/init.cpio` of busybox, the directories `dirs` and `script` as `/init`.
pub fn init_initrd(dir: &Path, dirs: &[&str], script: &str) -> PathBuf {
    let init = write(dir, "init.sh", script.as_bytes());
    let mut spec = String::from("busybox /bin/busybox ${BUSYBOX}\n");
    for d in dirs {
        spec.push_str(&format!("dir {d}\n"));
    }
    spec.push_str(&format!("file /init {} 0755\n", init.display()));
    initrd(dir, "init.cpio", &spec)
}

/// The busybox debug layer (`crates/initrd/layers/debug.spec`) as `dir/debug.cpio`.
pub fn debug_layer(dir: &Path) -> PathBuf {
    let layers = crate::env::workspace().join("crates/initrd/layers");
    let text = std::fs::read_to_string(layers.join("debug.spec")).unwrap();
    initrd_in(dir, "debug.cpio", &text, &layers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_scripts_mount_run_and_reboot() {
        let s = init_script(&["proc", "tmp"], "echo hi");
        assert_eq!(
            s,
            "#!/bin/sh\nmount -t proc proc /proc\nmount -t tmpfs tmp /tmp\n\
             echo CRX-INIT-START\necho hi\necho CRX-INIT-END\nreboot -f\n"
        );
    }
}
