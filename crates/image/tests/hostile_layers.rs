//! Issue 16's crafted layers through the whole store (import, unpack, disk), not the unpacker
//! alone: every attack of the fuzz corpus (`crx_image::fuzzing::layer_corpus`) sits on top of
//! a lower layer whose symlinks point out of the root (absolutely, climbing, at a canary beside
//! the store). Each import is refused with one line or confined to its image; a canary outside
//! the store is untouched, a refusal leaves nothing, and the store imports and lists a good
//! image afterwards.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::{run_config, sample_layout, tmp_entries, Tar};
use crx_image::layout::{LayerBlob, LayoutWriter};
use crx_image::{ImageLimits, Store, StoreOptions};

const CANARY: &str = "canary: no layer may touch me\n";

/// The lower layer: symlinks out of the root, to `/`, climbing, and at the canary.
fn lower(outside: &Path) -> LayerBlob {
    let climb = format!("../../../../../../..{}", outside.display());
    LayerBlob::tar(
        Tar::new()
            .dir("a/", 0o755)
            .symlink("out", "/")
            .symlink("up", &climb)
            .symlink("canary", &outside.join("canary").to_string_lossy())
            .finish(),
    )
}

fn layout(dir: &Path, name: &str, layers: &[LayerBlob]) {
    let mut w = LayoutWriter::create(dir).unwrap();
    w.add_image(Some(name), &run_config(&["x"]), layers)
        .unwrap();
    w.finish().unwrap();
}

/// The canary's content, mode, link count and inode, and the outside folder's names.
fn outside_state(outside: &Path) -> (String, u32, u64, u64, Vec<String>) {
    let m = fs::symlink_metadata(outside.join("canary")).unwrap();
    let mut names: Vec<String> = fs::read_dir(outside)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    (
        fs::read_to_string(outside.join("canary")).unwrap(),
        m.mode(),
        m.nlink(),
        m.ino(),
        names,
    )
}

#[test]
fn crafted_layers_through_the_store_are_refused_or_confined_and_the_store_stays_usable() {
    let t = tempfile::tempdir().unwrap();
    let outside = t.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("canary"), CANARY).unwrap();
    let before = outside_state(&outside);
    // A layer limit below the corpus's 4 GiB sparse file: refused before a 4 GiB disk is
    // built (its holes kept within the limits: `limits.rs` `a_sparse_image_becomes_a_small_disk`).
    let limits = ImageLimits {
        max_layer_bytes: 1 << 30,
        ..ImageLimits::default()
    };
    let store = Store::open_with(
        t.path().join("store"),
        StoreOptions {
            limits,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    let refused_names = [
        "truncated",
        "dotdot",
        "dotdot deep",
        "absolute",
        "through lower dotdot symlink",
        "symlink out then file",
        "hardlink out",
        "hardlink through symlink",
        "whiteout dotdot",
        "whiteout naming dotdot",
        "whiteout naming dotdot deep",
        "huge sparse",
        "zstd garbage",
    ];
    let mut refused = 0;
    for (i, (name, archive)) in crx_image::fuzzing::layer_corpus().into_iter().enumerate() {
        let dir = t.path().join(format!("layout-{i}"));
        let image = format!("hostile:{i}");
        layout(&dir, &image, &[lower(&outside), LayerBlob::tar(archive)]);
        match store.import_oci_layout(&dir) {
            Ok(images) => {
                assert!(!refused_names.contains(&name), "{name}: imported");
                assert_eq!(images.len(), 1, "{name}");
                assert!(images[0].disk_image.is_file(), "{name}");
                store.remove(&image).unwrap();
            }
            Err(e) => {
                let msg = e.to_string();
                assert!(!msg.contains('\n'), "{name}: {msg}");
                refused += 1;
            }
        }
        assert_eq!(
            outside_state(&outside),
            before,
            "{name} touched the outside"
        );
        assert!(store.list().unwrap().is_empty(), "{name}");
        assert!(tmp_entries(store.root()).is_empty(), "{name}: half-written");
    }
    assert!(refused >= refused_names.len(), "{refused} refused");
    // The store is still usable: a good image imports, lists and has its disk.
    let good = t.path().join("good");
    sample_layout(&good, "good:1", "fine");
    let img = store.import_oci_layout(&good).unwrap().remove(0);
    assert!(img.disk_image.is_file());
    assert_eq!(store.list().unwrap().len(), 1);
    assert_eq!(outside_state(&outside), before);
}
