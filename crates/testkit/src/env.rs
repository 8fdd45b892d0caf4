//! What a lab test needs from the lab, checked: a missing piece is a failure saying what to
//! do, never a skip.

use std::path::{Path, PathBuf};

/// Where `cargo xtask boot` publishes the guest kernel and the base initrd.
pub const BOOT_DIR: &str = "/var/cache/crx/boot";

/// The workspace's root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Panics unless `/dev/kvm` exists (inside the nested lab).
pub fn require_kvm() {
    assert!(
        Path::new("/dev/kvm").exists(),
        "/dev/kvm is missing: run lab tests inside the nested lab \
         (`target/debug/xtask lab -- TEST-BINARY lab_`)"
    );
}

/// `/bin/busybox`, checked.
pub fn busybox() -> &'static Path {
    let b = Path::new("/bin/busybox");
    assert!(
        b.is_file(),
        "/bin/busybox is missing (apt package busybox-static)"
    );
    b
}

/// The project's guest kernel `name` (`vmlinux` or `bzImage`) from `$CRX_GUEST_KERNEL_DIR`
/// (set by the lab), with /dev/kvm checked.
pub fn guest_kernel(name: &str) -> PathBuf {
    let dir = std::env::var_os("CRX_GUEST_KERNEL_DIR").expect(
        "CRX_GUEST_KERNEL_DIR is not set: run lab tests inside the nested lab \
         (`target/debug/xtask lab -- TEST-BINARY lab_`)",
    );
    let k = Path::new(&dir).join(name);
    assert!(
        k.is_file(),
        "{} is missing (the guest kernel may be rebuilding: see /var/cache/crx/kernels/)",
        k.display()
    );
    require_kvm();
    k
}

/// The boot files (`vmlinux`, `base.cpio` with crx-init) from `$CRX_BOOT_DIR`, else
/// [`BOOT_DIR`], with /dev/kvm checked.
pub fn boot_files() -> (PathBuf, PathBuf) {
    let dir = std::env::var_os("CRX_BOOT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(BOOT_DIR));
    let kernel = dir.join("vmlinux");
    let base = dir.join("base.cpio");
    for f in [&kernel, &base] {
        assert!(
            f.is_file(),
            "{} is missing: run `cargo xtask boot` first (lab tests need the guest kernel and base initrd)",
            f.display()
        );
    }
    require_kvm();
    (kernel, base)
}

/// The crx-vmm binary: `$CRX_VMM`, else `target/debug/crx-vmm` (`cargo build -p crx-vmm`).
pub fn vmm_binary() -> PathBuf {
    let p = std::env::var_os("CRX_VMM")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/debug/crx-vmm"));
    assert!(
        p.is_file(),
        "{} is missing: `cargo build -p crx-vmm` (or set CRX_VMM)",
        p.display()
    );
    p
}
