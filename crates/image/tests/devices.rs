//! Device nodes of image layers reach the disk image but are never usable host devices: the
//! unpacker creates them only on a `nodev,nosuid` mount (crx_image::confine).

mod common;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::{require_tool, run, run_config, tmp_entries, Tar};
use crx_image::confine::{self, NodevMount};
use crx_image::layout::{LayerBlob, LayoutWriter};
use crx_image::unpack::unpack_layer;
use crx_image::Store;

/// Root is needed to create device nodes and mounts; CI runs the tiers as root.
fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test needs root (to create device nodes and mounts); run the tiers as root"
    );
}

fn device_layer() -> Vec<u8> {
    Tar::new()
        .dir("dev/", 0o755)
        .file(
            "dev/placeholder",
            "replaced by a device in the same layer\n",
        )
        .device("dev/placeholder", false, 1, 3)
        .device("dev/null0", false, 1, 3)
        .device("dev/sda0", true, 8, 0)
        .fifo("dev/fifo")
        .file_owned("bin-suid", "#!/bin/sh\n", 0o4755, 0, 0)
        .finish()
}

fn mounted_under(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().into_owned();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
        .filter(|m| m.starts_with(&dir))
        .collect()
}

#[test]
fn device_nodes_are_left_out_where_they_would_be_live() {
    let t = tempfile::tempdir().unwrap();
    assert!(!confine::is_inert(t.path()), "the test's tempdir is nodev");
    let stats = unpack_layer(t.path(), &device_layer()[..], None).unwrap();
    assert_eq!(stats.devices_left_out, 3);
    for name in ["dev/null0", "dev/sda0", "dev/placeholder"] {
        assert!(
            fs::symlink_metadata(t.path().join(name)).is_err(),
            "{name} was created on a mount where it is a live device"
        );
    }
    // FIFOs are no device: kept.
    assert!(fs::symlink_metadata(t.path().join("dev/fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
}

#[test]
fn device_nodes_on_a_nodev_mount_are_created_and_inert() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("rootfs");
    fs::create_dir(&root).unwrap();
    let mount = NodevMount::new(&root).unwrap();
    assert!(confine::is_inert(&root));
    let stats = unpack_layer(&root, &device_layer()[..], None).unwrap();
    assert_eq!(stats.devices_left_out, 0);
    let null0 = fs::symlink_metadata(root.join("dev/null0")).unwrap();
    assert!(null0.file_type().is_char_device());
    assert_eq!(null0.rdev(), rustix::fs::makedev(1, 3));
    assert!(fs::symlink_metadata(root.join("dev/sda0"))
        .unwrap()
        .file_type()
        .is_block_device());
    assert!(fs::symlink_metadata(root.join("dev/placeholder"))
        .unwrap()
        .file_type()
        .is_char_device());
    // The node is there, and opening it (as root) is refused: nodev.
    let err = fs::File::open(root.join("dev/null0")).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}");
    drop(mount);
    assert!(mounted_under(t.path()).is_empty());
}

#[test]
fn an_image_disk_keeps_its_device_nodes_and_the_store_leaves_no_mount() {
    require_root();
    let dump = require_tool("dump.erofs", "erofs-utils");
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("layout");
    let mut w = LayoutWriter::create(&layout).unwrap();
    w.add_image(
        Some("dev:1"),
        &run_config(&["/bin-suid"]),
        &[LayerBlob::tar(device_layer())],
    )
    .unwrap();
    w.finish().unwrap();
    let store_root = t.path().join("store");
    let store = Store::open(&store_root).unwrap();
    let img = store.import_oci_layout(&layout).unwrap().remove(0);
    let show = |path: &str| {
        run(Command::new(&dump)
            .arg(format!("--path={path}"))
            .arg(&img.disk_image))
    };
    assert!(
        show("/dev/null0").contains("char dev"),
        "{}",
        show("/dev/null0")
    );
    assert!(
        show("/dev/sda0").contains("block dev"),
        "{}",
        show("/dev/sda0")
    );
    // Set-user-ID bits survive the nosuid unpack mount (dump.erofs 1.5 does not show them).
    assert_eq!(
        common::disk_mode(img.disk_format, &img.disk_image, "/bin-suid"),
        0o4755
    );
    assert!(tmp_entries(&store_root).is_empty());
    assert!(mounted_under(&store_root).is_empty());
}

#[test]
fn gc_unmounts_the_unpack_tree_of_a_process_that_died() {
    require_root();
    let t = tempfile::tempdir().unwrap();
    let store = Store::open(t.path().join("store")).unwrap();
    let tree = store.root().join("tmp/disk-dead/rootfs");
    fs::create_dir_all(&tree).unwrap();
    // As a killed import leaves it: mounted, with a device node in it.
    std::mem::forget(NodevMount::new(&tree).unwrap());
    unpack_layer(&tree, &device_layer()[..], None).unwrap();
    fs::set_permissions(&tree, fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(mounted_under(store.root()).len(), 1);
    let r = store.gc(&[]).unwrap();
    assert_eq!(r.tmp_entries_removed, 1);
    assert!(mounted_under(store.root()).is_empty());
    assert!(tmp_entries(store.root()).is_empty());
}
