//! Image disks are private to the store's owner whatever the umask (its own test binary: the
//! umask is per process).

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;

use common::sample_layout;
use crx_image::{DiskFormat, Store, StoreOptions};

#[test]
fn disks_are_not_readable_by_other_users_whatever_the_umask() {
    rustix::process::umask(rustix::fs::Mode::empty());
    let t = tempfile::tempdir().unwrap();
    // Another user may walk to the disks; only the disks' own modes keep them out.
    fs::set_permissions(t.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let layout = t.path().join("layout");
    sample_layout(&layout, "app:1", "private\n");
    for format in [DiskFormat::Erofs, DiskFormat::Ext4] {
        let store = Store::open_with(
            t.path().join(format.extension()),
            StoreOptions {
                disk_format: format,
                ..StoreOptions::default()
            },
        )
        .unwrap();
        let img = store.import_oci_layout(&layout).unwrap().remove(0);
        let mode = fs::metadata(&img.disk_image).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{format} disk mode {mode:o}");
        if rustix::process::geteuid().is_root() {
            // As nobody (65534), through directories it may traverse.
            let out = Command::new("head")
                .args(["-c", "1"])
                .arg(&img.disk_image)
                .uid(65534)
                .gid(65534)
                .output()
                .unwrap();
            assert!(
                !out.status.success(),
                "another user read {}",
                img.disk_image.display()
            );
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // A disk left world-readable by an older version is made private when resolved.
        fs::set_permissions(&img.disk_image, fs::Permissions::from_mode(0o644)).unwrap();
        let again = store.resolve("app:1").unwrap();
        let mode = fs::metadata(&again.disk_image)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{format} disk mode {mode:o} after resolve");
    }
}
