//! Importing OCI layouts (directory, tar, gzipped tar) and docker archives, and the disk
//! image each import builds, checked with the file system's own tools.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use common::{extract_disk, require_tool, run, sample_layout, tar_dir, tmp_entries};
use crx_image::{DiskFormat, Image, Store, StoreError, StoreOptions};

/// The sample image's content, as the disk holds it.
fn check_disk(image: &Image, marker: &str) {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("x");
    extract_disk(image.disk_format, &image.disk_image, &out);
    assert_eq!(fs::read_to_string(out.join("etc/marker")).unwrap(), marker);
    assert_eq!(
        fs::read_to_string(out.join("etc/new")).unwrap(),
        "added in layer 2\n"
    );
    assert!(!out.join("etc/old").exists(), "whiteout applied");
    assert!(!out.join("etc/.wh.old").exists());
    let m = fs::metadata(out.join("srv/owned")).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1000, 1001, 0o640));
    assert_eq!(
        common::disk_mode(image.disk_format, &image.disk_image, "/bin/tool"),
        0o4755
    );
    assert_eq!(
        fs::read_link(out.join("bin/link")).unwrap(),
        Path::new("tool")
    );
    assert_eq!(
        fs::read_to_string(out.join("bin/hard")).unwrap(),
        "#!/bin/sh\necho tool\n"
    );
}

fn check_config(image: &Image) {
    let c = &image.config;
    assert_eq!(c.cmd, vec!["/bin/tool", "arg"]);
    assert!(c.entrypoint.is_empty());
    assert_eq!(c.env, vec!["PATH=/bin", "GREETING=hello"]);
    assert_eq!(c.working_dir.as_deref(), Some("/srv"));
    assert_eq!(c.user.as_deref(), Some("1000:1000"));
    assert_eq!((c.os.as_str(), c.architecture.as_str()), ("linux", "amd64"));
}

#[test]
fn oci_layout_directory_tar_and_gzip_tar() {
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("layout");
    let digest = sample_layout(&layout, "example.com/team/app:v1", "dir\n");
    let store = Store::open(t.path().join("store")).unwrap();

    let images = store.import_oci_layout(&layout).unwrap();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].manifest_digest, digest);
    check_config(&images[0]);
    check_disk(&images[0], "dir\n");

    let resolved = store.resolve("example.com/team/app:v1").unwrap();
    assert_eq!(resolved.manifest_digest, digest);
    assert_eq!(resolved.disk_image, images[0].disk_image);
    assert_eq!(
        store.resolve(&digest.to_string()).unwrap().manifest_digest,
        digest
    );
    assert_eq!(
        store.resolve(&digest.hex()[..12]).unwrap().manifest_digest,
        digest
    );

    // The same layout as a tar, named by its file when the ref name is a bare tag.
    let layout2 = t.path().join("layout2");
    let d2 = sample_layout(&layout2, "v2", "tar\n");
    let tar = t.path().join("myimage.tar");
    tar_dir(&layout2, &tar);
    let images = store.import_oci_layout(&tar).unwrap();
    assert_eq!(images[0].manifest_digest, d2);
    assert_eq!(
        images[0].reference.as_ref().unwrap().to_string(),
        "docker.io/library/myimage:v2"
    );
    check_disk(&images[0], "tar\n");

    // Gzipped tar, imported under a name given by the caller.
    let layout3 = t.path().join("layout3");
    sample_layout(&layout3, "latest", "gz\n");
    let plain = t.path().join("l3.tar");
    tar_dir(&layout3, &plain);
    run(Command::new("gzip").arg("-k").arg(&plain));
    let img = store
        .import_oci_layout_as(t.path().join("l3.tar.gz"), "local/gz:1")
        .unwrap();
    check_disk(&img, "gz\n");

    let names: Vec<String> = store
        .list()
        .unwrap()
        .iter()
        .map(|s| s.reference.to_string())
        .collect();
    assert_eq!(
        names,
        vec![
            "docker.io/library/myimage:v2",
            "docker.io/local/gz:1",
            "example.com/team/app:v1"
        ]
    );
    assert!(tmp_entries(store.root()).is_empty());
}

#[test]
fn docker_archive_made_by_skopeo() {
    let skopeo = require_tool("skopeo", "skopeo");
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("layout");
    sample_layout(&layout, "v1", "docker\n");
    let archive = t.path().join("docker.tar");
    run(Command::new(skopeo)
        .args(["--insecure-policy", "copy", "--quiet"])
        .arg(format!("oci:{}:v1", layout.display()))
        .arg(format!("docker-archive:{}:team/app:v1", archive.display())));
    let store = Store::open(t.path().join("store")).unwrap();
    let images = store.import_docker_archive(&archive).unwrap();
    assert_eq!(images.len(), 1);
    check_config(&images[0]);
    check_disk(&images[0], "docker\n");
    let img = store.resolve("team/app:v1").unwrap();
    assert_eq!(img.manifest_digest, images[0].manifest_digest);
    // Importing it again finds everything in place.
    let again = store.import_docker_archive(&archive).unwrap();
    assert_eq!(again[0].manifest_digest, images[0].manifest_digest);
    assert_eq!(store.list().unwrap().len(), 1);
}

#[test]
fn ext4_disks() {
    require_tool("mke2fs", "e2fsprogs");
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("layout");
    sample_layout(&layout, "app:ext4", "ext4\n");
    let store = Store::open_with(
        t.path().join("store"),
        StoreOptions {
            disk_format: DiskFormat::Ext4,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    let images = store.import_oci_layout(&layout).unwrap();
    assert_eq!(images[0].disk_format, DiskFormat::Ext4);
    assert!(images[0].disk_image.to_string_lossy().ends_with(".ext4"));
    check_disk(&images[0], "ext4\n");
}

#[test]
fn busybox_offline_image() {
    let busybox = Path::new(crx_image::busybox::DEFAULT_BUSYBOX);
    if !busybox.is_file() {
        panic!("/bin/busybox is missing: install the Debian package busybox-static");
    }
    require_tool("mkfs.erofs", "erofs-utils");
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("busybox");
    let digest = crx_image::build_busybox_layout(busybox, &layout, "busybox:latest").unwrap();
    // Reproducible.
    let again =
        crx_image::build_busybox_layout(busybox, &t.path().join("b2"), "busybox:latest").unwrap();
    assert_eq!(digest, again);
    let store = Store::open(t.path().join("store")).unwrap();
    store.import_oci_layout(&layout).unwrap();
    let img = store.resolve("busybox").unwrap();
    // The one-call form gives the same image.
    let direct = store.import_busybox(busybox, "busybox:direct").unwrap();
    assert_eq!(direct.manifest_digest, img.manifest_digest);
    assert_eq!(direct.disk_image, img.disk_image);
    assert!(tmp_entries(store.root()).is_empty());
    assert_eq!(img.config.cmd, vec!["sh"]);
    let out = t.path().join("x");
    extract_disk(img.disk_format, &img.disk_image, &out);
    assert_eq!(
        fs::read_link(out.join("bin/sh")).unwrap(),
        Path::new("/bin/busybox")
    );
    assert!(fs::metadata(out.join("bin/busybox")).unwrap().len() > 500_000);
    assert_eq!(
        common::disk_mode(img.disk_format, &img.disk_image, "/tmp"),
        0o1777
    );
    // The extracted busybox runs.
    let echo = run(Command::new(out.join("bin/busybox")).args(["echo", "hi"]));
    assert_eq!(echo, "hi\n");
}

#[test]
fn not_a_layout_and_unknown_images_are_clear_errors() {
    let t = tempfile::tempdir().unwrap();
    let store = Store::open(t.path().join("store")).unwrap();
    let e = store.import_oci_layout(t.path()).unwrap_err();
    assert!(
        format!("{e:#}").contains("import") && matches!(e, StoreError::Layout(_)),
        "{e}"
    );
    let e = store.resolve("nosuch:tag").unwrap_err();
    assert!(matches!(e, StoreError::NotFound(_)), "{e}");
    assert!(e.to_string().contains("nosuch:tag"), "{e}");
    let e = store.resolve("Bad Ref").unwrap_err();
    assert!(matches!(e, StoreError::Reference(_)), "{e}");
    // A layout that names no image.
    let unnamed = t.path().join("unnamed");
    let mut w = crx_image::layout::LayoutWriter::create(&unnamed).unwrap();
    w.add_image(
        None,
        &common::run_config(&["x"]),
        &common::sample_layers("u"),
    )
    .unwrap();
    w.finish().unwrap();
    let e = store.import_oci_layout(&unnamed).unwrap_err();
    assert!(matches!(e, StoreError::Unnamed(_)), "{e}");
    assert!(store.list().unwrap().is_empty());
    store.import_oci_layout_as(&unnamed, "named:1").unwrap();
    store.resolve("named:1").unwrap();
    let e = store.remove("nosuch").unwrap_err();
    assert!(matches!(e, StoreError::NotFound(_)), "{e}");
}
