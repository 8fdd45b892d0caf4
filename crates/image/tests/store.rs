//! Store guarantees: verified imports that leave nothing on failure, concurrent imports,
//! a killed import leaving nothing that looks complete, remove and gc.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::{assert_nothing_complete, sample_layout, tar_dir, tmp_entries};
use crx_image::blobs::BlobError;
use crx_image::layout::{LayerBlob, LayoutError, LayoutWriter};
use crx_image::{Store, StoreError};

fn first_layer(layout: &Path) -> std::path::PathBuf {
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let m = index["manifests"][0]["digest"].as_str().unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("blobs/sha256").join(&m[7..])).unwrap())
            .unwrap();
    let l = manifest["layers"][0]["digest"].as_str().unwrap();
    layout.join("blobs/sha256").join(&l[7..])
}

#[test]
fn corrupt_and_truncated_blobs_are_refused_leaving_nothing() {
    let t = tempfile::tempdir().unwrap();
    let store = Store::open(t.path().join("store")).unwrap();
    for (case, damage) in [
        (
            "corrupt",
            &(|b: &mut Vec<u8>| b[20] ^= 1) as &dyn Fn(&mut Vec<u8>),
        ),
        ("truncated", &|b: &mut Vec<u8>| b.truncate(b.len() - 10)),
    ] {
        let layout = t.path().join(case);
        sample_layout(&layout, "app:1", case);
        let layer = first_layer(&layout);
        let mut bytes = fs::read(&layer).unwrap();
        damage(&mut bytes);
        fs::write(&layer, &bytes).unwrap();

        let e = store.import_oci_layout(&layout).unwrap_err();
        let StoreError::Layout(LayoutError::Blob { source, .. }) = &e else {
            panic!("{case}: {e:?}");
        };
        assert!(
            matches!(
                source,
                BlobError::DigestMismatch { .. } | BlobError::SizeMismatch { .. }
            ),
            "{case}: {source}"
        );
        assert!(
            source.to_string().contains("nothing was stored"),
            "{source}"
        );
        assert_nothing_complete(&store);

        // The same layout as a tar archive: the blob name is its digest.
        let tar = t.path().join(format!("{case}.tar"));
        tar_dir(&layout, &tar);
        let e = store.import_oci_layout(&tar).unwrap_err();
        assert!(
            matches!(e, StoreError::Layout(LayoutError::Blob { .. })),
            "{case} tar: {e:?}"
        );
        assert_nothing_complete(&store);
    }
}

#[test]
fn concurrent_imports_of_one_image_end_with_one_copy() {
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("layout");
    let digest = sample_layout(&layout, "race:1", "race\n");
    let root = t.path().join("store");
    let n = 4;
    let barrier = Arc::new(Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let (root, layout, barrier) = (root.clone(), layout.clone(), barrier.clone());
            std::thread::spawn(move || {
                let store = Store::open(&root).unwrap();
                barrier.wait();
                store.import_oci_layout(&layout).unwrap()
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap()[0].manifest_digest, digest);
    }
    let store = Store::open(&root).unwrap();
    assert_eq!(store.list().unwrap().len(), 1);
    assert_eq!(fs::read_dir(root.join("disks")).unwrap().count(), 1);
    assert!(tmp_entries(&root).is_empty());
    assert_eq!(
        store.gc(&[]).unwrap(),
        Default::default(),
        "nothing to collect"
    );
}

#[test]
fn remove_and_gc() {
    let t = tempfile::tempdir().unwrap();
    let store = Store::open(t.path().join("store")).unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    let da = sample_layout(&a, "a:1", "a\n");
    let db = sample_layout(&b, "b:1", "b\n");
    store.import_oci_layout(&a).unwrap();
    store.import_oci_layout(&b).unwrap();
    store.import_oci_layout_as(&a, "a:alias").unwrap();
    let disk_a = store.resolve("a:1").unwrap().disk_image;
    let disk_b = store.resolve("b:1").unwrap().disk_image;

    // Leftovers of a killed operation.
    fs::create_dir_all(store.root().join("tmp/disk-dead/rootfs/etc")).unwrap();
    fs::write(store.root().join("tmp/blob-dead"), b"partial").unwrap();

    // Removing one of two names keeps the image.
    assert_eq!(store.remove("a:1").unwrap().len(), 1);
    let r = store.gc(&[]).unwrap();
    assert_eq!(
        (r.blobs_removed, r.disks_removed, r.tmp_entries_removed),
        (0, 0, 2)
    );
    assert!(disk_a.exists());
    // Removing by digest removes every name.
    assert_eq!(store.remove(&da.to_string()).unwrap().len(), 1);
    assert!(matches!(
        store.resolve("a:alias"),
        Err(StoreError::NotFound(_))
    ));
    store.remove("b:1").unwrap();
    // b is in use by an instance: kept.
    let r = store.gc(std::slice::from_ref(&db)).unwrap();
    assert_eq!(r.disks_removed, 1);
    assert!(!disk_a.exists());
    assert!(disk_b.exists());
    assert!(r.blobs_removed >= 3, "{r:?}");
    let r = store.gc(&[]).unwrap();
    assert_eq!(r.disks_removed, 1);
    assert!(store.blobs().list().unwrap().is_empty());
    assert!(!disk_b.exists());
}

#[test]
fn disk_is_rebuilt_when_missing() {
    let t = tempfile::tempdir().unwrap();
    let store = Store::open(t.path().join("store")).unwrap();
    let layout = t.path().join("l");
    sample_layout(&layout, "app:1", "x\n");
    let img = store.import_oci_layout(&layout).unwrap().remove(0);
    fs::remove_file(&img.disk_image).unwrap();
    let again = store.resolve("app:1").unwrap();
    assert!(again.disk_image.is_file());
}

const CHILD_ENV: &str = "CRX_IMAGE_CRASH_CHILD";

/// Run by `killed_import_leaves_nothing_that_looks_complete` in a child process.
#[test]
fn crash_child() {
    let Ok(args) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (root, layout) = args.split_once('|').unwrap();
    Store::open(root)
        .unwrap()
        .import_oci_layout(layout)
        .unwrap();
}

/// A layout with one plain layer holding `mib` MiB of incompressible data.
fn big_layout(layout: &Path, name: &str, mib: usize) {
    let mut data = Vec::with_capacity(mib << 20);
    let mut x: u64 = 0x9e3779b97f4a7c15;
    while data.len() < mib << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    let mut tb = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    tb.append_data(&mut h, "big", &data[..]).unwrap();
    let mut w = LayoutWriter::create(layout).unwrap();
    w.add_image(
        Some(name),
        &common::run_config(&["x"]),
        &[LayerBlob::tar(tb.into_inner().unwrap())],
    )
    .unwrap();
    w.finish().unwrap();
}

/// A tmpfs of `mib` MiB mounted on a tempdir; unmounted on drop.
struct SmallFs(tempfile::TempDir);

impl SmallFs {
    fn mount(mib: usize) -> Self {
        let d = tempfile::tempdir().unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(d.path())
            .status()
            .unwrap();
        assert!(
            st.success(),
            "mounting a tmpfs failed: this test needs root"
        );
        SmallFs(d)
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

#[test]
fn full_disk_is_a_clear_error_and_leaves_nothing() {
    let t = tempfile::tempdir().unwrap();
    // The blob does not fit.
    let big = t.path().join("big");
    big_layout(&big, "big:1", 8);
    let fs_small = SmallFs::mount(4);
    let store = Store::open(fs_small.0.path().join("store")).unwrap();
    let e = store.import_oci_layout(&big).unwrap_err();
    assert!(matches!(e, StoreError::NoSpace { .. }), "{e:?}");
    assert!(e.to_string().contains("no space left"), "{e}");
    assert_nothing_complete(&store);
    // The blob fits, the unpacked tree and disk do not.
    let mid = t.path().join("mid");
    big_layout(&mid, "mid:1", 2);
    let e = store.import_oci_layout(&mid).unwrap_err();
    assert!(matches!(e, StoreError::NoSpace { .. }), "{e:?}");
    assert_nothing_complete(&store);
}

#[test]
fn killed_import_leaves_nothing_that_looks_complete() {
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("big");
    big_layout(&layout, "big:1", 24);

    let root = t.path().join("store");
    let exe = std::env::current_exe().unwrap();
    for delay_ms in [20, 60, 120, 250, 1000] {
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture"])
            .env(
                CHILD_ENV,
                format!("{}|{}", root.display(), layout.display()),
            )
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let status = child.wait().unwrap();
        // Whatever point it died at: either no name, or a complete image behind the name.
        let store = Store::open(&root).unwrap();
        for s in store.list().unwrap() {
            let disk = s.disk_image.expect("a named image has its disk");
            assert!(disk.is_file());
        }
        if status.success() {
            break;
        }
        // gc clears the partial state.
        store.gc(&[]).unwrap();
        assert!(tmp_entries(&root).is_empty());
    }
    let store = Store::open(&root).unwrap();
    let img = store.import_oci_layout(&layout).unwrap().remove(0);
    assert!(img.disk_image.is_file());
}
