//! What the podman and containerd lab tests share: the runtimes under test, the offline
//! busybox image as an OCI archive, and where a container ran.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The OCI runtime binaries under test: runc (the baseline, which proves the harness) and
/// crx-runc (every container in a microVM).
pub fn runtimes() -> Vec<(&'static str, String)> {
    vec![
        ("runc", "/usr/bin/runc".to_string()),
        ("crx-runc", env!("CARGO_BIN_EXE_crx-runc").to_string()),
    ]
}

/// Writes the offline busybox image (Debian's busybox-static) named `name` as an OCI archive
/// (a tar of an OCI layout) in `dir`; returns its path.
pub fn busybox_archive(dir: &Path, name: &str) -> PathBuf {
    let layout = dir.join("layout");
    crx_image::busybox::build_busybox_layout(
        Path::new(crx_image::busybox::DEFAULT_BUSYBOX),
        &layout,
        name,
    )
    .unwrap();
    let archive = dir.join("busybox.tar");
    let tar = Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&archive)
        .arg(".")
        .status()
        .unwrap();
    assert!(tar.success());
    archive
}

/// The kernel command line a container sees tells where it ran: runc's containers share the
/// lab host's kernel (`crxlab.*` parameters), crx-runc's run on their microVM's guest kernel
/// (crx-vmm's `virtio_mmio.device=` parameters, no `crxlab.`).
pub fn assert_ran_where_expected(runtime: &str, cmdline: &str) {
    if runtime == "runc" {
        assert!(cmdline.contains("crxlab."), "runc: {cmdline}");
    } else {
        assert!(
            !cmdline.contains("crxlab.") && cmdline.contains("virtio_mmio.device="),
            "{runtime}: not in a microVM? /proc/cmdline: {cmdline}"
        );
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
