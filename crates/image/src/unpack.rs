//! Applies image layers (tar, gzip or zstd) to a directory tree: whiteouts (`.wh.<name>`,
//! `.wh..wh..opq`), ownership, modes, times, hard links, symlinks and device nodes (these only
//! where they are inert on the host: [`crate::confine`]).
//!
//! Every entry path is checked: absolute paths and `..` components are refused, and parent
//! directories are resolved with symlinks interpreted inside the tree (as if it were `/`), so no
//! entry is ever written outside it; a symlink that climbs above the tree is refused.
//!
//! A layer is bounded: its expanded size (the uncompressed stream plus the holes of its sparse
//! files) may not pass a limit, checked before a file is written and on every read, and the
//! extension headers of one entry (PAX, GNU long names, which the tar reader holds in memory)
//! may not pass [`MAX_HEADER_BYTES`]. Runs of zeros (and the holes of GNU sparse entries) are
//! written as holes, so a sparse file stays sparse.

use std::cell::Cell;
use std::collections::{HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use rustix::fs::{AtFlags, FileType, Mode, Timespec, Timestamps, CWD};

use crate::confine;
use crate::digest::{Digest, HashingReader};
use crate::limits::ImageLimits;
use crate::text::escape_io;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";
const MAX_SYMLINK_HOPS: u32 = 40;
/// The most the headers of one entry (with its PAX and GNU long-name extensions) may take.
pub const MAX_HEADER_BYTES: u64 = 16 << 20;
/// Zero blocks of this size (at this alignment) in a file are left as holes.
const HOLE_BLOCK: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("layer entry {path:?} {why}: refused (the layer may be malicious)")]
    PathEscape { path: String, why: &'static str },
    #[error("layer entry {path:?}: a parent path component is not a directory")]
    NotADirectory { path: String },
    #[error("layer entry {path:?}: hard link target {target:?} does not exist or is a directory")]
    BadHardLink { path: String, target: String },
    #[error("reading the layer archive (corrupt or truncated layer)")]
    ReadArchive(#[source] io::Error),
    #[error("the layer expands to more than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("a layer entry has more than {MAX_HEADER_BYTES} bytes of headers (the layer may be malicious)")]
    HeaderTooLarge,
    #[error("layer content has digest {actual}, the image config says {expected} (corrupt layer)")]
    DiffIdMismatch { expected: Digest, actual: Digest },
    #[error("writing {path:?}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Counts of what one layer did to the tree.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LayerStats {
    pub entries: u64,
    pub whiteouts: u64,
    /// The expanded size: the uncompressed stream plus the holes of sparse files.
    pub bytes: u64,
    /// Character and block device nodes not created: outside a `nodev,nosuid` mount, or
    /// without the privilege to create them ([`crate::confine`]).
    pub devices_left_out: u64,
}

/// Wraps `reader` in the decompressor its magic bytes call for (gzip, zstd or none).
pub fn decompress<'a>(reader: impl Read + 'a) -> io::Result<Box<dyn Read + 'a>> {
    let mut buf = BufReader::with_capacity(256 * 1024, reader);
    let head = buf.fill_buf()?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(buf))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(
            ruzstd::decoding::StreamingDecoder::new(buf)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?,
        )
    } else {
        Box::new(buf)
    })
}

/// Applies one layer to `root` (which must exist), within the default per-layer limit
/// ([`ImageLimits::max_layer_bytes`]). When `diff_id` is given, the uncompressed stream must
/// hash to it.
pub fn unpack_layer(
    root: &Path,
    reader: impl Read,
    diff_id: Option<&Digest>,
) -> Result<LayerStats, UnpackError> {
    unpack_layer_within(
        root,
        reader,
        diff_id,
        ImageLimits::default().max_layer_bytes,
    )
}

/// [`unpack_layer`] with at most `max_bytes` of expanded size: past it, the layer is
/// [`UnpackError::TooLarge`] (what it wrote stays in `root`: unpack into a scratch tree).
pub fn unpack_layer_within(
    root: &Path,
    reader: impl Read,
    diff_id: Option<&Digest>,
    max_bytes: u64,
) -> Result<LayerStats, UnpackError> {
    let gauge = Rc::new(Gauge::new(max_bytes));
    let result = unpack_metered(root, reader, diff_id, &gauge);
    result.map_err(|e| gauge.exceeded().unwrap_or(e))
}

fn unpack_metered(
    root: &Path,
    reader: impl Read,
    diff_id: Option<&Digest>,
    gauge: &Rc<Gauge>,
) -> Result<LayerStats, UnpackError> {
    let stream = decompress(reader).map_err(read_err)?;
    let metered = Meter {
        inner: stream,
        gauge: gauge.clone(),
    };
    let mut archive = tar::Archive::new(HashingReader::new(metered));
    let mut layer = Layer {
        root,
        created: HashSet::new(),
        dirs: Vec::new(),
        stats: LayerStats::default(),
        gauge: gauge.as_ref(),
    };
    let mut entries = archive.entries().map_err(read_err)?;
    loop {
        // The tar reader holds extension headers in memory: bounded while it reads them.
        gauge.header.set(Some(gauge.read.get()));
        let next = entries.next();
        gauge.header.set(None);
        let Some(entry) = next else { break };
        let mut entry = entry.map_err(read_err)?;
        layer.apply(&mut entry)?;
        // What the entry carries beyond what it made (data of a directory, a link): read
        // here, counted, so that only headers are read while the header bound is on.
        io::copy(&mut entry, &mut io::sink()).map_err(read_err)?;
    }
    // Directory times last: writing their children changed them.
    for (path, meta) in layer.dirs.iter().rev() {
        set_times(path, meta.mtime)?;
    }
    let (actual, _) = archive.into_inner().finish().map_err(read_err)?;
    if let Some(expected) = diff_id {
        if *expected != actual {
            return Err(UnpackError::DiffIdMismatch {
                expected: expected.clone(),
                actual,
            });
        }
    }
    let mut stats = layer.stats;
    stats.bytes = gauge.used();
    Ok(stats)
}

/// What a layer has used of its limit, shared by the metering reader and the unpacker.
struct Gauge {
    limit: u64,
    /// Bytes of the uncompressed stream read.
    read: Cell<u64>,
    /// Holes of sparse entries (their apparent size beyond their stored data).
    holes: Cell<u64>,
    /// While the tar reader reads headers: the stream position where it began.
    header: Cell<Option<u64>>,
    exceeded: Cell<Option<Exceeded>>,
}

#[derive(Clone, Copy)]
enum Exceeded {
    Size,
    Header,
}

impl Gauge {
    fn new(limit: u64) -> Self {
        Self {
            limit,
            read: Cell::new(0),
            holes: Cell::new(0),
            header: Cell::new(None),
            exceeded: Cell::new(None),
        }
    }

    fn used(&self) -> u64 {
        self.read.get().saturating_add(self.holes.get())
    }

    /// Whether `more` bytes still fit; if not, the layer is marked too large.
    fn fits(&self, more: u64) -> bool {
        let ok = self.used().saturating_add(more) <= self.limit;
        if !ok {
            self.exceeded.set(Some(Exceeded::Size));
        }
        ok
    }

    fn exceeded(&self) -> Option<UnpackError> {
        self.exceeded.get().map(|e| match e {
            Exceeded::Size => UnpackError::TooLarge { limit: self.limit },
            Exceeded::Header => UnpackError::HeaderTooLarge,
        })
    }
}

/// Counts the uncompressed stream against its [`Gauge`] and fails once past it.
struct Meter<R> {
    inner: R,
    gauge: Rc<Gauge>,
}

impl<R: Read> Read for Meter<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let g = &self.gauge;
        g.read.set(g.read.get().saturating_add(n as u64));
        if !g.fits(0) {
            return Err(io::Error::other("the layer is larger than its limit"));
        }
        if let Some(start) = g.header.get() {
            if g.read.get() - start > MAX_HEADER_BYTES {
                g.exceeded.set(Some(Exceeded::Header));
                return Err(io::Error::other("entry headers too large"));
            }
        }
        Ok(n)
    }
}

#[derive(Debug, Clone, Copy)]
struct Meta {
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
}

struct Layer<'r> {
    root: &'r Path,
    gauge: &'r Gauge,
    /// Paths this layer created, and their ancestors: whiteouts in this layer spare them.
    created: HashSet<PathBuf>,
    dirs: Vec<(PathBuf, Meta)>,
    stats: LayerStats,
}

impl Layer<'_> {
    fn apply<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let pax = PaxFields::read(entry)?;
        let raw = entry.path_bytes().into_owned();
        // Shown with `{:?}`, which escapes control characters.
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let comps = clean_components(&raw, &shown)?;
        let header = entry.header();
        let kind = header.entry_type();
        let meta = Meta {
            mode: header.mode().map_err(read_err)? & 0o7777,
            // PAX overrides big ids; some writers leave the fields empty: that is root.
            uid: pax.uid.or(header.uid().ok()).unwrap_or(0),
            gid: pax.gid.or(header.gid().ok()).unwrap_or(0),
            mtime: header.mtime().unwrap_or(0),
        };
        self.stats.entries += 1;

        let Some((name, parent_comps)) = comps.split_last() else {
            // The root itself ("./").
            if kind.is_dir() {
                self.apply_meta(self.root, meta, true)?;
                self.dirs.push((self.root.to_owned(), meta));
            }
            return Ok(());
        };

        // Whiteouts.
        if let Some(target) = name.as_bytes().strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            self.stats.whiteouts += 1;
            let Some(parent) = self.resolve_dir(parent_comps, &shown, false)? else {
                return Ok(());
            };
            if name == OPAQUE_WHITEOUT {
                for child in fs::read_dir(&parent).map_err(werr(&parent))? {
                    let child = child.map_err(werr(&parent))?.path();
                    if !self.created.contains(&child) {
                        remove_any(&child)?;
                    }
                }
            } else {
                let victim = parent.join(OsStr::from_bytes(target));
                if target.is_empty() || target == b"." || target == b".." {
                    return Err(UnpackError::PathEscape {
                        path: shown,
                        why: "is a whiteout of an invalid name",
                    });
                }
                if !self.created.contains(&victim) {
                    remove_any(&victim)?;
                }
            }
            return Ok(());
        }

        let parent = self
            .resolve_dir(parent_comps, &shown, true)?
            .expect("created parents always resolve");
        let path = parent.join(name);
        let existing = fs::symlink_metadata(&path).ok();

        use tar::EntryType as T;
        match kind {
            T::Directory => {
                match &existing {
                    Some(m) if m.is_dir() => {}
                    Some(_) => {
                        remove_any(&path)?;
                        mkdir(&path)?;
                    }
                    None => mkdir(&path)?,
                }
                self.apply_meta(&path, meta, true)?;
                self.dirs.push((path.clone(), meta));
            }
            T::Regular | T::Continuous | T::GNUSparse => {
                // A sparse entry's holes count at once; stored data as it is read. Both are
                // checked before anything is written.
                let size = entry.size();
                let stored = header.entry_size().unwrap_or(size).min(size);
                let holes = if kind == T::GNUSparse {
                    size - stored
                } else {
                    0
                };
                if !self.gauge.fits(size) {
                    return Err(UnpackError::TooLarge {
                        limit: self.gauge.limit,
                    });
                }
                self.gauge.holes.set(self.gauge.holes.get() + holes);
                if existing.is_some() {
                    remove_any(&path)?;
                }
                let f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                    .open(&path)
                    .map_err(werr(&path))?;
                copy_sparse(entry, &f).map_err(|e| match e {
                    CopyError::Read(e) => read_err(e),
                    CopyError::Write(e) => UnpackError::Write {
                        path: path.clone(),
                        source: e,
                    },
                })?;
                drop(f);
                self.apply_meta(&path, meta, true)?;
                set_times(&path, meta.mtime)?;
            }
            T::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|b| b.into_owned())
                    .unwrap_or_default();
                if existing.is_some() {
                    remove_any(&path)?;
                }
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path)
                    .map_err(werr(&path))?;
                self.apply_meta(&path, meta, false)?;
                set_times(&path, meta.mtime)?;
            }
            T::Link => {
                let target_raw = entry
                    .link_name_bytes()
                    .map(|b| b.into_owned())
                    .unwrap_or_default();
                let target_shown = String::from_utf8_lossy(&target_raw).into_owned();
                let bad = || UnpackError::BadHardLink {
                    path: shown.clone(),
                    target: target_shown.clone(),
                };
                let tcomps = clean_components(&target_raw, &target_shown)?;
                let (tname, tparent) = tcomps.split_last().ok_or_else(bad)?;
                let tdir = self
                    .resolve_dir(tparent, &target_shown, false)?
                    .ok_or_else(bad)?;
                let target = tdir.join(tname);
                match fs::symlink_metadata(&target) {
                    Ok(m) if !m.is_dir() => {}
                    _ => return Err(bad()),
                }
                if target == path {
                    return Ok(());
                }
                if existing.is_some() {
                    remove_any(&path)?;
                }
                fs::hard_link(&target, &path).map_err(werr(&path))?;
            }
            T::Char | T::Block | T::Fifo => {
                if existing.is_some() {
                    remove_any(&path)?;
                }
                // A device node on the host only where it is inert (crate::confine).
                let device = kind != T::Fifo;
                if device && !path.parent().is_some_and(confine::is_inert) {
                    self.stats.devices_left_out += 1;
                    return Ok(());
                }
                let (ft, dev) = match kind {
                    T::Char | T::Block => {
                        let major = header.device_major().ok().flatten().unwrap_or(0);
                        let minor = header.device_minor().ok().flatten().unwrap_or(0);
                        let ft = if kind == T::Char {
                            FileType::CharacterDevice
                        } else {
                            FileType::BlockDevice
                        };
                        (ft, rustix::fs::makedev(major, minor))
                    }
                    _ => (FileType::Fifo, 0),
                };
                match rustix::fs::mknodat(CWD, &path, ft, Mode::from_raw_mode(0o600), dev) {
                    Ok(()) => {}
                    // Device nodes need root; without it the image goes without them
                    // (the guest's devtmpfs provides /dev).
                    Err(rustix::io::Errno::PERM) if device => {
                        self.stats.devices_left_out += 1;
                        return Ok(());
                    }
                    Err(e) => return Err(werr(&path)(e.into())),
                }
                self.apply_meta(&path, meta, true)?;
                set_times(&path, meta.mtime)?;
            }
            // PAX and GNU extension headers are consumed by the tar reader; anything else
            // (global headers, volume labels) carries no file.
            _ => {
                self.stats.entries -= 1;
                return Ok(());
            }
        }
        // After chown, which clears security.capability.
        for (name, value) in &pax.xattrs {
            set_xattr(&path, name, value)?;
        }
        self.mark_created(&path);
        Ok(())
    }

    fn mark_created(&mut self, path: &Path) {
        let mut p = Some(path);
        while let Some(cur) = p {
            if cur == self.root || !self.created.insert(cur.to_owned()) {
                break;
            }
            p = cur.parent();
        }
    }

    fn apply_meta(&self, path: &Path, meta: Meta, chmod: bool) -> Result<(), UnpackError> {
        let uid = u32::try_from(meta.uid).unwrap_or(u32::MAX - 1);
        let gid = u32::try_from(meta.gid).unwrap_or(u32::MAX - 1);
        match std::os::unix::fs::lchown(path, Some(uid), Some(gid)) {
            Ok(()) => {}
            // Not root: the files keep our ownership.
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {}
            Err(e) => return Err(werr(path)(e)),
        }
        if chmod {
            fs::set_permissions(path, fs::Permissions::from_mode(meta.mode)).map_err(werr(path))?;
        }
        Ok(())
    }

    /// Resolves the directory named by `comps` inside the root, following symlinks as if the
    /// root were `/`. Missing directories are created when `create`, else `None` is returned.
    fn resolve_dir(
        &mut self,
        comps: &[OsString],
        shown: &str,
        create: bool,
    ) -> Result<Option<PathBuf>, UnpackError> {
        let mut real = self.root.to_path_buf();
        let mut depth = 0usize;
        let mut queue: VecDeque<OsString> = comps.iter().cloned().collect();
        let mut hops = 0;
        while let Some(c) = queue.pop_front() {
            match c.as_bytes() {
                b"" | b"." => continue,
                b".." => {
                    if depth == 0 {
                        return Err(UnpackError::PathEscape {
                            path: shown.to_owned(),
                            why: "goes through a symlink that points outside the image root",
                        });
                    }
                    real.pop();
                    depth -= 1;
                    continue;
                }
                b"/" => {
                    real = self.root.to_path_buf();
                    depth = 0;
                    continue;
                }
                _ => {}
            }
            let next = real.join(&c);
            match fs::symlink_metadata(&next) {
                Ok(m) if m.file_type().is_symlink() => {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err(UnpackError::PathEscape {
                            path: shown.to_owned(),
                            why: "goes through a symlink loop",
                        });
                    }
                    let target = fs::read_link(&next).map_err(werr(&next))?;
                    let mut parts: Vec<OsString> = Vec::new();
                    for tc in target.components() {
                        match tc {
                            Component::RootDir => parts.push("/".into()),
                            Component::ParentDir => parts.push("..".into()),
                            Component::CurDir | Component::Prefix(_) => {}
                            Component::Normal(n) => parts.push(n.to_owned()),
                        }
                    }
                    for p in parts.into_iter().rev() {
                        queue.push_front(p);
                    }
                }
                Ok(m) if m.is_dir() => {
                    real = next;
                    depth += 1;
                }
                Ok(_) => {
                    return Err(UnpackError::NotADirectory {
                        path: shown.to_owned(),
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if !create {
                        return Ok(None);
                    }
                    mkdir(&next)?;
                    self.mark_created(&next);
                    real = next;
                    depth += 1;
                }
                Err(e) => return Err(werr(&next)(e)),
            }
        }
        Ok(Some(real))
    }
}

/// What an entry's PAX header adds: big ids and extended attributes (`SCHILY.xattr.*`).
#[derive(Default)]
struct PaxFields {
    uid: Option<u64>,
    gid: Option<u64>,
    xattrs: Vec<(String, Vec<u8>)>,
}

impl PaxFields {
    fn read<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Self, UnpackError> {
        let mut out = Self::default();
        let Some(exts) = entry.pax_extensions().map_err(read_err)? else {
            return Ok(out);
        };
        for ext in exts {
            let ext = ext.map_err(read_err)?;
            let Ok(key) = ext.key() else { continue };
            let num = || ext.value().ok().and_then(|v| v.trim().parse().ok());
            match key {
                "uid" => out.uid = num(),
                "gid" => out.gid = num(),
                _ => {
                    if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                        out.xattrs
                            .push((name.to_owned(), ext.value_bytes().to_vec()));
                    }
                }
            }
        }
        Ok(out)
    }
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) -> Result<(), UnpackError> {
    use rustix::io::Errno;
    match rustix::fs::lsetxattr(path, name, value, rustix::fs::XattrFlags::empty()) {
        Ok(()) => Ok(()),
        // The host file system (or our privileges) cannot hold it: the image still works
        // for everything but that attribute.
        Err(Errno::NOTSUP | Errno::PERM | Errno::ACCESS) => Ok(()),
        Err(e) => Err(werr(path)(e.into())),
    }
}

/// Splits an entry path into its normal components; refuses absolute paths and `..`.
fn clean_components(raw: &[u8], shown: &str) -> Result<Vec<OsString>, UnpackError> {
    let mut out = Vec::new();
    for c in Path::new(OsStr::from_bytes(raw)).components() {
        match c {
            Component::Normal(n) => out.push(n.to_owned()),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err(UnpackError::PathEscape {
                    path: shown.to_owned(),
                    why: "is an absolute path",
                })
            }
            Component::ParentDir => {
                return Err(UnpackError::PathEscape {
                    path: shown.to_owned(),
                    why: "contains a '..' component",
                })
            }
        }
    }
    Ok(out)
}

/// A read error of the archive, its message escaped (the tar reader quotes entry names).
fn read_err(e: io::Error) -> UnpackError {
    UnpackError::ReadArchive(escape_io(e))
}

enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

/// Copies a file's content, leaving aligned zero blocks as holes (sized at the end).
fn copy_sparse(src: &mut impl Read, f: &File) -> Result<u64, CopyError> {
    let mut buf = vec![0u8; 32 * HOLE_BLOCK];
    let mut offset = 0u64;
    loop {
        // Fill the buffer (or reach the end) so that blocks stay aligned to the file.
        let mut len = 0;
        while len < buf.len() {
            match src.read(&mut buf[len..]) {
                Ok(0) => break,
                Ok(n) => len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(CopyError::Read(e)),
            }
        }
        if len == 0 {
            break;
        }
        let mut pos = 0;
        while pos < len {
            let end = (pos + HOLE_BLOCK).min(len);
            // Coalesce neighbouring data blocks into one write.
            let mut data_end = pos;
            while data_end < len {
                let block_end = (data_end + HOLE_BLOCK).min(len);
                if buf[data_end..block_end].iter().all(|&b| b == 0) {
                    break;
                }
                data_end = block_end;
            }
            if data_end > pos {
                f.write_all_at(&buf[pos..data_end], offset + pos as u64)
                    .map_err(CopyError::Write)?;
                pos = data_end;
            } else {
                pos = end;
            }
        }
        offset += len as u64;
        if len < buf.len() {
            break;
        }
    }
    f.set_len(offset).map_err(CopyError::Write)?;
    Ok(offset)
}

fn werr(path: &Path) -> impl FnOnce(io::Error) -> UnpackError {
    let path = path.to_owned();
    move |source| UnpackError::Write { path, source }
}

fn mkdir(path: &Path) -> Result<(), UnpackError> {
    fs::create_dir(path).map_err(werr(path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).map_err(werr(path))
}

/// Removes a file, symlink or whole directory (never following symlinks).
fn remove_any(path: &Path) -> Result<(), UnpackError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).map_err(werr(path)),
        Ok(_) => fs::remove_file(path).map_err(werr(path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(werr(path)(e)),
    }
}

fn set_times(path: &Path, mtime: u64) -> Result<(), UnpackError> {
    let t = Timespec {
        tv_sec: i64::try_from(mtime).unwrap_or(i64::MAX),
        tv_nsec: 0,
    };
    let ts = Timestamps {
        last_access: t,
        last_modification: t,
    };
    rustix::fs::utimensat(CWD, path, &ts, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| werr(path)(e.into()))
}

/// Applies every layer in order to a fresh tree at `root`.
pub fn unpack_layers(
    root: &Path,
    layers: impl IntoIterator<Item = (File, Option<Digest>)>,
) -> Result<LayerStats, UnpackError> {
    let mut total = LayerStats::default();
    for (file, diff_id) in layers {
        let s = unpack_layer(root, file, diff_id.as_ref())?;
        total.entries += s.entries;
        total.whiteouts += s.whiteouts;
        total.bytes += s.bytes;
    }
    Ok(total)
}
