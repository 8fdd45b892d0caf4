//! Measures building a read-only disk image from an unpacked image tree, erofs vs ext4.
//!
//! ```text
//! cargo run --release -p crx-image --example disk_bench -- [--runs N] [TREE...]
//! ```
//! With no TREE it measures the offline busybox image (built from /bin/busybox). A realistic
//! tree: `debootstrap --variant=minbase bookworm /tmp/minbase <mirror>`. Prints, per tree and
//! format: median and min build time over N runs, apparent and allocated size of the image.
//! An informational erofs+lz4hc row shows what compression would buy (not selectable: the
//! guest kernel would need EROFS_FS_ZIP and LZ4).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crx_image::disk::{build_disk, DiskFormat, TreeUsage};

fn main() {
    let mut runs = 3usize;
    let mut trees: Vec<PathBuf> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--runs" {
            runs = args.next().and_then(|n| n.parse().ok()).expect("--runs N");
        } else {
            trees.push(a.into());
        }
    }
    let work = tempfile::tempdir().expect("tempdir");
    if trees.is_empty() {
        trees.push(busybox_tree(work.path()));
    }
    println!(
        "{:<28} {:<12} {:>10} {:>10} {:>12} {:>12}",
        "tree", "format", "median_ms", "min_ms", "size_MiB", "alloc_MiB"
    );
    for tree in &trees {
        let u = TreeUsage::measure(tree).expect("measure tree");
        let label = format!(
            "{} ({:.0} MiB, {} inodes)",
            tree.file_name().unwrap_or_default().to_string_lossy(),
            u.bytes as f64 / 1048576.0,
            u.inodes
        );
        println!("{label}");
        for (name, f) in [
            ("erofs", Build::Format(DiskFormat::Erofs)),
            ("ext4", Build::Format(DiskFormat::Ext4)),
            ("erofs-lz4hc*", Build::ErofsLz4hc),
        ] {
            let out = work.path().join(format!("disk.{name}"));
            let mut times = Vec::new();
            for _ in 0..runs {
                let _ = std::fs::remove_file(&out);
                sync();
                let t = Instant::now();
                f.run(tree, &out);
                times.push(t.elapsed());
            }
            times.sort();
            let m = std::fs::metadata(&out).expect("disk exists");
            println!(
                "{:<28} {:<12} {:>10.0} {:>10.0} {:>12.1} {:>12.1}",
                "",
                name,
                ms(times[times.len() / 2]),
                ms(times[0]),
                m.len() as f64 / 1048576.0,
                (m.blocks() * 512) as f64 / 1048576.0
            );
        }
    }
    println!("runs per row: {runs}; * informational only (needs EROFS_FS_ZIP+LZ4 in the guest)");
}

enum Build {
    Format(DiskFormat),
    ErofsLz4hc,
}

impl Build {
    fn run(&self, tree: &Path, out: &Path) {
        match self {
            Build::Format(f) => build_disk(*f, tree, out).expect("build disk"),
            Build::ErofsLz4hc => {
                let st = Command::new("mkfs.erofs")
                    .args(["--quiet", "-zlz4hc"])
                    .arg(out)
                    .arg(tree)
                    .status()
                    .expect("mkfs.erofs");
                assert!(st.success());
            }
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn sync() {
    let _ = Command::new("sync").status();
}

/// Unpacks the offline busybox image into `work/busybox`.
fn busybox_tree(work: &Path) -> PathBuf {
    let layout = work.join("layout");
    crx_image::build_busybox_layout(
        Path::new(crx_image::busybox::DEFAULT_BUSYBOX),
        &layout,
        "busybox:latest",
    )
    .expect("busybox layout (install busybox-static)");
    let index: crx_image::oci::Index =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let blob = |d: &crx_image::Digest| layout.join("blobs/sha256").join(d.hex());
    let manifest: crx_image::oci::Manifest =
        serde_json::from_slice(&std::fs::read(blob(&index.manifests[0].digest)).unwrap()).unwrap();
    let tree = work.join("busybox");
    std::fs::create_dir(&tree).unwrap();
    for l in &manifest.layers {
        let f = std::fs::File::open(blob(&l.digest)).unwrap();
        crx_image::unpack::unpack_layer(&tree, f, None).unwrap();
    }
    tree
}
