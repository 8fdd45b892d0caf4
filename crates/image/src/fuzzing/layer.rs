//! Hostile layer archives: entry paths and link targets built from `..`, absolute paths,
//! whiteout names and symlinks that point out of the tree, every entry type, PAX and GNU sparse
//! headers, truncation, bit flips and compression; unpacked next to a canary that must stay
//! untouched.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;

use arbitrary::{Result, Unstructured};

use crate::digest::Digest;
use crate::unpack::{unpack_layer_within, LayerStats, UnpackError};

const CANARY: &[u8] = b"canary: the layer must never touch me\n";
const CANARY_MTIME: i64 = 1_000_000_000;
/// The expanded-size limit the layers are unpacked within (small, to reach `TooLarge`).
const MAX_LAYER_BYTES: u64 = 256 * 1024;
const MAX_ENTRIES: usize = 8;

/// Path components the generator joins (and now and then `..` or the absolute path of the
/// scratch directory's `outside` folder); `out`, `up`, `loop` and `canary` are symlinks of the
/// lower layer (see [`Scratch::lower_layer`]).
const COMPONENTS: &[&[u8]] = &[
    b"a",
    b"b",
    b"f",
    b"link",
    b"out",
    b"up",
    b"loop",
    b"canary",
    b".",
    b"",
    b".wh.a",
    b".wh.f",
    b".wh.out",
    b".wh..wh..opq",
    b".wh..",
    b".wh.",
    b".wh...",
    b"\xff\x1b[2J\n",
];

/// What unpacking one generated layer came to (for the tests' statistics).
#[derive(Debug)]
pub enum LayerOutcome {
    Unpacked(LayerStats),
    Refused(UnpackError),
}

/// Fuzz target: a layer built from `data` is unpacked; see [`check_layer`].
pub fn fuzz_layer(data: &[u8]) -> LayerOutcome {
    let scratch = Scratch::new();
    let mut u = Unstructured::new(data);
    // Now and then a diff ID: of the uncompressed stream, or a wrong one.
    let diff = u.int_in_range(0..=15u8).unwrap_or(0);
    let mut out = Vec::new();
    // Running out of input ends the archive where it is: a truncated layer is input too.
    let tar = build_layer(&mut u, &scratch.outside_abs(), &mut out);
    let diff_id = match diff {
        0 => Some(Digest::of(&tar)),
        1 => Some(Digest::of(b"")),
        _ => None,
    };
    scratch.unpack(&out, diff_id.as_ref())
}

/// Unpacks `archive` (a tar stream, maybe compressed) into a fresh root whose lower layer holds
/// symlinks out of it, next to a canary file and an empty folder. Panics if the unpacker
/// panics, if anything outside the root changed (the canary's content, mode, times or link
/// count; a new file beside the root; anything in the folder), or if its error is not one line.
pub fn check_layer(archive: &[u8]) -> LayerOutcome {
    Scratch::new().unpack(archive, None)
}

struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Self {
        let dir = super::scratch_dir();
        let s = Self { dir };
        fs::create_dir(s.path("root")).expect("root");
        fs::create_dir(s.path("outside")).expect("outside folder");
        fs::write(s.path("canary"), CANARY).expect("canary");
        fs::set_permissions(s.path("canary"), fs::Permissions::from_mode(0o644)).expect("chmod");
        let t = rustix::fs::Timespec {
            tv_sec: CANARY_MTIME,
            tv_nsec: 0,
        };
        let ts = rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        };
        rustix::fs::utimensat(
            rustix::fs::CWD,
            s.path("canary"),
            &ts,
            rustix::fs::AtFlags::empty(),
        )
        .expect("canary times");
        s.lower_layer();
        s
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    fn outside_abs(&self) -> Vec<u8> {
        use std::os::unix::ffi::OsStrExt;
        self.path("outside").as_os_str().as_bytes().to_vec()
    }

    /// What a lower layer left in the tree: a directory, a file, and symlinks that point out
    /// of it (absolutely, relatively, to the canary) and at themselves.
    fn lower_layer(&self) {
        let root = self.path("root");
        fs::create_dir(root.join("a")).expect("a/");
        fs::write(root.join("a/f"), b"lower").expect("a/f");
        symlink("a", root.join("link")).expect("link");
        symlink(self.path("outside"), root.join("out")).expect("out");
        symlink("../..", root.join("up")).expect("up");
        symlink("loop", root.join("loop")).expect("loop");
        symlink(self.path("canary"), root.join("canary")).expect("canary link");
    }

    fn unpack(&self, archive: &[u8], diff_id: Option<&Digest>) -> LayerOutcome {
        let root = self.path("root");
        let result = unpack_layer_within(&root, archive, diff_id, MAX_LAYER_BYTES);
        self.assert_confined();
        if let Err(e) = &result {
            super::assert_one_line(e);
        }
        fix_modes(&root);
        match result {
            Ok(s) => LayerOutcome::Unpacked(s),
            Err(e) => LayerOutcome::Refused(e),
        }
    }

    /// Nothing outside the root changed.
    fn assert_confined(&self) {
        let names: BTreeSet<String> = fs::read_dir(self.dir.path())
            .expect("scratch directory")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        let want: BTreeSet<String> = ["canary", "outside", "root"].map(String::from).into();
        assert_eq!(names, want, "a layer wrote beside its root");
        let outside: Vec<_> = fs::read_dir(self.path("outside"))
            .expect("outside folder")
            .collect();
        assert!(outside.is_empty(), "a layer wrote through a symlink out");
        let m = fs::symlink_metadata(self.path("canary")).expect("canary");
        assert!(m.is_file(), "the canary was replaced");
        assert_eq!(m.nlink(), 1, "a layer hard-linked the canary");
        assert_eq!(
            m.mode() & 0o7777,
            0o644,
            "a layer changed the canary's mode"
        );
        assert_eq!(
            m.mtime(),
            CANARY_MTIME,
            "a layer changed the canary's times"
        );
        let content = fs::read(self.path("canary")).expect("canary");
        assert_eq!(content, CANARY, "a layer wrote into the canary");
    }
}

/// Makes every directory under `dir` writable again (a layer may leave mode 000), without
/// following symlinks, so that the scratch directory can be removed when not root.
fn fix_modes(dir: &Path) {
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            fix_modes(&e.path());
        }
    }
}

/// A path of 1-4 components from [`COMPONENTS`], sometimes absolute or with arbitrary bytes.
fn gen_path(u: &mut Unstructured<'_>, outside: &[u8]) -> Result<Vec<u8>> {
    let mut p = Vec::new();
    match u.int_in_range(0..=59u8)? {
        0 => p.push(b'/'),
        1 => p.extend_from_slice(b"./"),
        2 => {
            p.extend_from_slice(outside);
            p.push(b'/');
        }
        3 => return Ok(u.arbitrary::<&[u8]>()?.iter().take(300).copied().collect()),
        _ => {}
    }
    let n = u.int_in_range(1..=4usize)?;
    for i in 0..n {
        if i > 0 {
            p.push(b'/');
        }
        match u.int_in_range(0..=79u8)? {
            0 => p.extend_from_slice(b".."),
            1 => p.extend_from_slice(outside),
            _ => p.extend_from_slice(u.choose(COMPONENTS)?),
        }
    }
    if u.int_in_range(0..=7u8)? == 7 {
        p.push(b'/');
    }
    Ok(p)
}

pub(super) fn octal(field: &mut [u8], v: u64) {
    let s = format!("{v:0w$o}", w = field.len() - 1);
    let b = s.as_bytes();
    // Too large for the field: the low digits (a bogus value is input too).
    let b = &b[b.len().saturating_sub(field.len() - 1)..];
    field[..b.len()].copy_from_slice(b);
    field[b.len()..].fill(0);
}

fn pax_record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    // The tar reader splits records at newlines (a malformed record is generated apart).
    let value: Vec<u8> = value
        .iter()
        .map(|&b| if b == b'\n' { b'_' } else { b })
        .collect();
    let value = &value[..];
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while format!("{len}").len() + body != len {
        len += 1;
    }
    out.extend_from_slice(format!("{len} {key}=").as_bytes());
    out.extend_from_slice(value);
    out.push(b'\n');
}

pub(super) fn pad(out: &mut Vec<u8>) {
    out.resize(out.len().div_ceil(512) * 512, 0);
}

/// Appends one raw header (no checks: names with `..` or absolute paths go in as they are).
pub(super) fn raw_header(
    out: &mut Vec<u8>,
    kind: u8,
    name: &[u8],
    link: &[u8],
    size: u64,
    u: &mut Unstructured<'_>,
) -> Result<()> {
    let mut h = tar::Header::new_gnu();
    {
        let g = h.as_gnu_mut().expect("a GNU header");
        let n = name.len().min(100);
        g.name[..n].copy_from_slice(&name[..n]);
        let l = link.len().min(100);
        g.linkname[..l].copy_from_slice(&link[..l]);
        octal(&mut g.mode, u64::from(u.arbitrary::<u16>()? & 0o7777));
        octal(&mut g.uid, u64::from(u.int_in_range(0..=70000u32)?));
        octal(&mut g.gid, u64::from(u.arbitrary::<u16>()?));
        octal(&mut g.size, size);
        octal(&mut g.mtime, u.arbitrary::<u32>()?.into());
        octal(&mut g.dev_major, u64::from(u.int_in_range(0..=10u8)?));
        octal(&mut g.dev_minor, u64::from(u.arbitrary::<u8>()?));
        g.typeflag = [kind];
    }
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    Ok(())
}

/// Appends a PAX extension header with `path`/`linkpath` (long names) and arbitrary records.
fn pax_header(out: &mut Vec<u8>, name: &[u8], link: &[u8], u: &mut Unstructured<'_>) -> Result<()> {
    let mut body = Vec::new();
    if name.len() > 100 || u.ratio(1, 4)? {
        pax_record(&mut body, "path", name);
    }
    if link.len() > 100 || u.ratio(1, 4)? {
        pax_record(&mut body, "linkpath", link);
    }
    for _ in 0..u.int_in_range(0..=3u8)? {
        match u.int_in_range(0..=9u8)? {
            0 | 5 | 6 => pax_record(
                &mut body,
                "uid",
                u.arbitrary::<u64>()?.to_string().as_bytes(),
            ),
            1 | 7 | 8 => pax_record(&mut body, "gid", b"-1"),
            2 => pax_record(&mut body, "SCHILY.xattr.user.fuzz", u.arbitrary::<&[u8]>()?),
            3 => pax_record(&mut body, "SCHILY.xattr.security.capability", b"\x01"),
            // A malformed record.
            _ => body.extend_from_slice(u.arbitrary::<&[u8]>()?),
        }
    }
    raw_header(out, b'x', b"PaxHeaders/x", b"", body.len() as u64, u)?;
    out.extend_from_slice(&body);
    pad(out);
    Ok(())
}

/// One entry: a header of a random type (with a PAX header before it when the names are
/// long, or by chance) and its data.
fn entry(u: &mut Unstructured<'_>, outside: &[u8], out: &mut Vec<u8>) -> Result<()> {
    // Files, directories, links, devices, FIFOs, sparse files; now and then an extension
    // header with arbitrary data (GNU long name or link, PAX, PAX global) or an unknown type.
    const KINDS: &[u8] = b"0005555222116347S";
    const RARE: &[u8] = b"LKxg\0V";
    let kind = if u.int_in_range(0..=19u8)? == 0 {
        *u.choose(RARE)?
    } else {
        *u.choose(KINDS)?
    };
    let name = gen_path(u, outside)?;
    let link = match kind {
        b'1' | b'2' => match u.int_in_range(0..=7u8)? {
            0 => b"../canary".to_vec(),
            1 => {
                let mut l = outside.to_vec();
                l.extend_from_slice(b"/../canary");
                l
            }
            _ => gen_path(u, outside)?,
        },
        _ => Vec::new(),
    };
    if name.len() > 100 || link.len() > 100 || u.int_in_range(0..=7u8)? == 7 {
        pax_header(out, &name, &link, u)?;
    }
    let data: Vec<u8> = match u.int_in_range(0..=5u8)? {
        0 => Vec::new(),
        // Zero blocks: written as holes.
        1 => vec![0; 4096 * usize::from(u.int_in_range(1..=3u8)?)],
        _ => {
            let len = u.int_in_range(0..=1500usize)?.min(u.len() / 2);
            u.bytes(len)?.to_vec()
        }
    };
    if kind == b'S' {
        return sparse_entry(u, &name, &data, out);
    }
    // A header's size may lie about its data (a truncated or overlong entry).
    let size = match u.int_in_range(0..=31u8)? {
        0 => u.arbitrary::<u64>()? >> u.int_in_range(0..=63u32)?,
        _ => data.len() as u64,
    };
    raw_header(out, kind, &name, &link, size, u)?;
    out.extend_from_slice(&data);
    pad(out);
    Ok(())
}

/// A GNU sparse entry: a map of up to four (offset, length) pairs and a real size that may
/// exceed the layer limit or contradict the map.
fn sparse_entry(
    u: &mut Unstructured<'_>,
    name: &[u8],
    data: &[u8],
    out: &mut Vec<u8>,
) -> Result<()> {
    let mut h = tar::Header::new_gnu();
    let mut stored = 0u64;
    {
        let g = h.as_gnu_mut().expect("a GNU header");
        let n = name.len().min(100);
        g.name[..n].copy_from_slice(&name[..n]);
        octal(&mut g.mode, 0o644);
        octal(&mut g.mtime, 0);
        let mut offset = 0u64;
        for s in g
            .sparse
            .iter_mut()
            .take(usize::from(u.int_in_range(0..=4u8)?))
        {
            // Blocks but the last are whole 512-byte blocks, or the reader refuses the map.
            offset += u64::from(u.arbitrary::<u16>()?) * 512;
            let len = 512 * u64::from(u.int_in_range(0..=2u8)?);
            octal(&mut s.offset, offset);
            octal(&mut s.numbytes, len);
            offset += len;
            stored += len;
        }
        let real = match u.int_in_range(0..=3u8)? {
            0 => u.arbitrary::<u64>()? >> 20,
            _ => offset,
        };
        octal(&mut g.realsize, real);
        octal(&mut g.size, stored);
        g.typeflag = [b'S'];
    }
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    let stored = usize::try_from(stored).unwrap_or(usize::MAX);
    out.extend(
        data.iter()
            .copied()
            .cycle()
            .take(if data.is_empty() { 0 } else { stored }),
    );
    pad(out);
    Ok(())
}

/// Builds a layer into `out`: entries, the end marker (or not), then maybe a bit flip, a
/// truncation, and gzip or a bogus zstd frame around it. Returns the uncompressed stream.
fn build_layer(u: &mut Unstructured<'_>, outside: &[u8], out: &mut Vec<u8>) -> Vec<u8> {
    // Decided first: once the input runs out, `Unstructured` answers 0 (a whole archive).
    let wrap = u.int_in_range(0..=9u8).unwrap_or(9);
    let tail = u.int_in_range(0..=39u8).unwrap_or(0);
    let n = u.int_in_range(0..=MAX_ENTRIES).unwrap_or(0);
    let mut tar = Vec::new();
    let _ = (|| -> Result<()> {
        for _ in 0..n {
            entry(u, outside, &mut tar)?;
        }
        Ok(())
    })();
    match tail {
        // No end marker.
        30..=33 => {}
        34..=36 if !tar.is_empty() => {
            tar.extend_from_slice(&[0; 1024]);
            let i = u.choose_index(tar.len()).unwrap_or(0);
            tar[i] ^= u.arbitrary::<u8>().unwrap_or(0).max(1);
        }
        37..=39 => {
            tar.extend_from_slice(&[0; 1024]);
            tar.truncate(u.int_in_range(0..=tar.len()).unwrap_or(0));
        }
        _ => tar.extend_from_slice(&[0; 1024]),
    }
    match wrap {
        0 => {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&tar).expect("gzip into memory");
            *out = gz.finish().expect("gzip into memory");
        }
        1 => {
            // A zstd magic number over whatever follows: the decoder's error paths.
            *out = vec![0x28, 0xb5, 0x2f, 0xfd];
            out.extend_from_slice(&tar);
        }
        _ => out.clone_from(&tar),
    }
    tar
}
