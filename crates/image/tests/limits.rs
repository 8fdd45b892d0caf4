//! Images are untrusted: the store's limits on expanded sizes (sparse files counted whole but
//! stored with their holes), config blobs and layer counts; past one, nothing is stored.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::{assert_nothing_complete, run_config, Tar};
use crx_image::layout::{LayerBlob, LayoutError, LayoutWriter};
use crx_image::limits::LimitExceeded;
use crx_image::{Digest, ImageLimits, Store, StoreError, StoreOptions};

fn store(root: &Path, limits: ImageLimits) -> Store {
    Store::open_with(
        root,
        StoreOptions {
            limits,
            ..StoreOptions::default()
        },
    )
    .unwrap()
}

fn layout(dir: &Path, name: &str, layers: &[LayerBlob]) -> Digest {
    let mut w = LayoutWriter::create(dir).unwrap();
    let d = w
        .add_image(Some(name), &run_config(&["x"]), layers)
        .unwrap();
    w.finish().unwrap();
    d
}

fn sparse_layer(path: &str, size: u64, fill: u8) -> LayerBlob {
    LayerBlob::gzip(&Tar::new().sparse(path, size, &[fill; 512]).finish())
}

fn limit_of(e: StoreError) -> LimitExceeded {
    match e {
        StoreError::Limit { exceeded, .. } => exceeded,
        StoreError::Layout(LayoutError::Limit { exceeded, .. }) => exceeded,
        other => panic!("expected a limit error, got {other:?}"),
    }
}

#[test]
fn a_sparse_image_becomes_a_small_disk() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("layout");
    let layer = sparse_layer("sparse", 256 << 20, b's');
    assert!(layer.bytes.len() < 4096);
    layout(&dir, "sparse:1", &[layer]);
    let s = store(&t.path().join("store"), ImageLimits::default());
    let img = s.import_oci_layout(&dir).unwrap().remove(0);
    let disk = fs::metadata(&img.disk_image).unwrap();
    assert!(disk.len() < 16 << 20, "disk of {} bytes", disk.len());
    assert!(disk.blocks() * 512 < 16 << 20);
    let out = t.path().join("x");
    common::extract_disk(img.disk_format, &img.disk_image, &out);
    let content = fs::read(out.join("sparse")).unwrap();
    assert_eq!(content.len(), 256 << 20);
    assert!(content[..(256 << 20) - 512].iter().all(|&b| b == 0));
    assert!(content[(256 << 20) - 512..].iter().all(|&b| b == b's'));
}

#[test]
fn images_past_the_size_limits_are_refused_and_leave_nothing() {
    let limits = ImageLimits {
        max_layer_bytes: 64 << 20,
        max_image_bytes: 96 << 20,
        ..ImageLimits::default()
    };
    let t = tempfile::tempdir().unwrap();
    let s = store(&t.path().join("store"), limits);

    // One layer whose sparse file claims 128 MiB (a few hundred bytes compressed).
    let dir = t.path().join("one");
    layout(&dir, "one:1", &[sparse_layer("big", 128 << 20, 1)]);
    let e = s.import_oci_layout(&dir).unwrap_err();
    let text = common::chain(&e);
    assert!(text.contains("CRX_IMAGE_MAX_LAYER_BYTES"), "{text}");
    assert!(!text.contains('\n'), "one line: {text}");
    assert!(
        matches!(limit_of(e), LimitExceeded::Layer { limit, .. } if limit == 64 << 20),
        "{text}"
    );
    assert_nothing_complete(&s);

    // Two layers, each within the layer limit, together past the image limit.
    let dir = t.path().join("two");
    layout(
        &dir,
        "two:1",
        &[
            sparse_layer("a", 60 << 20, 2),
            sparse_layer("b", 60 << 20, 3),
        ],
    );
    let e = s.import_oci_layout(&dir).unwrap_err();
    assert!(
        common::chain(&e).contains("CRX_IMAGE_MAX_IMAGE_BYTES"),
        "{e}"
    );
    assert!(
        matches!(limit_of(e), LimitExceeded::Image { limit } if limit == 96 << 20),
        "limit"
    );
    assert_nothing_complete(&s);

    // Within the limits, the same store takes an image.
    let dir = t.path().join("fits");
    layout(&dir, "fits:1", &[sparse_layer("a", 30 << 20, 4)]);
    s.import_oci_layout(&dir).unwrap();
}

#[test]
fn a_large_config_or_too_many_layers_are_refused_before_the_layers_are_stored() {
    let limits = ImageLimits {
        max_config_bytes: 4096,
        max_layers: 2,
        ..ImageLimits::default()
    };
    let t = tempfile::tempdir().unwrap();
    let s = store(&t.path().join("store"), limits);
    let layer = |m: &str| LayerBlob::tar(Tar::new().file("f", m).finish());

    let dir = t.path().join("config");
    let mut w = LayoutWriter::create(&dir).unwrap();
    let mut rc = run_config(&["x"]);
    rc.env = Some(vec![format!("BIG={}", "x".repeat(8192))]);
    let one = layer("config");
    w.add_image(Some("config:1"), &rc, std::slice::from_ref(&one))
        .unwrap();
    w.finish().unwrap();
    let e = s.import_oci_layout(&dir).unwrap_err();
    assert!(
        common::chain(&e).contains("CRX_IMAGE_MAX_CONFIG_BYTES"),
        "{e}"
    );
    assert!(
        matches!(limit_of(e), LimitExceeded::Config { limit: 4096, .. }),
        "config"
    );
    assert!(!s.blobs().contains(&Digest::of(&one.bytes)));
    assert_nothing_complete(&s);

    let dir = t.path().join("layers");
    let three = [layer("1"), layer("2"), layer("3")];
    layout(&dir, "layers:1", &three);
    let e = s.import_oci_layout(&dir).unwrap_err();
    assert!(common::chain(&e).contains("CRX_IMAGE_MAX_LAYERS"), "{e}");
    assert!(
        matches!(limit_of(e), LimitExceeded::Layers { count: 3, limit: 2 }),
        "layers"
    );
    for l in &three {
        assert!(!s.blobs().contains(&Digest::of(&l.bytes)));
    }
    assert_nothing_complete(&s);
}

#[test]
fn a_config_stored_before_a_limit_was_lowered_is_not_read_past_it() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("layout");
    let mut w = LayoutWriter::create(&dir).unwrap();
    let mut rc = run_config(&["x"]);
    rc.env = Some(vec![format!("BIG={}", "x".repeat(8192))]);
    w.add_image(
        Some("app:1"),
        &rc,
        &[LayerBlob::tar(Tar::new().file("f", "f").finish())],
    )
    .unwrap();
    w.finish().unwrap();
    let root = t.path().join("store");
    store(&root, ImageLimits::default())
        .import_oci_layout(&dir)
        .unwrap();
    let strict = store(
        &root,
        ImageLimits {
            max_config_bytes: 4096,
            ..ImageLimits::default()
        },
    );
    let e = strict.resolve("app:1").unwrap_err();
    assert!(
        matches!(limit_of(e), LimitExceeded::Config { .. }),
        "config"
    );
}

/// A `docker save` archive: manifest.json and the named files.
fn docker_archive(path: &Path, manifest: &serde_json::Value, files: &[(&str, Vec<u8>)]) {
    let mut b = tar::Builder::new(fs::File::create(path).unwrap());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, data).unwrap();
    };
    add("manifest.json", &serde_json::to_vec(manifest).unwrap());
    for (name, data) in files {
        add(name, data);
    }
    b.finish().unwrap();
}

#[test]
fn docker_archives_are_held_to_the_same_limits() {
    let limits = ImageLimits {
        max_layer_bytes: 1 << 20,
        max_config_bytes: 64 << 10,
        max_layers: 2,
        ..ImageLimits::default()
    };
    let t = tempfile::tempdir().unwrap();
    let s = store(&t.path().join("store"), limits);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {"Cmd": ["x"]},
        "rootfs": {"type": "layers", "diff_ids": []}
    }))
    .unwrap();
    let layer = |m: &str| Tar::new().file("f", m).finish();

    let many = t.path().join("many.tar");
    docker_archive(
        &many,
        &serde_json::json!([{"Config": "c.json", "RepoTags": ["many:1"],
            "Layers": ["1.tar", "2.tar", "3.tar"]}]),
        &[
            ("c.json", config.clone()),
            ("1.tar", layer("1")),
            ("2.tar", layer("2")),
            ("3.tar", layer("3")),
        ],
    );
    let e = s.import_docker_archive(&many).unwrap_err();
    let text = common::chain(&e);
    assert!(text.contains("CRX_IMAGE_MAX_LAYERS"), "{text}");
    assert_nothing_complete(&s);

    // A file larger than any blob may be (a layer, a config, a manifest: 4 MiB here):
    // refused before it is stored.
    let big = t.path().join("big.tar");
    let zeros = Tar::new().zeros("z", 5 << 20).finish();
    docker_archive(
        &big,
        &serde_json::json!([{"Config": "c.json", "RepoTags": ["big:1"], "Layers": ["z.tar"]}]),
        &[("c.json", config), ("z.tar", zeros.clone())],
    );
    let e = s.import_docker_archive(&big).unwrap_err();
    let text = common::chain(&e);
    assert!(text.contains("z.tar"), "{text}");
    assert!(!s.blobs().contains(&Digest::of(&zeros)));
    assert_nothing_complete(&s);
}
