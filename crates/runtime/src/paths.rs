//! Where things are: the state root, the boot artefacts, the VMM binary.

use std::env;
use std::path::{Path, PathBuf};

use crate::boot_files::{self, VerifiedBoot};
use crate::error::RuntimeError;

/// The default state root.
pub const DEFAULT_ROOT: &str = "/var/lib/crx";

/// The guest kernel and base initrd every VM boots, as found (not yet verified: see
/// [`verified_boot_files`]).
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

/// The boot files ([`find_boot_files`]) verified against their directory's manifest and held
/// open ([`boot_files::verify`]), with the digest cache of their directory.
pub fn verified_boot_files() -> Result<VerifiedBoot, RuntimeError> {
    let files = find_boot_files()?;
    let dir = files.kernel.parent().unwrap_or(Path::new("."));
    Ok(boot_files::verify(
        &files,
        Some(&boot_files::cache_path(dir)),
    )?)
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

/// Longest Unix socket path (`sun_path` less the NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// Fails with [`RuntimeError::SocketPathTooLong`] on the first of `paths` that a Unix socket
/// cannot have (checked before anything is made).
pub fn check_socket_paths<'a>(
    paths: impl IntoIterator<Item = &'a Path>,
) -> Result<(), RuntimeError> {
    match paths
        .into_iter()
        .find(|p| p.as_os_str().len() > MAX_SOCKET_PATH)
    {
        Some(p) => Err(RuntimeError::SocketPathTooLong(p.to_owned())),
        None => Ok(()),
    }
}

/// The image store under a state root.
pub fn images_dir(root: &Path) -> PathBuf {
    root.join("images")
}

/// The instance homes under a state root.
pub fn instances_dir(root: &Path) -> PathBuf {
    root.join("instances")
}

/// Makes the directory `dir`, and any missing parent, private (0700: only the owner reads,
/// writes or enters), whatever the umask; parents that exist keep their mode.
pub fn create_private_dir_all(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    set_mode(dir, 0o700)
}

/// Makes the new directory `dir` (its parent exists; `AlreadyExists` if it does) with mode
/// 0700, whatever the umask.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().mode(0o700).create(dir)?;
    set_mode(dir, 0o700)
}

/// Opens `path` for writing, created (or truncated) with mode 0600 whatever the umask, an
/// existing file's mode set to 0600 too.
pub fn create_private_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(f)
}

/// Writes `data` to `path` as a private file ([`create_private_file`]): state that may hold
/// the container's environment, i.e. secrets.
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    create_private_file(path)?.write_all(data)
}

/// Replaces `path` with `data` atomically and durably: a private temporary file in the same
/// directory ([`create_private_file`]), synced, renamed over it, the directory synced. A
/// writer killed at any point leaves the old content or the new, never a part.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = create_private_file(&tmp).and_then(|mut f| {
        f.write_all(data)?;
        f.sync_data()
    });
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    // The rename itself survives a crash of the machine too.
    let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    Ok(())
}

/// Sets the permission bits of `path`.
pub fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// Whether `path` is a mount point in this mount namespace (`/proc/self/mountinfo`).
pub(crate) fn is_mount_point(path: &Path) -> bool {
    let Ok(real) = std::fs::canonicalize(path) else {
        return false;
    };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let real = real.to_string_lossy();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| unescape_mountinfo(m) == real)
}

/// A mountinfo field with its octal escapes (`\040` for a space...) undone.
pub(crate) fn unescape_mountinfo(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], oct) {
            (b'\\', Some(d)) => {
                let v = d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
                out.push(v as u8);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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
