use std::cell::Cell;
use std::os::unix::fs::PermissionsExt;

use super::*;

thread_local! {
    /// How many files [`hash_file`] read on this thread (each test runs on its own).
    pub(super) static HASHED: Cell<u64> = const { Cell::new(0) };
}

/// Verification without a signing key, whatever this machine configures (the signature's own
/// tests are in `signature/tests.rs`).
fn verify(boot: &BootFiles, cache: Option<&Path>) -> Result<VerifiedBoot, BootFileError> {
    verify_with_key(boot, cache, None)
}

fn hashed() -> u64 {
    HASHED.with(Cell::get)
}

/// A boot directory with a kernel, an initrd and their manifest.
pub(super) fn boot_dir(dir: &Path) -> BootFiles {
    std::fs::write(dir.join("vmlinux"), b"the kernel").unwrap();
    std::fs::write(dir.join("base.cpio"), b"the initrd").unwrap();
    write_manifest(dir).unwrap();
    BootFiles {
        kernel: dir.join("vmlinux"),
        initrd: dir.join("base.cpio"),
    }
}

fn sha(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

#[test]
fn verified_files_carry_their_digests_and_the_cache_spares_a_second_read() {
    let d = tempfile::tempdir().unwrap();
    let files = boot_dir(d.path());
    let manifest = std::fs::read_to_string(d.path().join(MANIFEST)).unwrap();
    assert_eq!(
        manifest,
        format!(
            "{}  vmlinux\n{}  base.cpio\n",
            sha(b"the kernel"),
            sha(b"the initrd")
        )
    );
    let cache = cache_path(d.path());

    let n = hashed();
    let v = verify(&files, Some(&cache)).unwrap();
    assert_eq!(hashed() - n, 2, "both files read the first time");
    assert!(!v.kernel.cached && !v.initrd.cached);
    assert_eq!(v.kernel.sha256, sha(b"the kernel"));
    assert_eq!(v.digests().initrd.sha256, sha(b"the initrd"));
    assert_eq!(v.digests().initrd.path, files.initrd);
    let mode = std::fs::metadata(&cache).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    let n = hashed();
    let again = verify(&files, Some(&cache)).unwrap();
    assert_eq!(hashed() - n, 0, "the second verification reads no file");
    assert!(again.kernel.cached && again.initrd.cached);
    assert_eq!(again.digests(), v.digests());
}

#[test]
fn a_tampered_initrd_is_refused_in_one_line_naming_it_and_both_digests() {
    let d = tempfile::tempdir().unwrap();
    let files = boot_dir(d.path());
    let cache = cache_path(d.path());
    verify(&files, Some(&cache)).unwrap();
    // Same size, same mtime: only the ctime tells the cached identity apart.
    let mtime = std::fs::metadata(&files.initrd)
        .unwrap()
        .modified()
        .unwrap();
    std::fs::write(&files.initrd, b"evil initrd").unwrap();
    std::fs::write(&files.initrd, b"THE INITRD").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&files.initrd)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let e = verify(&files, Some(&cache)).unwrap_err();
    assert!(matches!(e, BootFileError::DigestMismatch { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(!msg.contains('\n'), "{msg}");
    assert!(msg.contains(&files.initrd.display().to_string()), "{msg}");
    assert!(msg.contains(&sha(b"the initrd")), "expected digest: {msg}");
    assert!(msg.contains(&sha(b"THE INITRD")), "actual digest: {msg}");
}

#[test]
fn a_world_writable_boot_file_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let files = boot_dir(d.path());
    crate::paths::set_mode(&files.kernel, 0o666).unwrap();
    let e = verify(&files, None).unwrap_err();
    assert!(matches!(e, BootFileError::WorldWritable { .. }), "{e:?}");
    assert!(e.to_string().contains("vmlinux"), "{e}");
}

#[test]
fn a_foreign_owned_boot_file_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let files = boot_dir(d.path());
    // Tier 1 runs as root (docs/environment): nobody's file is neither root's nor ours.
    std::os::unix::fs::chown(&files.initrd, Some(65534), Some(65534)).unwrap();
    let e = verify(&files, None).unwrap_err();
    assert!(
        matches!(e, BootFileError::ForeignOwner { owner: 65534, .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("base.cpio"), "{e}");
}

#[test]
fn a_foreign_owned_manifest_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let files = boot_dir(d.path());
    std::os::unix::fs::chown(d.path().join(MANIFEST), Some(65534), None).unwrap();
    let e = verify(&files, None).unwrap_err();
    assert!(matches!(e, BootFileError::ForeignOwner { .. }), "{e:?}");
}

#[test]
fn a_rename_over_the_verified_file_leaves_the_verified_one_open() {
    let d = tempfile::tempdir().unwrap();
    let files = boot_dir(d.path());
    let v = verify(&files, None).unwrap();
    let evil = d.path().join("evil");
    std::fs::write(&evil, b"evil initrd").unwrap();
    std::fs::rename(&evil, &files.initrd).unwrap();
    // What the VMM opens is still the verified file...
    assert_eq!(std::fs::read(v.initrd.vmm_path()).unwrap(), b"the initrd");
    // ...and the next start refuses the swapped-in one.
    let e = verify(&files, None).unwrap_err();
    assert!(matches!(e, BootFileError::DigestMismatch { .. }), "{e:?}");
}

#[test]
fn a_boot_dir_without_a_manifest_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let files = boot_dir(d.path());
    std::fs::remove_file(d.path().join(MANIFEST)).unwrap();
    let e = verify(&files, None).unwrap_err();
    assert!(matches!(e, BootFileError::NoManifest { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains(MANIFEST) && msg.contains("cargo xtask boot"),
        "{msg}"
    );
}

#[test]
fn a_file_missing_from_the_manifest_or_a_bad_line_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let files = boot_dir(d.path());
    let m = d.path().join(MANIFEST);
    std::fs::write(&m, format!("{}  vmlinux\n", sha(b"the kernel"))).unwrap();
    let e = verify(&files, None).unwrap_err();
    assert!(
        matches!(&e, BootFileError::NotInManifest { name, .. } if name == "base.cpio"),
        "{e:?}"
    );
    std::fs::write(&m, "deadbeef  vmlinux\n").unwrap();
    let e = verify(&files, None).unwrap_err();
    assert!(
        matches!(e, BootFileError::BadManifest { line: 1, .. }),
        "{e:?}"
    );
    // sha256sum's binary mode marker is accepted.
    std::fs::write(
        &m,
        format!(
            "{} *vmlinux\n{}  base.cpio\n",
            sha(b"the kernel"),
            sha(b"the initrd")
        ),
    )
    .unwrap();
    verify(&files, None).unwrap();
}

#[test]
fn a_cache_writable_by_others_is_ignored() {
    let d = tempfile::tempdir().unwrap();
    let files = boot_dir(d.path());
    let cache = cache_path(d.path());
    verify(&files, Some(&cache)).unwrap();
    crate::paths::set_mode(&cache, 0o666).unwrap();
    let n = hashed();
    let v = verify(&files, Some(&cache)).unwrap();
    assert!(!v.kernel.cached && !v.initrd.cached);
    assert_eq!(hashed() - n, 2);
}

/// As `cargo xtask boot` publishes them: `boot` a symlink to the directory, `vmlinux` a symlink
/// into the kernel cache. The recorded paths are in the resolved directory.
#[test]
fn a_published_boot_dir_verifies_through_its_symlinks() {
    let d = tempfile::tempdir().unwrap();
    let kernels = d.path().join("kernels");
    let real = d.path().join("boot-1234");
    std::fs::create_dir(&kernels).unwrap();
    std::fs::create_dir(&real).unwrap();
    std::fs::write(kernels.join("vmlinux"), b"the kernel").unwrap();
    std::os::unix::fs::symlink(kernels.join("vmlinux"), real.join("vmlinux")).unwrap();
    std::fs::write(real.join("base.cpio"), b"the initrd").unwrap();
    write_manifest(&real).unwrap();
    std::os::unix::fs::symlink("boot-1234", d.path().join("boot")).unwrap();
    let link = d.path().join("boot");
    let files = BootFiles {
        kernel: link.join("vmlinux"),
        initrd: link.join("base.cpio"),
    };
    let v = verify(&files, Some(&cache_path(&link))).unwrap();
    let real = std::fs::canonicalize(&real).unwrap();
    assert_eq!(v.kernel.path, real.join("vmlinux"));
    assert_eq!(v.kernel.sha256, sha(b"the kernel"));
    assert!(real.join(CACHE_FILE).is_file());
}
