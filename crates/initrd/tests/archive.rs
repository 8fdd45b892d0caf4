//! Public behaviour: alignment of every file, reproducibility, round trip, GNU cpio compatibility.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use crx_initrd::newc::{S_IFDIR, S_IFLNK, S_IFMT, S_IFREG};
use crx_initrd::{
    parse, parse_spec, Archive, Entry, EntryKind, FileSource, ParsedEntry, WriteOptions, PAGE_SIZE,
};

/// A deterministic archive with many files whose names and sizes vary, so that every residue
/// of the write position is hit, including the ones that need a filler entry.
fn sample() -> Archive {
    let mut a = Archive::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..400 {
        let depth = next() % 3;
        let mut p = String::new();
        for d in 0..depth {
            p.push_str(&format!("/d{}", (next() % 4) + d));
        }
        let name_len = 1 + (next() % 40) as usize;
        p.push_str(&format!("/f{i}_{}", "n".repeat(name_len)));
        let size = match next() % 4 {
            0 => 0,
            1 => next() % 16,
            2 => next() % 5000,
            _ => next() % 20000,
        } as usize;
        let data: Vec<u8> = (0..size).map(|j| (i + j) as u8).collect();
        a.insert(&p, Entry::file(FileSource::Bytes(data), 0o644))
            .unwrap();
    }
    // Files whose data ends just before a page boundary, so the next file's name cannot be padded
    // within PATH_MAX there and a filler entry is needed (top level and nested).
    for (i, size) in [3984usize, 3976, 3950, 3900].into_iter().enumerate() {
        for dir in ["", "/zz"] {
            a.insert(
                &format!("{dir}/zz{i}_a"),
                Entry::file(FileSource::Bytes(vec![7; size]), 0o644),
            )
            .unwrap();
            a.insert(
                &format!("{dir}/zz{i}_b_with_a_long_name"),
                Entry::file(FileSource::Bytes(vec![8; 10]), 0o755),
            )
            .unwrap();
        }
    }
    a.insert("/bin/sh", Entry::symlink("busybox")).unwrap();
    a.insert(
        "/dev/console",
        Entry::new(EntryKind::CharDev { major: 5, minor: 1 }, 0o600),
    )
    .unwrap();
    a.insert(
        "/dev/vda",
        Entry::new(
            EntryKind::BlockDev {
                major: 254,
                minor: 0,
            },
            0o660,
        ),
    )
    .unwrap();
    a.insert("/tmp", Entry::dir(0o1777)).unwrap();
    a.insert(
        "/etc/shadow",
        Entry::file(FileSource::Bytes(b"x".to_vec()), 0o600).owned_by(0, 42),
    )
    .unwrap();
    a
}

fn files(entries: &[ParsedEntry]) -> impl Iterator<Item = &ParsedEntry> {
    entries.iter().filter(|e| e.header.mode & S_IFMT == S_IFREG)
}

#[test]
fn every_file_is_page_aligned_and_archive_is_padded() {
    let bytes = sample().to_bytes(WriteOptions::default()).unwrap();
    assert_eq!(bytes.len() as u64 % PAGE_SIZE, 0);
    let entries = parse(&bytes).unwrap();
    let mut n = 0;
    for e in files(&entries) {
        assert_eq!(
            e.data_offset % PAGE_SIZE,
            0,
            "{} at {}",
            e.name,
            e.data_offset
        );
        n += 1;
    }
    assert_eq!(n, 417);
    // Some files needed a filler entry (a re-stated directory): the test covers that path.
    let mut seen = std::collections::HashSet::new();
    let fillers: Vec<&str> = entries
        .iter()
        .filter(|e| e.header.mode & S_IFMT == S_IFDIR && !seen.insert(e.name.clone()))
        .map(|e| e.name.as_str())
        .collect();
    assert!(
        fillers.contains(&".") && fillers.contains(&"zz"),
        "fillers: {fillers:?}"
    );
    assert!(entries.last().unwrap().is_trailer());
}

#[test]
fn rebuild_is_byte_identical() {
    let a = sample()
        .to_bytes(WriteOptions {
            mtime: 1_700_000_000,
        })
        .unwrap();
    let b = sample()
        .to_bytes(WriteOptions {
            mtime: 1_700_000_000,
        })
        .unwrap();
    assert!(a == b);
    let c = sample().to_bytes(WriteOptions::default()).unwrap();
    assert!(a != c, "mtime must be recorded");
}

#[test]
fn round_trip_preserves_content_and_metadata() {
    let a = sample();
    let bytes = a.to_bytes(WriteOptions { mtime: 77 }).unwrap();
    let parsed = parse(&bytes).unwrap();
    let mut by_name: BTreeMap<&str, &ParsedEntry> = BTreeMap::new();
    for e in &parsed {
        by_name.insert(e.name.as_str(), e);
    }
    for (path, entry) in a.entries() {
        let e = by_name[path];
        assert_eq!(e.header.mode, entry.cpio_mode(), "{path}");
        assert_eq!((e.header.uid, e.header.gid), (entry.uid, entry.gid));
        assert_eq!(e.header.mtime, 77);
        match &entry.kind {
            EntryKind::File(FileSource::Bytes(b)) => assert_eq!(&e.data, b),
            EntryKind::Symlink(t) => assert_eq!(e.data, t.as_bytes()),
            EntryKind::CharDev { major, minor } | EntryKind::BlockDev { major, minor } => {
                assert_eq!((e.header.rdevmajor, e.header.rdevminor), (*major, *minor))
            }
            _ => {}
        }
    }
    // Sorted order, implicit parents present before children.
    let names: Vec<&str> = parsed
        .iter()
        .map(|e| e.name.as_str())
        .filter(|n| *n != "TRAILER!!!" && *n != ".")
        .collect();
    assert!(by_name.contains_key("bin") && by_name.contains_key("dev"));
    let mut sorted = names.clone();
    sorted.sort();
    let first_seen: Vec<&str> = {
        let mut seen = std::collections::HashSet::new();
        names.into_iter().filter(|n| seen.insert(*n)).collect()
    };
    assert_eq!(first_seen.len(), by_name.len() - 2); // less "." (a filler) and the trailer
    sorted.dedup();
    assert_eq!(first_seen, sorted);
}

#[test]
fn concatenated_layers_stay_aligned() {
    let mut a = sample().to_bytes(WriteOptions::default()).unwrap();
    let mut l2 = Archive::new();
    l2.insert(
        "/opt/tool",
        Entry::file(FileSource::Bytes(vec![1; 9000]), 0o755),
    )
    .unwrap();
    a.extend(l2.to_bytes(WriteOptions::default()).unwrap());
    let entries = parse(&a).unwrap();
    assert_eq!(entries.iter().filter(|e| e.is_trailer()).count(), 2);
    assert!(files(&entries).all(|e| e.data_offset % PAGE_SIZE == 0));
    assert!(entries.iter().any(|e| e.name == "opt/tool"));
}

#[test]
fn reader_rejects_garbage_without_panicking() {
    let bytes = sample().to_bytes(WriteOptions::default()).unwrap();
    for cut in [0, 1, 109, 110, 200, 4096, 5000, bytes.len() / 2] {
        let _ = parse(&bytes[..cut]);
    }
    let mut m = bytes.clone();
    let mut x: u32 = 12345;
    for _ in 0..2000 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        let i = (x as usize >> 4) % m.len().min(20000);
        m[i] = (x >> 24) as u8;
        let _ = parse(&m);
    }
    assert!(parse(b"070707").is_err());
}

#[test]
fn duplicate_and_invalid_paths_are_errors() {
    let mut a = Archive::new();
    a.insert("/x", Entry::dir(0o755)).unwrap();
    assert!(a.insert("x", Entry::dir(0o755)).is_err());
    assert!(a.insert("/../etc", Entry::dir(0o755)).is_err());
    assert!(a.insert("/", Entry::dir(0o755)).is_err());
    let mut b = Archive::new();
    b.insert("/f", Entry::file(FileSource::Bytes(vec![]), 0o644))
        .unwrap();
    b.insert("/f/g", Entry::dir(0o755)).unwrap();
    assert!(b.to_bytes(WriteOptions::default()).is_err());
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Debian's GNU cpio lists and extracts the archive (names padded with NULs, filler entries and
/// all) to the same tree.
#[test]
fn gnu_cpio_extracts_it() {
    assert!(have("cpio"), "cpio is not installed (Debian package cpio)");
    let dir = tempfile::tempdir().unwrap();
    let a = sample();
    let bytes = a.to_bytes(WriteOptions::default()).unwrap();
    let img = dir.path().join("a.cpio");
    std::fs::write(&img, &bytes).unwrap();

    let out = Command::new("cpio")
        .args(["-t", "--quiet", "-F"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: std::collections::BTreeSet<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    for (path, _) in a.entries() {
        assert!(listed.contains(path), "cpio -t misses {path}");
    }

    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    // Device nodes need root (CAP_MKNOD); keep them out of the extraction otherwise.
    let is_root = fs_owner_uid(Path::new("/proc/self")) == 0;
    let mut cmd = Command::new("cpio");
    cmd.args(["-idv", "--no-absolute-filenames", "--quiet", "-F"])
        .arg(&img);
    if !is_root {
        cmd.args(["--nonmatching", "dev/*"]);
    }
    let out = cmd.current_dir(&root).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (path, entry) in a.entries() {
        let p = root.join(path);
        match &entry.kind {
            EntryKind::File(FileSource::Bytes(b)) => {
                assert_eq!(&std::fs::read(&p).unwrap(), b, "{path}");
                use std::os::unix::fs::PermissionsExt;
                let m = std::fs::metadata(&p).unwrap().permissions().mode();
                assert_eq!(m & 0o7777, entry.mode, "{path}");
            }
            EntryKind::Symlink(t) => {
                assert_eq!(std::fs::read_link(&p).unwrap(), Path::new(t));
                let m = std::fs::symlink_metadata(&p).unwrap();
                assert!(m.file_type().is_symlink());
                let _ = S_IFLNK;
            }
            EntryKind::Dir => assert!(p.is_dir(), "{path}"),
            EntryKind::CharDev { major, minor } | EntryKind::BlockDev { major, minor }
                if is_root =>
            {
                use std::os::unix::fs::{FileTypeExt, MetadataExt};
                let m = std::fs::symlink_metadata(&p).unwrap();
                let char_dev = matches!(entry.kind, EntryKind::CharDev { .. });
                assert_eq!(m.file_type().is_char_device(), char_dev, "{path}");
                assert_eq!(m.file_type().is_block_device(), !char_dev, "{path}");
                let rdev = m.rdev();
                let (maj, min) = (
                    ((rdev >> 8) & 0xfff) as u32,
                    ((rdev & 0xff) | ((rdev >> 12) & 0xfff00)) as u32,
                );
                assert_eq!((maj, min), (*major, *minor), "{path}");
            }
            _ => {}
        }
    }
}

#[test]
fn spec_builds_layers() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello"), b"hello\n").unwrap();
    std::fs::create_dir_all(dir.path().join("tree/sub")).unwrap();
    std::fs::write(dir.path().join("tree/sub/a"), b"a").unwrap();
    std::os::unix::fs::symlink("sub/a", dir.path().join("tree/link")).unwrap();
    let spec = "\
# a layer
file    /init   ${INIT} 0755
dir     /tmp    1777
nod     /dev/console 0600 c 5 1
symlink /sbin/init /init
tree    /opt/t  tree
dir     /home/u 0700 1000 1000
";
    let mut defs = BTreeMap::new();
    defs.insert("INIT".to_string(), "hello".to_string());
    let a = parse_spec(spec, dir.path(), &defs).unwrap();
    let bytes = a.to_bytes(WriteOptions::default()).unwrap();
    let e = parse(&bytes).unwrap();
    let get = |n: &str| e.iter().find(|x| x.name == n).unwrap();
    assert_eq!(get("init").data, b"hello\n");
    assert_eq!(get("init").header.mode, S_IFREG | 0o755);
    assert_eq!(get("tmp").header.mode, S_IFDIR | 0o1777);
    assert_eq!(get("opt/t/sub/a").data, b"a");
    assert_eq!(get("opt/t/link").data, b"sub/a");
    assert_eq!(get("home/u").header.uid, 1000);
    assert_eq!(get("dev/console").header.rdevminor, 1);

    // A dynamic executable brings its loader and libc; a static one nothing else.
    let a = parse_spec("binary /usr/bin/t /bin/true", dir.path(), &defs).unwrap();
    let names: Vec<&str> = a.entries().map(|(p, _)| p).collect();
    assert!(names.contains(&"usr/bin/t"), "{names:?}");
    assert!(names.iter().any(|n| n.contains("libc.so")), "{names:?}");
    assert!(names.iter().any(|n| n.contains("ld-linux")), "{names:?}");
    let a = parse_spec("binary /bin/busybox /bin/busybox", dir.path(), &defs).unwrap();
    assert_eq!(a.entries().count(), 1);

    assert!(parse_spec("file /x ${NOPE}", dir.path(), &defs).is_err());
    assert!(parse_spec("dir /x 999", dir.path(), &defs).is_err());
    assert!(parse_spec("frob /x", dir.path(), &defs).is_err());
}

fn fs_owner_uid(p: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).map(|m| m.uid()).unwrap_or(u32::MAX)
}
