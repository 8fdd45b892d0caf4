//! Where things are: the state root, the boot artefacts, the VMM binary.

use std::env;
use std::path::{Path, PathBuf};

use crate::error::RuntimeError;

/// The default state root.
pub const DEFAULT_ROOT: &str = "/var/lib/crx";

/// The guest kernel and base initrd every VM boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootFiles {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

/// Candidate boot directories, in order: `$CRX_BOOT_DIR`, `$CRX_CACHE/boot`,
/// `/var/cache/crx/boot`.
pub fn boot_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = env::var_os("CRX_BOOT_DIR") {
        dirs.push(PathBuf::from(d));
    }
    if let Some(c) = env::var_os("CRX_CACHE") {
        dirs.push(PathBuf::from(c).join("boot"));
    }
    dirs.push(PathBuf::from("/var/cache/crx/boot"));
    dirs
}

/// The first directory of `dirs` holding both `vmlinux` and `base.cpio`.
pub fn find_boot_files_in(dirs: &[PathBuf]) -> Result<BootFiles, RuntimeError> {
    for d in dirs {
        let kernel = d.join("vmlinux");
        let initrd = d.join("base.cpio");
        if kernel.is_file() && initrd.is_file() {
            return Ok(BootFiles { kernel, initrd });
        }
    }
    let missing = dirs
        .iter()
        .map(|d| format!("{}/{{vmlinux,base.cpio}}", d.display()))
        .collect::<Vec<_>>()
        .join(", ");
    Err(RuntimeError::BootFilesMissing { missing })
}

/// The boot files, found as [`boot_dirs`] says.
pub fn find_boot_files() -> Result<BootFiles, RuntimeError> {
    find_boot_files_in(&boot_dirs())
}

/// `crx-vmm`: `$CRX_VMM`, else next to the running executable (or one directory up, for test
/// binaries in `target/debug/deps`).
pub fn find_vmm() -> Result<PathBuf, RuntimeError> {
    if let Some(p) = env::var_os("CRX_VMM") {
        return Ok(PathBuf::from(p));
    }
    let exe = env::current_exe().unwrap_or_else(|_| PathBuf::from("crx"));
    let dir = exe.parent().unwrap_or(Path::new("."));
    for d in [Some(dir), dir.parent()].into_iter().flatten() {
        let p = d.join("crx-vmm");
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(RuntimeError::VmmMissing { exe })
}

/// The image store under a state root.
pub fn images_dir(root: &Path) -> PathBuf {
    root.join("images")
}

/// The instance homes under a state root.
pub fn instances_dir(root: &Path) -> PathBuf {
    root.join("instances")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_files_first_complete_dir_wins() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        std::fs::write(a.path().join("vmlinux"), b"k").unwrap(); // no initrd: skipped
        std::fs::write(b.path().join("vmlinux"), b"k").unwrap();
        std::fs::write(b.path().join("base.cpio"), b"i").unwrap();
        let f = find_boot_files_in(&[a.path().into(), b.path().into()]).unwrap();
        assert_eq!(f.kernel, b.path().join("vmlinux"));
        assert_eq!(f.initrd, b.path().join("base.cpio"));
    }

    #[test]
    fn missing_boot_files_say_what_to_run() {
        let a = tempfile::tempdir().unwrap();
        let e = find_boot_files_in(&[a.path().into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("cargo xtask boot"), "{e}");
        assert!(e.contains("vmlinux"), "{e}");
    }
}
