//! Layer application: whiteouts, ownership and modes, links, and refusal of escaping paths.

mod common;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use common::Tar;
use crx_image::unpack::{unpack_layer, UnpackError};
use crx_image::Digest;

fn apply(root: &Path, tar: Vec<u8>) -> Result<(), UnpackError> {
    unpack_layer(root, &tar[..], None).map(|_| ())
}

#[test]
fn whiteouts_remove_lower_entries_and_opaque_dirs_hide_them() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    apply(
        root,
        Tar::new()
            .dir("a/", 0o755)
            .file("a/keep", "k")
            .file("a/gone", "g")
            .dir("a/sub/", 0o755)
            .file("a/sub/deep", "d")
            .dir("o/", 0o755)
            .file("o/lower1", "1")
            .file("o/lower2", "2")
            .finish(),
    )
    .unwrap();
    apply(
        root,
        Tar::new()
            .file("a/.wh.gone", "")
            .file("a/.wh.sub", "")
            .dir("o/", 0o700)
            .file("o/.wh..wh..opq", "")
            .file("o/upper", "u")
            .file("a/.wh.never-existed", "")
            .finish(),
    )
    .unwrap();
    assert!(root.join("a/keep").exists());
    assert!(!root.join("a/gone").exists());
    assert!(!root.join("a/sub").exists());
    assert!(
        !root.join("a/.wh.gone").exists(),
        "whiteout files are not kept"
    );
    assert_eq!(common::tree(&root.join("o")), vec!["upper"]);
    assert_eq!(
        fs::metadata(root.join("o")).unwrap().permissions().mode() & 0o7777,
        0o700
    );
}

#[test]
fn opaque_marker_after_same_layer_children_keeps_them() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    apply(root, Tar::new().file("d/old", "o").finish()).unwrap();
    apply(
        root,
        Tar::new()
            .file("d/new/x", "n")
            .file("d/.wh..wh..opq", "")
            .finish(),
    )
    .unwrap();
    assert_eq!(common::tree(&root.join("d")), vec!["new", "new/x"]);
}

#[test]
fn owners_modes_times_links_and_fifos_are_kept() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    apply(
        root,
        Tar::new()
            .file_owned("bin/suid", "x", 0o4755, 0, 0)
            .file_owned("home/u/f", "y", 0o600, 1000, 1001)
            .symlink("bin/sl", "suid")
            .hardlink("bin/hl", "bin/suid")
            .fifo("run/fifo")
            .finish(),
    )
    .unwrap();
    let m = fs::metadata(root.join("bin/suid")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o4755);
    assert_eq!(m.mtime(), 1_700_000_000);
    let m = fs::metadata(root.join("home/u/f")).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (1000, 1001, 0o600));
    assert_eq!(
        fs::read_link(root.join("bin/sl")).unwrap(),
        Path::new("suid")
    );
    assert_eq!(
        fs::metadata(root.join("bin/hl")).unwrap().ino(),
        fs::metadata(root.join("bin/suid")).unwrap().ino()
    );
    assert!(fs::symlink_metadata(root.join("run/fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    // An upper layer replaces a file with a directory and a directory with a file.
    apply(
        root,
        Tar::new()
            .dir("bin/sl/", 0o755)
            .file("home/u", "now a file")
            .finish(),
    )
    .unwrap();
    assert!(fs::symlink_metadata(root.join("bin/sl")).unwrap().is_dir());
    assert_eq!(
        fs::read_to_string(root.join("home/u")).unwrap(),
        "now a file"
    );
}

#[test]
fn escaping_paths_are_refused() {
    let outside = tempfile::tempdir().unwrap();
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    fs::create_dir(&root).unwrap();
    let victim = outside.path().join("victim");

    for (name, tar) in [
        ("dotdot", Tar::new().raw_file("../escape", "x").finish()),
        (
            "nested dotdot",
            Tar::new().raw_file("a/../../escape", "x").finish(),
        ),
        (
            "absolute",
            Tar::new().raw_file(&victim.to_string_lossy(), "x").finish(),
        ),
    ] {
        let e = apply(&root, tar).unwrap_err();
        assert!(matches!(e, UnpackError::PathEscape { .. }), "{name}: {e}");
    }
    // A symlink pointing outside (relative, climbing) and a file written through it.
    let rel = format!("../../..{}", outside.path().display());
    let e = apply(
        &root,
        Tar::new()
            .symlink("evil", &rel)
            .file("evil/victim", "pwned")
            .finish(),
    )
    .unwrap_err();
    assert!(matches!(e, UnpackError::PathEscape { .. }), "{e}");
    // An absolute symlink is read inside the root, as the container will see it.
    apply(
        &root,
        Tar::new()
            .symlink("abs", &outside.path().to_string_lossy())
            .file("abs/victim", "contained")
            .finish(),
    )
    .unwrap();
    assert!(!victim.exists(), "nothing was written outside the root");
    let inside = root
        .join(outside.path().strip_prefix("/").unwrap())
        .join("victim");
    assert_eq!(fs::read_to_string(inside).unwrap(), "contained");
    // A hard link to a file outside the root.
    fs::write(&victim, "secret").unwrap();
    let e = apply(
        &root,
        Tar::new()
            .hardlink("hl", &format!("../../..{}", victim.display()))
            .finish(),
    )
    .unwrap_err();
    assert!(matches!(e, UnpackError::PathEscape { .. }), "{e}");
    // A symlink loop.
    let e = apply(
        &root,
        Tar::new()
            .symlink("l1", "l2")
            .symlink("l2", "l1")
            .file("l1/x", "x")
            .finish(),
    )
    .unwrap_err();
    assert!(matches!(e, UnpackError::PathEscape { .. }), "{e}");
}

#[test]
fn diff_id_mismatch_and_truncated_layers_are_errors() {
    let t = tempfile::tempdir().unwrap();
    let tar = Tar::new().file("a", "hello").finish();
    let wrong = Digest::of(b"other");
    let e = unpack_layer(t.path(), &tar[..], Some(&wrong)).unwrap_err();
    assert!(matches!(e, UnpackError::DiffIdMismatch { .. }), "{e}");
    unpack_layer(t.path(), &tar[..], Some(&Digest::of(&tar))).unwrap();
    // Cut inside the file data.
    let e = unpack_layer(t.path(), &tar[..600], None).unwrap_err();
    assert!(matches!(e, UnpackError::ReadArchive(_)), "{e}");
}

#[test]
fn pax_ids_and_xattrs_are_kept() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    apply(
        root,
        Tar::new()
            .file_with_pax(
                "f",
                "x",
                &[
                    ("uid", b"3000000"),
                    ("gid", b"3000001"),
                    ("SCHILY.xattr.user.crx", b"value"),
                ],
            )
            .finish(),
    )
    .unwrap();
    let m = fs::metadata(root.join("f")).unwrap();
    assert_eq!((m.uid(), m.gid()), (3_000_000, 3_000_001));
    let mut buf = [0u8; 64];
    let n = rustix::fs::lgetxattr(root.join("f"), "user.crx", &mut buf[..]).unwrap();
    assert_eq!(&buf[..n], b"value");
}

#[test]
fn zstd_and_gzip_layers() {
    let tar = Tar::new().file("z", "zstd layer").finish();
    let z =
        ruzstd::encoding::compress_to_vec(&tar[..], ruzstd::encoding::CompressionLevel::Fastest);
    let t = tempfile::tempdir().unwrap();
    unpack_layer(t.path(), &z[..], Some(&Digest::of(&tar))).unwrap();
    assert_eq!(
        fs::read_to_string(t.path().join("z")).unwrap(),
        "zstd layer"
    );
    let g = crx_image::layout::LayerBlob::gzip(&Tar::new().file("g", "gzip layer").finish());
    unpack_layer(t.path(), &g.bytes[..], Some(&g.diff_id)).unwrap();
    assert_eq!(
        fs::read_to_string(t.path().join("g")).unwrap(),
        "gzip layer"
    );
}

fn allocated(p: &Path) -> u64 {
    fs::metadata(p).unwrap().blocks() * 512
}

#[test]
fn sparse_files_stay_sparse_and_count_at_their_apparent_size() {
    let t = tempfile::tempdir().unwrap();
    let mut tail = [b'x'; 512];
    tail[511] = b'\n';
    let zeros_then_data = {
        let mut v = vec![0u8; 4 << 20];
        v.extend_from_slice(b"end\n");
        v
    };
    let tar = Tar::new()
        .sparse("sparse", 256 << 20, &tail)
        .file("dense", "not a hole\n")
        .finish();
    let mut tar2 = Tar::new().zeros("zeros", 3 << 20).finish();
    // A regular file with a long run of zeros, then data.
    {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(zeros_then_data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, "run", &zeros_then_data[..]).unwrap();
        let extra = b.into_inner().unwrap();
        tar2.truncate(tar2.len() - 1024); // drop the end-of-archive blocks
        tar2.extend_from_slice(&extra);
    }
    let stats = unpack_layer(t.path(), &tar[..], Some(&Digest::of(&tar))).unwrap();
    assert!(stats.bytes >= 256 << 20, "{stats:?}");
    let sparse = t.path().join("sparse");
    assert_eq!(fs::metadata(&sparse).unwrap().len(), 256 << 20);
    assert!(allocated(&sparse) < 1 << 20, "{} bytes", allocated(&sparse));
    let content = fs::read(&sparse).unwrap();
    assert!(content[..(256 << 20) - 512].iter().all(|&b| b == 0));
    assert_eq!(&content[(256 << 20) - 512..], &tail[..]);
    assert_eq!(
        fs::read_to_string(t.path().join("dense")).unwrap(),
        "not a hole\n"
    );

    unpack_layer(t.path(), &tar2[..], None).unwrap();
    let zeros = t.path().join("zeros");
    assert_eq!(fs::metadata(&zeros).unwrap().len(), 3 << 20);
    assert!(allocated(&zeros) < 64 << 10, "{}", allocated(&zeros));
    let run = t.path().join("run");
    assert_eq!(fs::read(&run).unwrap(), zeros_then_data);
    assert!(allocated(&run) < 64 << 10, "{}", allocated(&run));
}

#[test]
fn layer_past_its_limit_is_refused_before_writing() {
    use crx_image::unpack::unpack_layer_within;
    let limit = 1 << 20;
    // A sparse entry claiming more than the limit: refused before its file exists.
    let t = tempfile::tempdir().unwrap();
    let tar = Tar::new().sparse("big", 2 << 30, &[1u8; 512]).finish();
    let e = unpack_layer_within(t.path(), &tar[..], None, limit).unwrap_err();
    assert!(
        matches!(e, UnpackError::TooLarge { limit: 1048576 }),
        "{e:?}"
    );
    assert!(!t.path().join("big").exists());

    // A small gzip stream of zeros that expands past the limit.
    let t = tempfile::tempdir().unwrap();
    let bomb = crx_image::layout::LayerBlob::gzip(&Tar::new().zeros("zeros", 8 << 20).finish());
    assert!(bomb.bytes.len() < 64 << 10);
    let e = unpack_layer_within(t.path(), &bomb.bytes[..], None, limit).unwrap_err();
    assert!(matches!(e, UnpackError::TooLarge { .. }), "{e:?}");
    assert!(!t.path().join("zeros").exists());

    // Many files, each small, adding up past the limit.
    let t = tempfile::tempdir().unwrap();
    let mut many = Tar::new();
    for i in 0..40 {
        many = many.zeros(&format!("f{i}"), 32 << 10);
    }
    let e = unpack_layer_within(t.path(), &many.finish()[..], None, limit).unwrap_err();
    assert!(matches!(e, UnpackError::TooLarge { .. }), "{e:?}");

    // Garbage after the end of the archive counts too (it is read to check the diff_id).
    let t = tempfile::tempdir().unwrap();
    let mut trailing = Tar::new().file("a", "a").finish();
    trailing.extend(std::iter::repeat_n(0u8, 2 << 20));
    let e = unpack_layer_within(t.path(), &trailing[..], None, limit).unwrap_err();
    assert!(matches!(e, UnpackError::TooLarge { .. }), "{e:?}");
    unpack_layer_within(t.path(), &trailing[..], None, 4 << 20).unwrap();
}

#[test]
fn huge_extension_headers_are_refused_without_holding_them() {
    // A PAX header the tar reader would read whole into memory.
    let t = tempfile::tempdir().unwrap();
    let big = vec![b'a'; 20 << 20];
    let tar = Tar::new()
        .file_with_pax("f", "x", &[("comment", &big[..])])
        .finish();
    let e = unpack_layer(t.path(), &tar[..], None).unwrap_err();
    assert!(matches!(e, UnpackError::HeaderTooLarge), "{e:?}");
    assert!(!t.path().join("f").exists());
}

#[test]
fn archive_text_in_errors_is_escaped() {
    let evil = "\x1b]0;pwned\x07\x1b[2J";
    // An invalid mode field: the tar reader's message names the entry.
    let mut tar = Tar::new().raw_file(&format!("f{evil}"), "x").finish();
    tar[100..108].copy_from_slice(b"zzzzzzz\0");
    let cksum = {
        let mut h = tar::Header::new_old();
        h.as_mut_bytes().copy_from_slice(&tar[..512]);
        h.set_cksum();
        *h.as_bytes()
    };
    tar[..512].copy_from_slice(&cksum);
    let t = tempfile::tempdir().unwrap();
    let e = unpack_layer(t.path(), &tar[..], None).unwrap_err();
    let text = common::chain(&e);
    assert!(!text.contains('\x1b') && !text.contains('\x07'), "{text:?}");
    assert!(text.contains("\\u{1b}"), "{text}");

    // A write error names the path made of the entry's name (too long a name here).
    let t = tempfile::tempdir().unwrap();
    let tar = Tar::new()
        .file(&format!("{evil}{}", "a".repeat(300)), "x")
        .finish();
    let e = unpack_layer(t.path(), &tar[..], None).unwrap_err();
    assert!(matches!(e, UnpackError::Write { .. }), "{e:?}");
    let text = common::chain(&e);
    assert!(!text.contains('\x1b') && !text.contains('\x07'), "{text:?}");
}
